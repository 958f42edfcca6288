package kafka

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// outputTally collects the output of a pipeline as one consumer group sees
// it.
type outputTally struct {
	mu      sync.Mutex
	total   int
	ids     map[string]int
	byInput map[string]int
	by      map[string][]string // input ID -> who produced its outputs
	want    int
	full    chan struct{}
}

func newOutputTally(want int) *outputTally {
	return &outputTally{ids: map[string]int{}, byInput: map[string]int{}, by: map[string][]string{}, want: want, full: make(chan struct{})}
}

func (o *outputTally) add(_ context.Context, d broker.Delivery) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.total++
	o.ids[d.ID]++
	o.byInput[d.Headers["input-id"]+"/"+d.Headers["part"]]++
	if by := d.Headers["by"]; by != "" {
		o.by[d.Headers["input-id"]] = append(o.by[d.Headers["input-id"]], fmt.Sprintf("%s (output p%d o%d)", by, d.Partition, d.Offset))
	}
	if len(o.ids) == o.want {
		close(o.full)
	}
	return nil
}

// checkEachOnce fails t unless o saw output "a" of every input exactly
// once and nothing else; why is appended to the count failure.
func (o *outputTally) checkEachOnce(t *testing.T, inputs []broker.Message, why string) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, m := range inputs {
		if c := o.byInput[m.ID+"/a"]; c != 1 {
			t.Errorf("input %s visible %d times, want 1: %v", m.Payload, c, o.by[m.ID])
		}
	}
	if len(o.ids) != len(inputs) || o.total != len(inputs) {
		t.Fatalf("read_committed consumer got %d records, %d distinct, want %d%s", o.total, len(o.ids), len(inputs), why)
	}
}

// TestPipelineExactlyOnce runs a consume-transform-produce pipeline that
// emits two messages per input. Its first incarnation has one transform fail
// half-way through a transaction (the transaction aborts and the batch is
// retried) and then crashes in the middle of another transaction after
// flushing part of its output. A second incarnation with the same
// transactional ID finishes the work. A read_committed consumer of the output
// must see every input reflected exactly once (both messages, no
// duplicates, nothing partial), while a read_uncommitted consumer shows the
// aborted partial output really reached the log.
func TestPipelineExactlyOnce(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	k.createTopic(t, in, 4)
	k.createTopic(t, out, 4)
	group := testenv.Name(t, "g")

	const n = 400
	var inputs []broker.Message
	for i := range n {
		m := broker.NewMessage(in, []byte(fmt.Sprint(i)))
		m.Key = fmt.Sprintf("k%d", i%16)
		inputs = append(inputs, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := k.pub.Publish(ctx, inputs...); err != nil {
		t.Fatal(err)
	}
	failID := inputs[n/4].ID

	var (
		mu       sync.Mutex
		attempts = map[string][]int{}
		calls    int
	)
	transform := func(_ context.Context, d broker.Delivery) ([]broker.Message, error) {
		mu.Lock()
		attempts[d.ID] = append(attempts[d.ID], d.Attempt)
		calls++
		mu.Unlock()
		if d.ID == failID && d.Attempt == 1 {
			return nil, errors.New("injected transform failure")
		}
		var res []broker.Message
		for _, part := range []string{"a", "b"} {
			m := broker.NewMessage(out, []byte(part+":"+string(d.Payload)))
			m.Key = d.Key
			m.Headers = map[string]string{"input-id": d.ID, "part": part}
			res = append(res, m)
		}
		return res, nil
	}
	pc := PipelineConfig{
		Config:            Config{Brokers: brokers},
		TransactionalID:   testenv.Name(t, "tx"),
		MaxBatch:          40,
		RetryBackoff:      testBackoff,
		HeartbeatInterval: 300 * time.Millisecond,
		SessionTimeout:    10 * time.Second,
	}
	sub := broker.Subscription{Topic: in, Group: group}

	// First incarnation: crashes mid-transaction once it has done a good
	// part of the work, after the injected failure was retried.
	p1, err := NewPipeline(pc)
	if err != nil {
		t.Fatal(err)
	}
	crashed := false
	crashCtx := crashPipeline(ctx, func(d broker.Delivery, inTxn int) bool {
		mu.Lock()
		defer mu.Unlock()
		if !crashed && calls >= n/2 && inTxn >= 5 && len(attempts[failID]) >= 2 {
			crashed = true
		}
		return crashed
	})
	if err := p1.Run(crashCtx, sub, transform); !errors.Is(err, errCrashed) {
		t.Fatalf("first incarnation returned %v, want the simulated crash", err)
	}
	mu.Lock()
	failAttempts := slices.Clone(attempts[failID])
	mu.Unlock()
	if len(failAttempts) < 2 || failAttempts[0] != 1 || failAttempts[1] != 2 {
		t.Errorf("failing input seen with attempts %v, want 1 then 2", failAttempts)
	}

	// Second incarnation, same transactional ID: fences the first and
	// finishes the work.
	p2, err := NewPipeline(pc)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p2.Run(runCtx, sub, transform) }()
	for {
		lags, err := k.sub.Lag(ctx, in, group)
		if err == nil && len(lags) == 4 && sumLag(lags) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pipeline did not consume every input: lag %v, err %v", lags, err)
		case err := <-done:
			t.Fatalf("pipeline ended early: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("pipeline Run: %v", err)
	}

	// read_committed: every input exactly once, both outputs.
	committed := newOutputTally(2 * n)
	rc, err := NewSubscriber(func() SubscriberConfig { c := testSubConfig(brokers); c.ReadCommitted = true; return c }())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	uncommitted := newOutputTally(2 * n)
	ru, err := NewSubscriber(testSubConfig(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer ru.Close()
	var wg sync.WaitGroup
	cctx, ccancel := context.WithCancel(ctx)
	for _, c := range []struct {
		s *Subscriber
		o *outputTally
	}{{rc, committed}, {ru, uncommitted}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.s.Subscribe(cctx, broker.Subscription{Topic: out, Group: testenv.Name(t, "verify")}, c.o.add); err != nil {
				t.Errorf("verify subscribe: %v", err)
			}
		}()
	}
	for _, o := range []*outputTally{committed, uncommitted} {
		select {
		case <-o.full:
		case <-ctx.Done():
			o.mu.Lock()
			t.Fatalf("read %d of %d outputs", len(o.ids), 2*n)
		}
	}
	time.Sleep(time.Second) // let late duplicates show
	ccancel()
	wg.Wait()

	committed.mu.Lock()
	defer committed.mu.Unlock()
	if committed.total != 2*n || len(committed.ids) != 2*n {
		t.Errorf("read_committed consumer got %d records, %d distinct; want %d", committed.total, len(committed.ids), 2*n)
	}
	for _, m := range inputs {
		for _, part := range []string{"a", "b"} {
			if c := committed.byInput[m.ID+"/"+part]; c != 1 {
				t.Errorf("input %s output %s visible %d times to read_committed, want 1", m.Payload, part, c)
			}
		}
	}
	uncommitted.mu.Lock()
	defer uncommitted.mu.Unlock()
	aborted := uncommitted.total - 2*n
	t.Logf("transform calls %d for %d inputs; read_uncommitted saw %d records (%d from aborted transactions)", calls, n, uncommitted.total, aborted)
	if aborted <= 0 {
		t.Errorf("read_uncommitted saw no aborted output; the crash left nothing partial to hide")
	}
}

func sumLag(ls []PartitionLag) int64 {
	var s int64
	for _, l := range ls {
		s += l.Lag
	}
	return s
}

// pipelineKit publishes n inputs to a new topic of parts partitions and
// returns it with a new output topic. The transform it returns copies each
// input to the output (keeping its ID in header input-id), after an
// optional delay.
func pipelineKit(t *testing.T, k *kit, ctx context.Context, n int, parts int32, delay time.Duration) (in, out string, inputs []broker.Message, fn Transform) {
	t.Helper()
	in, out = testenv.Name(t, "in"), testenv.Name(t, "out")
	k.createTopic(t, in, parts)
	k.createTopic(t, out, parts)
	for i := range n {
		m := broker.NewMessage(in, []byte(fmt.Sprint(i)))
		m.Key = fmt.Sprintf("k%d", i%8)
		inputs = append(inputs, m)
	}
	if err := k.pub.Publish(ctx, inputs...); err != nil {
		t.Fatal(err)
	}
	fn = func(_ context.Context, d broker.Delivery) ([]broker.Message, error) {
		time.Sleep(delay)
		m := broker.NewMessage(out, d.Payload)
		m.Key = d.Key
		m.Headers = map[string]string{"input-id": d.ID, "part": "a"}
		return []broker.Message{m}, nil
	}
	return in, out, inputs, fn
}

// readCommitted consumes topic with read_committed isolation until want
// distinct messages arrived or ctx ends, and returns the tally.
func readCommitted(t *testing.T, ctx context.Context, brokers []string, topic string, want int) *outputTally {
	t.Helper()
	cfg := testSubConfig(brokers)
	cfg.ReadCommitted = true
	s, err := NewSubscriber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	o := newOutputTally(want)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(cctx, broker.Subscription{Topic: topic, Group: testenv.Name(t, "verify")}, o.add)
	}()
	select {
	case <-o.full:
	case <-ctx.Done():
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("verify subscribe: %v", err)
	}
	return o
}

// TestPipelineRestartReusesTransactionalID crashes a Run call in the middle
// of a transaction (output already flushed) and calls Run again on the same
// Pipeline. The second call must use the same transactional ID, so it
// aborts the abandoned transaction at once: read_committed consumers of the
// output then see every input exactly once long before the
// TransactionTimeout (two minutes) would have ended it.
func TestPipelineRestartReusesTransactionalID(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	const n = 120
	in, out, inputs, fn := pipelineKit(t, k, ctx, n, 2, 0)
	p, err := NewPipeline(PipelineConfig{
		Config:             Config{Brokers: brokers},
		TransactionalID:    testenv.Name(t, "tx"),
		MaxBatch:           10,
		TransactionTimeout: 2 * time.Minute,
		RetryBackoff:       testBackoff,
		HeartbeatInterval:  300 * time.Millisecond,
		SessionTimeout:     10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	sub := broker.Subscription{Topic: in, Group: testenv.Name(t, "g")}
	seen := 0
	crashCtx := crashPipeline(ctx, func(_ broker.Delivery, inTxn int) bool {
		seen++
		return seen > n/2 && inTxn >= 3
	})
	if err := p.Run(crashCtx, sub, fn); !errors.Is(err, errCrashed) {
		t.Fatalf("first Run returned %v, want the simulated crash", err)
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx, sub, fn) }()
	o := readCommitted(t, ctx, brokers, out, n)
	stop()
	if err := <-done; err != nil {
		t.Fatalf("second Run: %v", err)
	}
	o.checkEachOnce(t, inputs, ": the abandoned transaction was not aborted")
}

// TestPipelineFenced starts a second Pipeline with the TransactionalID of
// a running one, as a restarted instance would while its predecessor still
// runs. The predecessor must stop with ErrFenced, and the newcomer must
// finish the work with every input reflected exactly once.
//
// On the in-process cluster the test runs with transaction.version 1 (see
// kfakeTxnV1): kfake's KIP-890 EndTxn retry check answers a fenced
// producer's late abort as if it were its own retry and hands it the new
// epoch, so the two producers share it, which Kafka does not do.
func TestPipelineFenced(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 300
	kfakeTxnV1(t, brokers)
	in, out, inputs, fn := pipelineKit(t, k, ctx, n, 2, 2*time.Millisecond)
	cfg := PipelineConfig{
		Config:            Config{Brokers: brokers},
		TransactionalID:   testenv.Name(t, "tx"),
		MaxBatch:          10,
		RetryBackoff:      testBackoff,
		HeartbeatInterval: 300 * time.Millisecond,
		SessionTimeout:    10 * time.Second,
	}
	sub := broker.Subscription{Topic: in, Group: testenv.Name(t, "g")}
	older, err := NewPipeline(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var started sync.Once
	begun := make(chan struct{})
	tagged := func(by string) Transform {
		return func(ctx context.Context, d broker.Delivery) ([]broker.Message, error) {
			started.Do(func() { close(begun) })
			out, err := fn(ctx, d)
			for _, m := range out {
				m.Headers["by"] = fmt.Sprintf("%s p%d o%d a%d", by, d.Partition, d.Offset, d.Attempt)
			}
			return out, err
		}
	}
	oldFn := tagged("older")
	oldDone := make(chan error, 1)
	go func() { oldDone <- older.Run(ctx, sub, oldFn) }()
	select {
	case <-begun:
	case <-ctx.Done():
		t.Fatal("first pipeline never transformed anything")
	}

	newer, err := NewPipeline(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	newDone := make(chan error, 1)
	go func() { newDone <- newer.Run(runCtx, sub, tagged("newer")) }()
	select {
	case err := <-oldDone:
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("fenced pipeline returned %v, want ErrFenced", err)
		}
		t.Logf("older pipeline: %v", err)
	case <-ctx.Done():
		t.Fatal("older pipeline was not fenced")
	}
	o := readCommitted(t, ctx, brokers, out, n)
	stop()
	if err := <-newDone; err != nil {
		t.Fatalf("newer Run: %v", err)
	}
	o.checkEachOnce(t, inputs, "")
}

func TestPipelineSlots(t *testing.T) {
	p, err := NewPipeline(PipelineConfig{Config: Config{Brokers: []string{"127.0.0.1:1"}}, TransactionalID: "tx"})
	if err != nil {
		t.Fatal(err)
	}
	ids := func(slots ...int) []string {
		var s []string
		for _, x := range slots {
			s = append(s, slotTxnID("tx", x))
		}
		return s
	}
	a, b, c := p.takeSlot(), p.takeSlot(), p.takeSlot()
	if got, want := ids(a, b, c), []string{"tx", "tx-2", "tx-3"}; !slices.Equal(got, want) {
		t.Fatalf("overlapping runs got %v, want %v", got, want)
	}
	p.releaseSlot(a)
	p.releaseSlot(c)
	if got := ids(p.takeSlot()); got[0] != "tx" {
		t.Fatalf("a run after the first returned got %s, want tx", got[0])
	}
	if got := ids(p.takeSlot()); got[0] != "tx-3" {
		t.Fatalf("next overlapping run got %s, want tx-3", got[0])
	}
}

// kfakeTxnV1 sets transaction.version to 0 (transactions as before KIP-890
// part 2) on the in-process cluster behind brokers; a cluster named by
// STEADFAST_KAFKA_BROKERS is left alone.
func kfakeTxnV1(t *testing.T, brokers []string) {
	t.Helper()
	if os.Getenv(testenv.EnvKafkaBrokers) != "" {
		return
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrUpdateFeaturesRequest()
	fu := kmsg.NewUpdateFeaturesRequestFeatureUpdate()
	fu.Feature = "transaction.version"
	fu.MaxVersionLevel = 0
	fu.UpgradeType = 2 // safe downgrade
	req.FeatureUpdates = append(req.FeatureUpdates, fu)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.ErrorCode)
		for _, r := range resp.Results {
			err = errors.Join(err, kerr.ErrorForCode(r.ErrorCode))
		}
	}
	if err != nil {
		t.Fatalf("setting transaction.version 0: %v", err)
	}
}

package kafka

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

func TestInvalidConfig(t *testing.T) {
	t.Parallel()
	for name, f := range map[string]func() error{
		"publisher without brokers":  func() error { _, err := NewPublisher(PublisherConfig{}); return err },
		"subscriber without brokers": func() error { _, err := NewSubscriber(SubscriberConfig{}); return err },
		"admin with empty broker":    func() error { _, err := NewAdmin(Config{Brokers: []string{" "}}); return err },
		"pipeline negative batch": func() error {
			_, err := NewPipeline(PipelineConfig{Config: Config{Brokers: []string{"x:1"}}, MaxBatch: -1})
			return err
		},
		"unknown compression": func() error {
			_, err := NewPublisher(PublisherConfig{Config: Config{Brokers: []string{"x:1"}}, Compression: "brotli"})
			return err
		},
		"message limit above batch": func() error {
			_, err := NewPublisher(PublisherConfig{Config: Config{Brokers: []string{"x:1"}}, BatchMaxBytes: 4096, MaxMessageBytes: 4000})
			return err
		},
		"subscriber negative session timeout": func() error {
			_, err := NewSubscriber(SubscriberConfig{Config: Config{Brokers: []string{"x:1"}}, SessionTimeout: -1})
			return err
		},
		"pipeline negative heartbeat": func() error {
			_, err := NewPipeline(PipelineConfig{Config: Config{Brokers: []string{"x:1"}}, HeartbeatInterval: -1})
			return err
		},
		"subscriber negative retry backoff": func() error {
			_, err := NewSubscriber(SubscriberConfig{Config: Config{Brokers: []string{"x:1"}}, RetryBackoff: broker.Backoff{Initial: -time.Second}})
			return err
		},
		"pipeline retry backoff below its start": func() error {
			_, err := NewPipeline(PipelineConfig{Config: Config{Brokers: []string{"x:1"}}, RetryBackoff: broker.Backoff{Initial: time.Minute, Max: time.Second}})
			return err
		},
		"unknown ordering": func() error {
			_, err := NewSubscriber(SubscriberConfig{Config: Config{Brokers: []string{"x:1"}}, Ordering: 7})
			return err
		},
	} {
		if err := f(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", name, err)
		}
	}
	if got := ParseBrokers(" a:1, ,b:2,"); len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Errorf("ParseBrokers = %q", got)
	}
}

// TestUnknownTopic: with auto-creation off, publishing to or subscribing to a
// topic that does not exist fails with ErrUnknownTopic in bounded time, and
// the topic is not created behind the caller's back.
func TestUnknownTopic(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	topic := testenv.Name(t, "missing")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	err := k.pub.Publish(ctx, broker.NewMessage(topic, []byte("x")))
	var pe *broker.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, ErrUnknownTopic) || len(pe.Failures) != 1 {
		t.Errorf("publish to a missing topic: err = %v, want a PublishError wrapping ErrUnknownTopic", err)
	}
	err = k.sub.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error { return nil })
	if !errors.Is(err, ErrUnknownTopic) {
		t.Errorf("subscribe to a missing topic: err = %v, want ErrUnknownTopic", err)
	}
	if _, err := k.admin.Partitions(ctx, topic); !errors.Is(err, ErrUnknownTopic) {
		t.Errorf("Partitions of a missing topic: err = %v, want ErrUnknownTopic (was it auto-created?)", err)
	}

	// Creating it makes both work; creating it twice says so.
	k.createTopic(t, topic, 2)
	if err := k.admin.CreateTopic(ctx, TopicSpec{Name: topic, Partitions: 2}); !errors.Is(err, ErrTopicExists) {
		t.Errorf("second CreateTopic: err = %v, want ErrTopicExists", err)
	}
	if err := k.pub.Publish(ctx, broker.NewMessage(topic, []byte("y"))); err != nil {
		t.Errorf("publish after creating the topic: %v", err)
	}
}

// TestOversizedRecord: a message above MaxMessageBytes is refused before
// sending; one the cluster refuses (the topic's max.message.bytes is
// smaller) fails with broker.ErrMessageTooLarge in a PublishError naming
// it. Neither reaches consumers; messages published after them do.
func TestOversizedRecord(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	topic := testenv.Name(t, "small")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := k.admin.CreateTopic(ctx, TopicSpec{Name: topic, Partitions: 1, Configs: map[string]string{"max.message.bytes": "10000"}}); err != nil {
		t.Fatal(err)
	}

	tooBig := broker.NewMessage(topic, make([]byte, broker.DefaultMaxMessageBytes+1))
	if err := k.pub.Publish(ctx, tooBig); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Errorf("publish above MaxMessageBytes: err = %v, want ErrMessageTooLarge", err)
	}
	noise := make([]byte, 20000) // incompressible, so the batch stays above the limit
	_, _ = rand.Read(noise)
	refused := broker.NewMessage(topic, noise)
	err := k.pub.Publish(ctx, refused)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, broker.ErrMessageTooLarge) || len(pe.Failures) != 1 || pe.Failures[0].ID != refused.ID {
		t.Errorf("publish above the topic's max.message.bytes: err = %v, want a PublishError for %s wrapping ErrMessageTooLarge", err, refused.ID)
	}
	ok := broker.NewMessage(topic, []byte("fits"))
	if err := k.pub.Publish(ctx, ok); err != nil {
		t.Fatalf("publish after the refused one: %v", err)
	}
	got := make(chan broker.Delivery, 4)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- k.sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: testenv.Name(t, "g")}, func(_ context.Context, d broker.Delivery) error {
			got <- d
			return nil
		})
	}()
	select {
	case d := <-got:
		if d.ID != ok.ID {
			t.Errorf("first delivery is %s, want the message that fits (%s)", d.ID, ok.ID)
		}
	case <-ctx.Done():
		t.Fatal("message after the refused one not delivered")
	}
	time.Sleep(300 * time.Millisecond)
	stop()
	if err := <-done; err != nil {
		t.Errorf("Subscribe: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("%d unexpected deliveries", len(got))
	}
}

// TestUnreachableBrokers: every entry point gives up in bounded time with a
// clear error when no seed broker answers, and Publish reports every message
// as not acknowledged.
func TestUnreachableBrokers(t *testing.T) {
	t.Parallel()
	addr := []string{testenv.ClosedAddr(t)}
	cfg := Config{Brokers: addr, StartTimeout: 2 * time.Second, DialTimeout: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	pub, err := NewPublisher(PublisherConfig{Config: cfg, DeliveryTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	msgs := []broker.Message{broker.NewMessage("t", []byte("a")), broker.NewMessage("t", []byte("b"))}
	err = pub.Publish(ctx, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failures) != 2 || !errors.Is(err, kgo.ErrRecordTimeout) || !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("publish to unreachable brokers: err = %v, want a PublishError for both messages wrapping kgo.ErrRecordTimeout and broker.ErrUnavailable", err)
	}

	sub, err := NewSubscriber(SubscriberConfig{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	err = sub.Subscribe(ctx, broker.Subscription{Topic: "t", Group: "g"}, func(context.Context, broker.Delivery) error { return nil })
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("subscribe to unreachable brokers: err = %v, want ErrUnreachable wrapping broker.ErrUnavailable", err)
	}

	admin, err := NewAdmin(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopic(ctx, TopicSpec{Name: "t"}); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "create topic") {
		t.Errorf("create topic on unreachable brokers: err = %v, want ErrUnreachable", err)
	}
	if ctx.Err() != nil {
		t.Errorf("bad-input calls did not return within their bounds")
	}
}

// TestClosed: Publish and Subscribe after Close fail with broker.ErrClosed;
// Close stops running subscriptions, which drain and return ErrClosed.
func TestClosed(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	topic := testenv.Name(t, "t")
	k.createTopic(t, topic, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := k.pub.Publish(ctx, broker.NewMessage(topic, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- k.sub.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error {
			handled <- struct{}{}
			return nil
		})
	}()
	<-handled
	_ = k.sub.Close()
	if err := <-done; !errors.Is(err, broker.ErrClosed) {
		t.Errorf("running Subscribe after Close: err = %v, want ErrClosed", err)
	}
	if err := k.sub.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error { return nil }); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe after Close: err = %v, want ErrClosed", err)
	}
	_ = k.pub.Close()
	if err := k.pub.Publish(ctx, broker.NewMessage(topic, []byte("x"))); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: err = %v, want ErrClosed", err)
	}
}

// TestMixedSizeBatch: the cluster refuses a whole record batch that
// exceeds the topic's max.message.bytes, so a small message sharing a batch
// with an oversized one was refused with it (and the outbox parked both).
// Only the message too large on its own is reported with
// broker.ErrMessageTooLarge; a small one of another key is published, and one
// behind the refused message of its own key is reported as not sent, without
// ErrMessageTooLarge, so it is retried rather than parked.
func TestMixedSizeBatch(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	topic := testenv.Name(t, "mixed")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := k.admin.CreateTopic(ctx, TopicSpec{Name: topic, Partitions: 1, Configs: map[string]string{"max.message.bytes": "10000"}}); err != nil {
		t.Fatal(err)
	}
	noise := make([]byte, 50000) // incompressible
	_, _ = rand.Read(noise)
	small := broker.NewMessage(topic, []byte("small"))
	small.Key = "a"
	big := broker.NewMessage(topic, noise)
	big.Key = "b"
	behind := broker.NewMessage(topic, []byte("behind the big one"))
	behind.Key = "b"
	other := broker.NewMessage(topic, []byte("small, after"))
	other.Key = "c"

	err := k.pub.Publish(ctx, small, big, behind, other)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failures) != 2 || pe.Failures[0].Index != 1 || pe.Failures[1].Index != 2 {
		t.Fatalf("Publish = %v, want a PublishError naming messages 1 and 2", err)
	}
	if !errors.Is(pe.Failures[0].Err, broker.ErrMessageTooLarge) {
		t.Errorf("oversized message: %v, want ErrMessageTooLarge", pe.Failures[0].Err)
	}
	if errors.Is(pe.Failures[1].Err, broker.ErrMessageTooLarge) {
		t.Errorf("message behind the oversized one of its key: %v, want an error that is not ErrMessageTooLarge", pe.Failures[1].Err)
	}

	got := make(chan broker.Delivery, 8)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- k.sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: testenv.Name(t, "g")}, func(_ context.Context, d broker.Delivery) error {
			got <- d
			return nil
		})
	}()
	want := map[string]bool{small.ID: true, other.ID: true}
	for len(want) > 0 {
		select {
		case d := <-got:
			if !want[d.ID] {
				t.Fatalf("delivered %s (%q), which was reported as failed", d.ID, d.Payload)
			}
			delete(want, d.ID)
		case <-ctx.Done():
			t.Fatalf("messages not delivered: %v", want)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Subscribe: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("%d unexpected deliveries", len(got))
	}
}

// TestSubscribeDuringOutage: a consumer started while every broker refuses
// connections waits for the cluster (within StartTimeout) instead of failing
// at once, and consumes once the cluster is back; Admin.Partitions waits
// the same way. With the cluster down for longer than StartTimeout, both
// fail with ErrUnreachable, no sooner than StartTimeout.
func TestSubscribeDuringOutage(t *testing.T) {
	t.Parallel()
	rc := newRestartableCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := newKit(t, rc.addrs()[:1], func(c *SubscriberConfig) { c.StartTimeout = time.Minute })
	topic := testenv.Name(t, "outage")
	k.createTopic(t, topic, 2)
	rc.stop()

	// One seed: a client whose only seed refuses connections used to fail
	// within a millisecond, whatever StartTimeout said.
	const short = 1500 * time.Millisecond
	seed := rc.addrs()[:1]
	admin, err := NewAdmin(Config{Brokers: seed, StartTimeout: short})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	start := time.Now()
	if _, err := admin.Partitions(ctx, topic); !errors.Is(err, ErrUnreachable) || time.Since(start) < short {
		t.Errorf("Partitions with the cluster down: %v after %v, want ErrUnreachable after StartTimeout (%v)", err, time.Since(start), short)
	}
	shortSub, err := NewSubscriber(SubscriberConfig{Config: Config{Brokers: seed, StartTimeout: short}})
	if err != nil {
		t.Fatal(err)
	}
	defer shortSub.Close()
	start = time.Now()
	err = shortSub.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error { return nil })
	if !errors.Is(err, ErrUnreachable) || time.Since(start) < short {
		t.Errorf("Subscribe with the cluster down: %v after %v, want ErrUnreachable after StartTimeout (%v)", err, time.Since(start), short)
	}

	got := make(chan broker.Delivery, 1)
	done := make(chan error, 1)
	sctx, stop := context.WithCancel(ctx)
	go func() {
		done <- k.sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: testenv.Name(t, "g")}, func(_ context.Context, d broker.Delivery) error {
			got <- d
			return nil
		})
	}()
	select {
	case err := <-done:
		t.Fatalf("Subscribe returned while the cluster was down: %v", err)
	case <-time.After(time.Second):
	}
	if err := rc.start(ctx); err != nil {
		t.Fatal(err)
	}
	m := broker.NewMessage(topic, []byte("after the outage"))
	if err := k.pub.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if d.ID != m.ID {
			t.Errorf("delivered %s, want %s", d.ID, m.ID)
		}
	case err := <-done:
		t.Fatalf("Subscribe returned: %v", err)
	case <-ctx.Done():
		t.Fatal("no delivery after the cluster came back")
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Subscribe: %v", err)
	}
}

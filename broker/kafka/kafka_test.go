package kafka

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/brokertest"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// testBackoff keeps retries quick in tests.
var testBackoff = broker.Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, Jitter: -1}

// testSubConfig is the subscriber configuration tests use: quick heartbeats
// so rebalances settle fast, quick retries.
func testSubConfig(brokers []string) SubscriberConfig {
	return SubscriberConfig{
		Config:            Config{Brokers: brokers},
		RetryBackoff:      testBackoff,
		CommitInterval:    200 * time.Millisecond,
		HeartbeatInterval: 300 * time.Millisecond,
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  30 * time.Second,
	}
}

// kit is a publisher, subscriber and admin on one cluster, closed at cleanup.
type kit struct {
	pub   *Publisher
	sub   *Subscriber
	admin *Admin
}

func newKit(t testing.TB, brokers []string, mod func(*SubscriberConfig)) *kit {
	t.Helper()
	pub, err := NewPublisher(PublisherConfig{Config: Config{Brokers: brokers}})
	if err != nil {
		t.Fatal(err)
	}
	sc := testSubConfig(brokers)
	if mod != nil {
		mod(&sc)
	}
	sub, err := NewSubscriber(sc)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := NewAdmin(Config{Brokers: brokers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sub.Close()
		_ = pub.Close()
		admin.Close()
	})
	return &kit{pub: pub, sub: sub, admin: admin}
}

func (k *kit) createTopic(t testing.TB, name string, partitions int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := k.admin.CreateTopic(ctx, TopicSpec{Name: name, Partitions: partitions}); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
}

func (k *kit) backend() brokertest.Backend {
	return brokertest.Backend{
		Publisher:  k.pub,
		Subscriber: k.sub,
		Setup: func(ctx context.Context, topic string, _ ...string) error {
			return k.admin.CreateTopic(ctx, TopicSpec{Name: topic, Partitions: 4})
		},
	}
}

// restartableCluster is an in-process kfake cluster that persists to a
// directory, so it can be stopped and started again on the same ports with
// its topics, records and committed offsets intact: a real broker restart.
type restartableCluster struct {
	mu    sync.Mutex
	dir   string
	ports []int
	c     *kfake.Cluster
}

func newRestartableCluster(t testing.TB) *restartableCluster {
	t.Helper()
	// Ports outside the ephemeral range, so that none is taken by a
	// connection while the cluster is down; others if one was taken before
	// the cluster bound it.
	rc := &restartableCluster{dir: t.TempDir()}
	var (
		c   *kfake.Cluster
		err error
	)
	for range 3 {
		rc.ports = testenv.FreePorts(t, 3)
		if c, err = kfake.NewCluster(kfake.Ports(rc.ports...), kfake.DataDir(rc.dir)); err == nil {
			break
		}
	}
	if err != nil {
		testenv.Unavailable(t, "kafka", "starting a persistent kfake cluster: "+err.Error())
	}
	rc.c = c
	t.Cleanup(func() {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if rc.c != nil {
			rc.c.Close()
		}
	})
	return rc
}

func (rc *restartableCluster) addrs() []string {
	var out []string
	for _, p := range rc.ports {
		out = append(out, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	return out
}

// restart stops every broker, waits down for a moment, and starts them again
// from the data directory on the same ports.
func (rc *restartableCluster) restart(ctx context.Context, down time.Duration) error {
	rc.stop()
	select {
	case <-time.After(down):
	case <-ctx.Done():
		return ctx.Err()
	}
	return rc.start(ctx)
}

// stop closes every broker: connections to its ports are refused until start.
func (rc *restartableCluster) stop() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.c != nil {
		rc.c.Close()
		rc.c = nil
	}
}

// start starts the brokers again from the data directory on the same ports.
func (rc *restartableCluster) start(ctx context.Context) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var err error
	for ctx.Err() == nil {
		var c *kfake.Cluster
		c, err = kfake.NewCluster(kfake.Ports(rc.ports...), kfake.DataDir(rc.dir))
		if err == nil {
			rc.c = c
			return nil
		}
		time.Sleep(100 * time.Millisecond) // a port may still be held briefly
	}
	return errors.Join(err, ctx.Err())
}

func TestConformance(t *testing.T) {
	t.Parallel()
	brokertest.Run(t, brokertest.Features{
		ConsumerGroups: true,
		Persistent:     true,
		PerKeyOrder:    true,
		ExactlyOnce:    true,
		Restartable:    true,
		TimePrecision:  time.Millisecond,
	}, func(t *testing.T) brokertest.Backend {
		if brokertest.RestartCase(t) { // in-process even when STEADFAST_KAFKA_BROKERS is set: it must be restartable
			rc := newRestartableCluster(t)
			b := newKit(t, rc.addrs(), nil).backend()
			b.Restart = func(ctx context.Context) error { return rc.restart(ctx, time.Second) }
			return b
		}
		brokers := testenv.Kafka(t)
		b := newKit(t, brokers, nil).backend()
		b.Inject = rawInjector(t, brokers)
		return b
	})
}

// rawInjector produces with a plain franz-go client, as a foreign producer
// would: a record without the adapter's ID header, and one whose headers
// claim absurd retry counts (which Kafka does not keep: they are plain
// headers to the adapter). Kafka has no record its client cannot decode.
func rawInjector(t *testing.T, brokers []string) func(ctx context.Context, topic, key string, payload []byte, kind brokertest.Injection) error {
	return func(ctx context.Context, topic, key string, payload []byte, kind brokertest.Injection) error {
		r := &kgo.Record{Topic: topic, Key: []byte(key), Value: payload}
		switch kind {
		case brokertest.InjectMissingID:
		case brokertest.InjectForgedAttempt:
			r.Headers = []kgo.RecordHeader{{Key: "x-delivery-count", Value: []byte("9223372036854775807")},
				{Key: broker.ReservedHeaderPrefix + "attempt", Value: []byte("-4")}}
		default:
			return errors.ErrUnsupported
		}
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			return err
		}
		defer cl.Close()
		return cl.ProduceSync(ctx, r).FirstErr()
	}
}

package testenv

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// kfakeBrokers is the size of each in-process cluster: several brokers so
// partition leadership, coordinators and leader moves are real; creating one
// costs well under a millisecond.
const kfakeBrokers = 3

var kafkaClusters sync.Map // testing.TB -> *kfake.Cluster

// Kafka returns seed brokers (host:port) for a Kafka-protocol cluster:
// STEADFAST_KAFKA_BROKERS (comma separated) when set, shared by all tests,
// which must then name topics and groups with Name; otherwise a new
// in-process franz-go kfake cluster of 3 brokers on 127.0.0.1 that belongs to
// t alone and is closed at t's cleanup (calling Kafka again for the same t
// returns the same cluster). kfake speaks the Kafka wire protocol with
// idempotent and transactional producers and consumer groups; topics may be
// created explicitly or auto-created on metadata requests (10 partitions by
// default), and records live in memory. Testcontainers is not used for Kafka.
//
// A configured cluster whose seeds all refuse TCP connections fails the test.
func Kafka(t testing.TB) []string {
	t.Helper()
	if seeds := kafkaSeedsFromEnv(); len(seeds) > 0 {
		var err error
		for _, s := range seeds {
			if err = dialCheck(s, 5*time.Second); err == nil {
				return seeds
			}
		}
		t.Fatalf("testenv: kafka: no seed of %s=%s answers: %v", EnvKafkaBrokers, strings.Join(seeds, ","), err)
		return nil
	}
	c := kafkaCluster(t)
	if c == nil {
		return nil
	}
	return c.ListenAddrs()
}

// KafkaCluster returns an in-process kfake cluster for t, so a test can
// inject failures (Control, ControlKey, Fault), move partition leaders or add
// and remove brokers: the one behind Kafka(t) (created if Kafka(t) was not
// called yet), or, when STEADFAST_KAFKA_BROKERS names an external cluster, a
// private one, since only kfake takes those controls. Connect to it with its
// ListenAddrs, not with Kafka(t). It never returns nil, so failure tests run
// against every configuration.
func KafkaCluster(t testing.TB) *kfake.Cluster {
	t.Helper()
	return kafkaCluster(t)
}

func kafkaSeedsFromEnv() []string {
	var seeds []string
	for _, s := range strings.Split(os.Getenv(EnvKafkaBrokers), ",") {
		if s = strings.TrimSpace(s); s != "" {
			seeds = append(seeds, s)
		}
	}
	return seeds
}

func kafkaCluster(t testing.TB) *kfake.Cluster {
	t.Helper()
	if c, ok := kafkaClusters.Load(t); ok {
		return c.(*kfake.Cluster)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(kfakeBrokers), kfake.AllowAutoTopicCreation())
	if err != nil {
		Unavailable(t, "kafka", "starting an in-process kfake cluster: "+err.Error())
		return nil
	}
	if prev, loaded := kafkaClusters.LoadOrStore(t, c); loaded {
		c.Close()
		return prev.(*kfake.Cluster)
	}
	t.Cleanup(func() {
		kafkaClusters.Delete(t)
		c.Close()
	})
	return c
}

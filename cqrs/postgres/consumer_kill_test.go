package postgres_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/cqrstest"
	"github.com/steadfast-go/steadfast/cqrs/postgres"
	cqrsredis "github.com/steadfast-go/steadfast/cqrs/redis"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// Environment of the consumer process TestKillConsumerProcess starts
// (besides envChild=consumer and the database and Redis ones).
const (
	envChildSeeds = "STEADFAST_CQRS_TEST_SEEDS"
	envChildTopic = "STEADFAST_CQRS_TEST_TOPIC"
)

// consumerProcess feeds a PostgreSQL (killc_pg) and a Redis (killc_rd)
// projection from a Kafka subscription until it is killed.
func consumerProcess() error {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(envChildDB))
	if err != nil {
		return err
	}
	store, err := postgres.New(pool, postgres.Config{})
	if err != nil {
		return err
	}
	opts, err := goredis.ParseURL(os.Getenv(envChildRedis))
	if err != nil {
		return err
	}
	rstore, err := cqrsredis.New(goredis.NewClient(opts), cqrsredis.Config{Prefix: os.Getenv(envChildPrefix)})
	if err != nil {
		return err
	}
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: kafka.Config{Brokers: strings.Split(os.Getenv(envChildSeeds), ","),
		Logger: discard}, CommitInterval: 20 * time.Millisecond,
		SessionTimeout: 6 * time.Second, HeartbeatInterval: 500 * time.Millisecond, RebalanceTimeout: 10 * time.Second, DrainTimeout: time.Second})
	if err != nil {
		return err
	}
	cfg := cqrs.ConsumerConfig{MaxBatch: killBatch, Logger: discard}
	pg, err := cqrs.NewConsumer(store, cqrstest.Registry(), cqrs.Projection[postgres.Tx]{ID: cqrs.ID{Name: "killc_pg", Version: 1},
		Handle: func(ctx context.Context, tx postgres.Tx, b *cqrs.Batch) error {
			return writer{tx, "killc_pg"}.AddScores(ctx, points(b), int64(len(b.Events)))
		}}, cfg)
	if err != nil {
		return err
	}
	rd, err := cqrs.NewConsumer(rstore, cqrstest.Registry(), cqrs.Projection[*cqrsredis.Tx]{ID: cqrs.ID{Name: "killc_rd", Version: 1},
		Handle: func(ctx context.Context, tx *cqrsredis.Tx, b *cqrs.Batch) error {
			for k, v := range points(b) {
				tx.HIncrBy(ctx, "scores", k, v)
			}
			tx.HIncrBy(ctx, "scores", "_events", int64(len(b.Events)))
			return nil
		}}, cfg)
	if err != nil {
		return err
	}
	topic := os.Getenv(envChildTopic)
	errc := make(chan error, 2)
	go func() {
		errc <- pg.Run(ctx, sub, broker.Subscription{Topic: topic, Group: "killc_pg", Concurrency: 64})
	}()
	go func() {
		errc <- rd.Run(ctx, sub, broker.Subscription{Topic: topic, Group: "killc_rd", Concurrency: 64})
	}()
	fmt.Println("ready")
	return <-errc
}

// TestKillConsumerProcess feeds a PostgreSQL and a Redis projection from a
// Kafka subscription in a separate OS process and SIGKILLs it four times
// mid-work. Kafka redelivers what was not committed (applied or not), and
// one event in ten is published twice: both read models must equal a clean
// replay, each event counted once.
func TestKillConsumerProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, prefix := testenv.Redis(t)
	rdbURL := testenv.RedisURL(t)
	opts, _ := goredis.ParseURL(rdbURL)
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	seeds := testenv.Kafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := e.prepare(ctx, cqrs.ID{Name: "killc_pg", Version: 1}); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Name(t, "killc")
	kcfg := kafka.Config{Brokers: seeds, Logger: discard}
	adm, err := kafka.NewAdmin(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.CreateTopic(ctx, kafka.TopicSpec{Name: topic, Partitions: 4, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kcfg})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	const n = 3000
	reg := cqrstest.Registry()
	want := cqrstest.Model{Scores: map[string]int64{}}
	var msgs []broker.Message
	for i := range n {
		s := cqrstest.ScoreAdded{Player: fmt.Sprintf("p%d", i%97), Points: int64(i%13 + 1)}
		d, err := reg.Encode(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		d.ID, d.Time = broker.NewID(), time.Now()
		m := eventsource.ToMessage(topic, eventsource.Record{EventData: d, StreamID: fmt.Sprintf("game-%d", i%200), Version: int64(i/200 + 1),
			Position: eventsource.Position{Transaction: uint64(100 + i), Sequence: int64(i + 1)}})
		msgs = append(msgs, m)
		if i%10 == 3 {
			msgs = append(msgs, m) // published twice
		}
		want.Scores[s.Player] += s.Points
		want.Events++
	}
	if err := pub.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	rstore, _ := cqrsredis.New(rdb, cqrsredis.Config{Prefix: prefix})
	env := []string{envChild + "=consumer", envChildDB + "=" + e.url, envChildRedis + "=" + rdbURL, envChildPrefix + "=" + prefix,
		envChildSeeds + "=" + strings.Join(seeds, ","), envChildTopic + "=" + topic}
	progress := func() (pg, rd int64) {
		if st, err := e.store.State(ctx, cqrs.ID{Name: "killc_pg", Version: 1}); err == nil {
			pg = st.Events
		}
		if st, err := rstore.State(ctx, cqrs.ID{Name: "killc_rd", Version: 1}); err == nil {
			rd = st.Events
		}
		return pg, rd
	}
	killRounds(t, env, progress, want.Events, 150, 300)
	time.Sleep(200 * time.Millisecond) // a double apply would show by now
	got, err := e.read(ctx, "killc_pg_scores_v1", "killc_pg_counts_v1")
	if err != nil {
		t.Fatal(err)
	}
	if !modelsEqual(got, want) {
		t.Errorf("postgres read model after the kills: %d events %v, want %d events %v", got.Events, got.Scores, want.Events, want.Scores)
	}
	rgot := redisModel(t, rdb, rstore.VersionPrefix(cqrs.ID{Name: "killc_rd", Version: 1})+"scores")
	if !modelsEqual(rgot, want) {
		t.Errorf("redis read model after the kills: %d events %v, want %d events %v", rgot.Events, rgot.Scores, want.Events, want.Scores)
	}
	if pg, rd := progress(); pg != want.Events || rd != want.Events {
		t.Errorf("states count %d (postgres) and %d (redis) events, want %d", pg, rd, want.Events)
	}
}

package redis_test

import (
	"context"
	"log"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/idempotency"
	idemredis "github.com/steadfast-go/steadfast/idempotency/redis"
)

// Deduplicate a consumer on Redis: best-effort, for effects where a rare
// repeat is harmless. Needs a Redis server, so it only compiles here.
func Example() {
	ctx := context.Background()
	rdb := goredis.NewClient(&goredis.Options{Addr: "localhost:6379"})
	defer rdb.Close()

	store, err := idemredis.New(rdb, idemredis.Config{
		Lease:     30 * time.Second, // longer than the slowest handler
		Retention: 48 * time.Hour,   // longer than the broker's retry window
	})
	if err != nil {
		log.Fatal(err)
	}
	dedup, err := idempotency.Consumer(store, idempotency.ConsumerConfig{})
	if err != nil {
		log.Fatal(err)
	}
	notify := func(ctx context.Context, d broker.Delivery) error {
		return nil // send the e-mail
	}
	var sub broker.Subscriber = brokermem.New(brokermem.Config{}) // or Kafka, RabbitMQ
	err = sub.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "mailer"}, broker.Chain(notify, dedup))
	if err != nil {
		log.Fatal(err)
	}
}

// A batch consumer takes all keys of a batch in one round trip.
func ExampleStore_AcquireBatch() {
	ctx := context.Background()
	rdb := goredis.NewClient(&goredis.Options{Addr: "localhost:6379"})
	store, _ := idemredis.New(rdb, idemredis.Config{})

	batch := []broker.Delivery{ /* ... */ }
	keys := make([]string, len(batch))
	for i, d := range batch {
		keys[i] = d.ID
	}
	claims, err := store.AcquireBatch(ctx, "indexer", keys)
	if err != nil {
		log.Fatal(err)
	}
	var done, failed []*idemredis.Lease
	for _, c := range claims {
		switch {
		case c.Lease != nil: // new: process it
			if err := index(c.Key); err != nil {
				failed = append(failed, c.Lease)
			} else {
				done = append(done, c.Lease)
			}
		case c.Done != nil: // duplicate: skip
		default: // c.Err: in progress elsewhere or Redis failed: retry later
		}
	}
	_ = store.CompleteBatch(ctx, done...)
	_ = store.ReleaseBatch(ctx, failed...)
}

func index(string) error { return nil }

package redis_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/idempotency"
	idemredis "github.com/steadfast-go/steadfast/idempotency/redis"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// Deduplicate a consumer on Redis: best-effort, for effects where a rare
// repeat is harmless. The producer sent the order twice; one e-mail goes
// out. (The Example runs on the Redis of STEADFAST_REDIS_URL, as the tests
// do.)
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rdb, prefix := testenv.ExampleRedis() // your *redis.Client, and a key prefix of your own

	store, err := idemredis.New(rdb, idemredis.Config{
		Prefix:    prefix,
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
	deliveries := 0
	notify := func(ctx context.Context, d broker.Delivery) error {
		fmt.Printf("e-mail for %s\n", d.Payload)
		return nil
	}
	stopAfterTwo := func(next broker.Handler) broker.Handler {
		return func(ctx context.Context, d broker.Delivery) error {
			if deliveries++; deliveries == 2 {
				defer cancel()
			}
			return next(ctx, d)
		}
	}

	b := brokermem.New(brokermem.Config{}) // or Kafka, RabbitMQ
	defer b.Close()
	m := broker.NewMessage("orders", []byte("order-7"))
	m.Key = "order-7"
	for range 2 {
		if err := b.Publish(ctx, m); err != nil { // the same message ID twice
			log.Fatal(err)
		}
	}
	err = b.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "mailer"}, broker.Chain(notify, stopAfterTwo, dedup))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("deliveries:", deliveries)
	// Output:
	// e-mail for order-7
	// deliveries: 2
}

// A batch consumer takes all keys of a batch in one round trip; a key done
// before comes back as Done.
func ExampleStore_AcquireBatch() {
	ctx := context.Background()
	rdb, prefix := testenv.ExampleRedis() // your *redis.Client, and a key prefix of your own
	store, err := idemredis.New(rdb, idemredis.Config{Prefix: prefix})
	if err != nil {
		log.Fatal(err)
	}

	for _, batch := range [][]string{{"doc-1", "doc-2"}, {"doc-2", "doc-3"}} { // doc-2 redelivered
		claims, err := store.AcquireBatch(ctx, "indexer", batch)
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
				fmt.Println("skipped", c.Key)
			default: // c.Err: in progress elsewhere or Redis failed: retry later
				fmt.Println(c.Key, c.Err)
			}
		}
		if err := store.CompleteBatch(ctx, done...); err != nil {
			log.Fatal(err)
		}
		if err := store.ReleaseBatch(ctx, failed...); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// indexed doc-1
	// indexed doc-2
	// skipped doc-2
	// indexed doc-3
}

func index(key string) error {
	fmt.Println("indexed", key)
	return nil
}

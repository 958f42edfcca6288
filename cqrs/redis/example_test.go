package redis_test

import (
	"fmt"
	"log"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/redis"
)

// Each version of a projection keeps its read model under its own key
// prefix; a rebuild fills the next one while the serving one serves.
func ExampleStore_VersionPrefix() {
	rdb := goredis.NewClient(&goredis.Options{Addr: "localhost:6379"}) // not contacted here
	defer rdb.Close()
	s, err := redis.New(rdb, redis.Config{Prefix: "shop:"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(s.VersionPrefix(cqrs.ID{Name: "leaderboard", Version: 1}) + "board")
	fmt.Println(s.VersionPrefix(cqrs.ID{Name: "leaderboard", Version: 2}) + "board")
	// Output:
	// shop:leaderboard:v1:board
	// shop:leaderboard:v2:board
}

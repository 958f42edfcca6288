package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

// The scripts may be missing from the server's cache (a restart, SCRIPT
// FLUSH, a new replica): single and batch calls load them and go on.
func TestScriptNotLoaded(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	s, err := New(rdb, Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	fresh := func(src string) *goredis.Script {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return goredis.NewScript(src + "\n-- " + hex.EncodeToString(b[:])) // unknown to the server
	}
	s.complete, s.release = fresh(completeScript), fresh(releaseScript)
	claims, err := s.AcquireBatch(ctx, "scope", []string{"a", "b", "c"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CompleteBatch(ctx, claims[0].Lease, claims[1].Lease); err != nil {
		t.Fatalf("CompleteBatch with unloaded script: %v", err)
	}
	if err := s.ReleaseBatch(ctx, claims[2].Lease); err != nil {
		t.Fatalf("ReleaseBatch with unloaded script: %v", err)
	}
	s.complete, s.release = fresh(completeScript), fresh(releaseScript)
	l, _, err := s.Acquire(ctx, "scope", "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Complete(ctx, []byte("r")); err != nil {
		t.Fatalf("Complete with unloaded script: %v", err)
	}
	after, _ := s.AcquireBatch(ctx, "scope", []string{"a", "b", "c", "d"})
	if after[0].Done == nil || after[1].Done == nil || after[2].Lease == nil || after[3].Done == nil {
		t.Fatalf("after the calls: %+v", after)
	}
}

package eventsourcetest

import (
	"context"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventsource"
)

// Store is what the suite needs of a store.
type Store interface {
	eventsource.Store
	eventsource.LogReader
	eventsource.Lifecycle
}

// Tx is a transaction on a store: a Store view whose appends become
// visible when Commit returns and vanish on Rollback.
type Tx interface {
	eventsource.Store
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// Harness gives the suite its stores.
type Harness struct {
	// New returns a fresh, empty store for one case. Clean it up with
	// t.Cleanup.
	New func(t testing.TB) Store
	// Begin opens a transaction on s. pid is the database session that
	// runs it, as a stall report names it (Blocker.PID); 0 when the store
	// has no sessions.
	Begin func(t testing.TB, s Store) (tx Tx, pid int)
	// Features declares optional behaviour.
	Features Features
}

// Features declares what a store offers beyond the core.
type Features struct {
	// Shredding: the store implements eventsource.Shredder.
	Shredding bool
	// Timeout bounds each wait of a case. Default 60s.
	Timeout time.Duration
	// LargeStream is the event count of the snapshot-tail case. Default
	// 10,000.
	LargeStream int
}

func (f Features) withDefaults() Features {
	if f.Timeout <= 0 {
		f.Timeout = 60 * time.Second
	}
	if f.LargeStream <= 0 {
		f.LargeStream = 10000
	}
	return f
}

// Run runs every case, each as a parallel subtest with a store of its own.
func Run(t *testing.T, h Harness) {
	if h.New == nil || h.Begin == nil {
		t.Fatal("eventsourcetest: Harness needs New and Begin")
	}
	h.Features = h.Features.withDefaults()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, &h)
		})
	}
}

// Cases returns the names of the cases Run runs, in order.
func Cases() []string {
	names := make([]string, len(cases))
	for i, c := range cases {
		names[i] = c.name
	}
	return names
}

type testCase struct {
	name string
	run  func(t *testing.T, h *Harness)
}

// cases lists every case in the order Run runs them.
var cases = []testCase{
	{"AppendAndRead", testAppendAndRead},
	{"ExpectedVersion", testExpectedVersion},
	{"MultiStreamAtomic", testMultiStreamAtomic},
	{"Transaction", testTransaction},
	{"ConcurrentWriters", testConcurrentWriters},
	{"IdempotentRetry", testIdempotentRetry},
	{"Reordered", testReordered},
	{"GapRace", testGapRace},
	{"RandomCommits", testRandomCommits},
	{"LogPages", testLogPages},
	{"Filter", testFilter},
	{"ReadYourWrites", testReadYourWrites},
	{"Notify", testNotify},
	{"CheckpointAhead", testCheckpointAhead},
	{"Upcasting", testUpcasting},
	{"RegistryCheck", testRegistryCheck},
	{"UnknownEvent", testUnknownEvent},
	{"SnapshotTail", testSnapshotTail},
	{"SnapshotSchema", testSnapshotSchema},
	{"StaleSnapshot", testStaleSnapshot},
	{"Temporal", testTemporal},
	{"Tombstone", testTombstone},
	{"Truncate", testTruncate},
	{"Archive", testArchive},
	{"Shredding", testShredding},
	{"BadInput", testBadInput},
	{"Metadata", testMetadata},
}

func (h *Harness) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), h.Features.Timeout)
	t.Cleanup(cancel)
	return ctx
}

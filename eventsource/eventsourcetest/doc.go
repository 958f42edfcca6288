// Package eventsourcetest is the conformance suite every event store runs:
// eventsource/memory and eventsource/postgres pass it, and so must any other
// implementation of eventsource.Store.
//
// A store's test calls Run with a Harness that makes a fresh, empty store
// for each case and can open a transaction on it:
//
//	func TestConformance(t *testing.T) {
//		eventsourcetest.Run(t, eventsourcetest.Harness{
//			New: func(t testing.TB) eventsourcetest.Store { return esmem.New() },
//			Begin: func(t testing.TB, s eventsourcetest.Store) (eventsourcetest.Tx, int) {
//				return memoryTx{s.(*esmem.Store).Begin()}, 0 // Commit and Rollback take a ctx
//			},
//			Features: eventsourcetest.Features{Shredding: true},
//		})
//	}
//
// The cases prove, against the real store: expected versions and atomic
// multi-stream appends; 20 concurrent writers of one stream (exactly one
// wins each version, nothing lost, the state equals a sequential replay);
// exact idempotent retries; a global reader that sees every event exactly
// once and in order while transactions commit out of position order, one
// held open until it is reported as a stall, across a restart from a
// stored checkpoint; filters; upcasting on every read path; snapshots that
// make a load read only the tail; temporal reads; tombstones, truncation,
// archiving and crypto-shredding; and bad input refused with nothing lost.
package eventsourcetest

// Package memory is an in-process read-model store for cqrs projections:
// tables of keyed values per projection version, checkpoints and leases in
// one mutex-guarded structure. It makes every example and test of a
// projection runnable without infrastructure; it keeps nothing across
// restarts.
//
// Import it as cqrsmem, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import cqrsmem "github.com/steadfast-go/steadfast/cqrs/memory"
//
// A batch's writes (Tx) are staged and applied with the checkpoint under
// one lock: a reader never sees half a batch, and a failing handler leaves
// nothing. Versions have their own tables; Activate switches the serving
// version in one step.
package memory

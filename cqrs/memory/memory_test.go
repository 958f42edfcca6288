package memory_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/cqrstest"
	"github.com/steadfast-go/steadfast/cqrs/memory"
	esmemory "github.com/steadfast-go/steadfast/eventsource/memory"
)

// effects is the memory backend's side-effect log: a table of the version,
// keyed by event ID, read across versions.
func TestConformance(t *testing.T) {
	cqrstest.Run(t, cqrstest.Features{}, func(t *testing.T) cqrstest.Backend[*memory.Tx] {
		s := memory.New()
		var mu sync.Mutex
		effects := map[string][]string{}
		return cqrstest.Backend[*memory.Tx]{
			Store:  s,
			Events: esmemory.New(),
			Writer: func(tx *memory.Tx, b *cqrs.Batch) cqrstest.Writer { return writer{tx: tx} },
			Read: func(ctx context.Context, id cqrs.ID) (cqrstest.Model, error) {
				return model(s.Table(id, "scores"), s.Table(id, "count")), nil
			},
			ReadActive: func(ctx context.Context, name string) (cqrstest.Model, error) {
				v, _ := s.ActiveVersion(ctx, name)
				id := cqrs.ID{Name: name, Version: v}
				return model(s.Table(id, "scores"), s.Table(id, "count")), nil
			},
			Effects: func(ctx context.Context, name string) ([]string, error) {
				var out []string
				for v := 1; v <= 3; v++ {
					for k := range s.Table(cqrs.ID{Name: name, Version: v}, "effects") {
						out = append(out, k)
					}
				}
				mu.Lock()
				defer mu.Unlock()
				return slices.Concat(out, effects[name]), nil
			},
		}
	})
}

type writer struct{ tx *memory.Tx }

func (w writer) AddScores(ctx context.Context, points map[string]int64, n int64) error {
	for k, v := range points {
		w.tx.Add("scores", k, float64(v))
	}
	w.tx.Add("count", "events", float64(n))
	return nil
}

func (w writer) Effect(ctx context.Context, ids []string) error {
	for _, id := range ids {
		w.tx.Set("effects", id, true)
	}
	return nil
}

func model(scores, count map[string]any) cqrstest.Model {
	m := cqrstest.Model{Scores: map[string]int64{}}
	for k, v := range scores {
		m.Scores[k] = int64(v.(float64))
	}
	if c, ok := count["events"].(float64); ok {
		m.Events = int64(c)
	}
	return m
}

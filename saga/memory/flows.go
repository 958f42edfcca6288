package memory

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/saga"
)

// Flows is an in-process saga.FlowStore. The zero value is not usable;
// create it with NewFlows.
type Flows struct {
	mu    sync.Mutex
	flows map[string]*flow
	seen  map[string]bool
	seq   int64
}

type flow struct {
	sum    saga.FlowSummary
	events []saga.FlowEvent
}

var _ saga.FlowStore = (*Flows)(nil)

// NewFlows returns an empty flow store.
func NewFlows() *Flows {
	return &Flows{flows: map[string]*flow{}, seen: map[string]bool{}}
}

// Record implements saga.FlowStore.
func (f *Flows) Record(ctx context.Context, evs []saga.FlowEvent) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, ev := range evs {
		if f.seen[ev.MessageID] {
			continue
		}
		f.seen[ev.MessageID] = true
		n++
		f.seq++
		ev.Seq = f.seq
		fl := f.flows[ev.CorrelationID]
		if fl == nil {
			fl = &flow{sum: saga.FlowSummary{CorrelationID: ev.CorrelationID, Flow: ev.Flow, StartedAt: ev.At, LastAt: ev.At,
				LastType: ev.Type, LastSource: ev.Source}}
			if ev.Deadline > 0 {
				fl.sum.DueAt = ev.At.Add(ev.Deadline)
			}
			f.flows[ev.CorrelationID] = fl
		}
		s := &fl.sum
		s.Events++
		if ev.At.Before(s.StartedAt) {
			s.StartedAt = ev.At
			if ev.Deadline > 0 {
				s.DueAt = ev.At.Add(ev.Deadline)
			}
		}
		if !ev.At.Before(s.LastAt) {
			s.LastAt, s.LastType, s.LastSource = ev.At, ev.Type, ev.Source
		}
		if ev.Terminal && !s.Done {
			s.Done, s.EndedAt = true, ev.At
		}
		fl.events = append(fl.events, ev)
	}
	return n, nil
}

// Flow implements saga.FlowStore.
func (f *Flows) Flow(ctx context.Context, correlationID string) (saga.FlowSummary, []saga.FlowEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.flows[correlationID]
	if fl == nil {
		return saga.FlowSummary{}, nil, fmt.Errorf("saga/memory: flow %s: %w", correlationID, saga.ErrNotFound)
	}
	evs := slices.Clone(fl.events)
	slices.SortStableFunc(evs, func(a, b saga.FlowEvent) int {
		return cmp.Or(a.At.Compare(b.At), cmp.Compare(a.Seq, b.Seq))
	})
	return fl.sum, evs, nil
}

// Stuck implements saga.FlowStore.
func (f *Flows) Stuck(ctx context.Context, now time.Time, limit int) ([]saga.FlowSummary, error) {
	f.mu.Lock()
	var out []saga.FlowSummary
	for _, fl := range f.flows {
		if !fl.sum.Done && !fl.sum.DueAt.IsZero() && fl.sum.DueAt.Before(now) {
			out = append(out, fl.sum)
		}
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b saga.FlowSummary) int {
		return cmp.Or(a.DueAt.Compare(b.DueAt), cmp.Compare(a.CorrelationID, b.CorrelationID))
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Flows implements saga.FlowStore.
func (f *Flows) Flows(ctx context.Context, q saga.FlowQuery) ([]saga.FlowSummary, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	f.mu.Lock()
	var out []saga.FlowSummary
	for id, fl := range f.flows {
		if id <= q.AfterID || (q.Flow != "" && fl.sum.Flow != q.Flow) || (q.Done != nil && fl.sum.Done != *q.Done) {
			continue
		}
		out = append(out, fl.sum)
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b saga.FlowSummary) int { return cmp.Compare(a.CorrelationID, b.CorrelationID) })
	if len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

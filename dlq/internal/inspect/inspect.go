// Package inspect holds what the dead-letter inspectors of dlq's backend
// packages (kafkadlq, rabbitdlq) share and users never call, so that every
// backend lists and replays dead letters the same way: the listing order,
// the replay messages in chunks, and which replays reached the broker.
package inspect

import (
	"errors"
	"slices"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
)

// Chunk is how many replay messages an inspector publishes per Publish
// call.
const Chunk = 500

// SortByFailure sorts dead letters by last failure time, oldest first,
// keeping the order of equal times: the order Inspector.List promises.
func SortByFailure(dls []dlq.DeadLetter) {
	slices.SortStableFunc(dls, func(a, b dlq.DeadLetter) int { return a.FailedAt().Compare(b.FailedAt()) })
}

// ReplayMessages builds the replay message of every dead letter in sel (see
// dlq.ReplayMessage). It returns the messages, the dead letters they replay
// at the same indices, and the errors of the dead letters that cannot be
// replayed.
func ReplayMessages(sel []dlq.DeadLetter, opts dlq.ReplayOptions, now time.Time) (msgs []broker.Message, from []dlq.DeadLetter, errs []error) {
	for _, dl := range sel {
		m, err := dlq.ReplayMessage(dl, opts, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		msgs, from = append(msgs, m), append(from, dl)
	}
	return msgs, from, errs
}

// Published returns the dead letters of one Publish call (from, at the
// indices of the messages published) that reached the broker: all of them
// when err is nil, those a *broker.PublishError does not name, and none for
// any other error. Inspectors settle only these.
func Published(from []dlq.DeadLetter, err error) []dlq.DeadLetter {
	if err == nil {
		return from
	}
	var pe *broker.PublishError
	if !errors.As(err, &pe) {
		return nil
	}
	failed := make(map[int]bool, len(pe.Failures))
	for _, fl := range pe.Failures {
		failed[fl.Index] = true
	}
	var ok []dlq.DeadLetter
	for k, dl := range from {
		if !failed[k] {
			ok = append(ok, dl)
		}
	}
	return ok
}

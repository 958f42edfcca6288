package memory

import (
	"context"

	"github.com/steadfast-go/steadfast/broker"
)

// Open returns another handle on s's outbox, as another process would
// open it: its claims are its own, and Crash ends them.
func (s *Store) Open() *Store { return &Store{o: s.o, sess: newSession()} }

// Crash ends every open claim of the handle as the death of its session
// would: the rows are released unchanged and the claims cannot complete.
func (s *Store) Crash() { s.crash() }

// Corrupt writes a committed row of key that can never be published: one
// with an empty topic (badTopic) or one whose headers could not be decoded
// (recorded as Malformed).
func (s *Store) Corrupt(key string, badTopic bool) error {
	m := broker.NewMessage("corrupt", []byte("bad"))
	m.Key = key
	rows, err := s.o.prepare(context.Background(), []broker.Message{m})
	if err != nil {
		return err
	}
	r := rows[0]
	if badTopic {
		r.rec.Message.Topic = ""
	} else {
		r.rec.Message.Headers = nil
		r.rec.Malformed = "headers are not a JSON object of strings"
	}
	s.o.commit(rows)
	return nil
}

package postgres

import "github.com/steadfast-go/steadfast/cqrs"

// LockKeys returns the advisory-lock keys of id's lease (pg_locks classid
// and objid), for tests that end the holder's session.
func (s *Store) LockKeys(id cqrs.ID) (int32, int32) { return s.t.lock, lockKey(id) }

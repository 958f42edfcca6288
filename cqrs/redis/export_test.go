package redis

import "github.com/steadfast-go/steadfast/cqrs"

// LeaseKey returns the key of id's lease, for tests that end it as its
// expiry after the holder's death would.
func (s *Store) LeaseKey(id cqrs.ID) string { return s.leaseKey(id) }

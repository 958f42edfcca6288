package postgres

// ClaimSQL exposes the claim statement to tests.
func (s *Store) ClaimSQL() string { return s.sql.claim }

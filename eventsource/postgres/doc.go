// Package postgres is the event store on PostgreSQL (pgx v5).
package postgres

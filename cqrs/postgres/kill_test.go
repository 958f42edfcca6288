package postgres_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/cqrstest"
	"github.com/steadfast-go/steadfast/cqrs/postgres"
	cqrsredis "github.com/steadfast-go/steadfast/cqrs/redis"
	"github.com/steadfast-go/steadfast/eventsource"
	espg "github.com/steadfast-go/steadfast/eventsource/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// Environment of the projector process TestKillProjectorProcess starts:
// the test binary re-executed with these set runs projectorProcess.
const (
	envChild       = "STEADFAST_CQRS_TEST_PROJECTOR"
	envChildDB     = "STEADFAST_CQRS_TEST_DB"
	envChildRedis  = "STEADFAST_CQRS_TEST_REDIS"
	envChildPrefix = "STEADFAST_CQRS_TEST_PREFIX"
)

var discard = slog.New(slog.DiscardHandler)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envChild); mode != "" {
		run := projectorProcess
		if mode == "consumer" {
			run = consumerProcess
		}
		if err := run(); err != nil {
			fmt.Fprintln(os.Stderr, "projector process:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const killBatch = 50

// projectorProcess runs a projection into PostgreSQL (kill_pg) and one
// into Redis (kill_rd) until it is killed.
func projectorProcess() error {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(envChildDB))
	if err != nil {
		return err
	}
	events, err := espg.New(pool, espg.Config{})
	if err != nil {
		return err
	}
	store, err := postgres.New(pool, postgres.Config{})
	if err != nil {
		return err
	}
	opts, err := goredis.ParseURL(os.Getenv(envChildRedis))
	if err != nil {
		return err
	}
	prefix := os.Getenv(envChildPrefix)
	rstore, err := cqrsredis.New(goredis.NewClient(opts), cqrsredis.Config{Prefix: prefix, LeaseTTL: 500 * time.Millisecond})
	if err != nil {
		return err
	}
	cfg := cqrs.Config{BatchSize: killBatch, PollInterval: 50 * time.Millisecond, TakeoverInterval: 50 * time.Millisecond, Logger: discard}
	pg, err := cqrs.NewProjector(store, events, cqrstest.Registry(), cqrs.Projection[postgres.Tx]{ID: cqrs.ID{Name: "kill_pg", Version: 1},
		Handle: func(ctx context.Context, tx postgres.Tx, b *cqrs.Batch) error {
			return writer{tx, "kill_pg"}.AddScores(ctx, points(b), int64(len(b.Events)))
		}}, cfg)
	if err != nil {
		return err
	}
	rd, err := cqrs.NewProjector(rstore, events, cqrstest.Registry(), cqrs.Projection[*cqrsredis.Tx]{ID: cqrs.ID{Name: "kill_rd", Version: 1},
		Handle: func(ctx context.Context, tx *cqrsredis.Tx, b *cqrs.Batch) error {
			for k, v := range points(b) {
				tx.HIncrBy(ctx, "scores", k, v)
			}
			tx.HIncrBy(ctx, "scores", "_events", int64(len(b.Events)))
			return nil
		}}, cfg)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- pg.Run(ctx) }()
	go func() { errc <- rd.Run(ctx) }()
	fmt.Println("ready")
	return <-errc
}

func points(b *cqrs.Batch) map[string]int64 {
	m := map[string]int64{}
	for _, e := range b.Events {
		s := e.Event.(cqrstest.ScoreAdded)
		m[s.Player] += s.Points
	}
	return m
}

// copyEvents inserts n ScoreAdded events with COPY (one stream each, in
// one transaction) and returns the model a clean replay builds.
func copyEvents(t testing.TB, pool *pgxpool.Pool, n int) cqrstest.Model {
	t.Helper()
	want := cqrstest.Model{Scores: map[string]int64{}}
	rows := make([][]any, n)
	for i := range rows {
		e := cqrstest.ScoreAdded{Player: fmt.Sprintf("p%d", i%97), Points: int64(i%13 + 1)}
		data, _ := json.Marshal(e)
		rows[i] = []any{fmt.Sprintf("bulk-%d", i), int64(1), broker.NewID(), cqrstest.TypeScoreAdded, int32(1), data}
		want.Scores[e.Player] += e.Points
		want.Events++
	}
	_, err := pool.CopyFrom(context.Background(), pgx.Identifier{"events"},
		[]string{"stream_id", "version", "event_id", "type", "schema_version", "data"}, pgx.CopyFromRows(rows))
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// TestKillProjectorProcess runs a PostgreSQL and a Redis projection in a
// separate OS process and SIGKILLs it four times in the middle of its
// work: the killed transaction in flight is rolled back by PostgreSQL, the
// MULTI/EXEC never sent is not applied by Redis, the PostgreSQL lease goes
// with the session and the Redis lease expires. Both read models must
// equal a clean replay.
func TestKillProjectorProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, prefix := testenv.Redis(t)
	rdbURL := testenv.RedisURL(t)
	opts, _ := goredis.ParseURL(rdbURL)
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	ctx := context.Background()
	if err := e.prepare(ctx, cqrs.ID{Name: "kill_pg", Version: 1}); err != nil {
		t.Fatal(err)
	}
	want := copyEvents(t, e.pool, 3000)
	rstore, _ := cqrsredis.New(rdb, cqrsredis.Config{Prefix: prefix})
	env := []string{envChild + "=1", envChildDB + "=" + e.url, envChildRedis + "=" + rdbURL, envChildPrefix + "=" + prefix}
	progress := func() (pg, rd int64) {
		if st, err := e.store.State(ctx, cqrs.ID{Name: "kill_pg", Version: 1}); err == nil {
			pg = st.Events
		}
		if st, err := rstore.State(ctx, cqrs.ID{Name: "kill_rd", Version: 1}); err == nil {
			rd = st.Events
		}
		return pg, rd
	}
	killRounds(t, env, progress, want.Events, 200, 700)
	got, err := e.read(ctx, "kill_pg_scores_v1", "kill_pg_counts_v1")
	if err != nil {
		t.Fatal(err)
	}
	if !modelsEqual(got, want) {
		t.Errorf("postgres read model after the kills: %d events %v, want %d events %v", got.Events, got.Scores, want.Events, want.Scores)
	}
	rgot := redisModel(t, rdb, rstore.VersionPrefix(cqrs.ID{Name: "kill_rd", Version: 1})+"scores")
	if !modelsEqual(rgot, want) {
		t.Errorf("redis read model after the kills: %d events %v, want %d events %v", rgot.Events, rgot.Scores, want.Events, want.Scores)
	}
}

// killRounds starts the test binary as a child process with env (it
// prints "ready" once running) and SIGKILLs it four times, each once both
// stores (progress) moved by a random number of events in
// [base, base+spread); then it starts a last one and waits until both
// reached want. The last child is killed when the test ends.
func killRounds(t *testing.T, env []string, progress func() (pg, rd int64), want int64, base, spread int) {
	t.Helper()
	spawn := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), env...)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan bool, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if strings.TrimSpace(sc.Text()) == "ready" {
					ready <- true
				}
			}
			ready <- false
		}()
		select {
		case ok := <-ready:
			if !ok {
				_ = cmd.Wait()
				t.Fatal("child process exited before it was ready")
			}
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			t.Fatal("child process not ready after a minute")
		}
		return cmd
	}
	for i := range 4 {
		pg0, rd0 := progress()
		cmd := spawn()
		target := int64(base + rand.IntN(spread))
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
			pg, rd := progress()
			if pg >= min(pg0+target, want) && rd >= min(rd0+target, want) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		pg, rd := progress()
		t.Logf("child process %d killed (%s) at %d (postgres) and %d (redis) of %d events", i+1, cmd.ProcessState, pg, rd, want)
	}
	last := spawn()
	t.Cleanup(func() { _ = last.Process.Signal(syscall.SIGKILL); _ = last.Wait() })
	for deadline := time.Now().Add(2 * time.Minute); ; {
		pg, rd := progress()
		if pg >= want && rd >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not caught up: %d and %d of %d", pg, rd, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// redisModel reads the scores hash key (its "_events" field is the count).
func redisModel(t *testing.T, rdb *goredis.Client, key string) cqrstest.Model {
	t.Helper()
	h, err := rdb.HGetAll(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	m := cqrstest.Model{Scores: map[string]int64{}}
	for k, v := range h {
		var n int64
		fmt.Sscan(v, &n)
		if k == "_events" {
			m.Events = n
		} else {
			m.Scores[k] = n
		}
	}
	return m
}

func modelsEqual(a, b cqrstest.Model) bool {
	if a.Events != b.Events || len(a.Scores) != len(b.Scores) {
		return false
	}
	for k, v := range b.Scores {
		if a.Scores[k] != v {
			return false
		}
	}
	return true
}

// TestRebuild100k: version 2 of a projection rebuilds 100,000 events into
// new tables while version 1 serves and a query loop reads the views; the
// swap is one transaction: every read sees the complete model.
func TestRebuild100k(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	want := copyEvents(t, e.pool, 100_000)
	var projs [3]*cqrs.Projector[postgres.Tx]
	for v := 1; v <= 2; v++ {
		id := cqrs.ID{Name: "big", Version: v}
		if err := e.prepare(ctx, id); err != nil {
			t.Fatal(err)
		}
		head, err := postgres.NewHead(e.pool, "")
		if err != nil {
			t.Fatal(err)
		}
		p, err := cqrs.NewProjector(e.store, e.events, cqrstest.Registry(), cqrs.Projection[postgres.Tx]{ID: id,
			Views: []string{"big_scores", "big_counts"},
			Handle: func(ctx context.Context, tx postgres.Tx, b *cqrs.Batch) error {
				return writer{tx, "big"}.AddScores(ctx, points(b), int64(len(b.Events)))
			}}, cqrs.Config{BatchSize: 2000, Activate: true, Logger: discard, Head: head})
		if err != nil {
			t.Fatal(err)
		}
		projs[v] = p
	}
	run := func(p *cqrs.Projector[postgres.Tx]) {
		go func() { _ = p.Run(ctx) }()
	}
	start := time.Now()
	run(projs[1])
	if err := projs[1].Wait(ctx, lastPosition(t, e)); err != nil {
		t.Fatal(err)
	}
	t.Logf("version 1: 100,000 events in %s", time.Since(start).Round(time.Millisecond))
	waitActive(t, e, "big", 1)

	type result struct {
		reads int
		err   error
	}
	loopCtx, stopLoop := context.WithCancel(ctx)
	done := make(chan result, 1)
	go func() {
		var r result
		for loopCtx.Err() == nil {
			m, err := e.read(loopCtx, "big_scores", "big_counts")
			if loopCtx.Err() != nil {
				break
			}
			if err == nil && !modelsEqual(m, want) {
				err = fmt.Errorf("read %d: the serving model has %d events and %d players, want %d and %d", r.reads, m.Events, len(m.Scores), want.Events, len(want.Scores))
			}
			if err != nil {
				r.err = err
				break
			}
			r.reads++
		}
		done <- r
	}()
	start = time.Now()
	run(projs[2])
	waitActive(t, e, "big", 2)
	el := time.Since(start)
	time.Sleep(50 * time.Millisecond)
	stopLoop()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.reads == 0 {
		t.Fatal("the query loop read nothing")
	}
	t.Logf("version 2 rebuilt 100,000 events and swapped in after %s (%.0f events/s) under %d queries, none failed or saw a partial model",
		el.Round(time.Millisecond), 100_000/el.Seconds(), r.reads)
	got, err := e.read(ctx, "big_scores_v2", "big_counts_v2")
	if err != nil {
		t.Fatal(err)
	}
	if !modelsEqual(got, want) {
		t.Fatalf("version 2 model: %d events, want %d", got.Events, want.Events)
	}
}

func lastPosition(t *testing.T, e *env) (p eventsource.Position) {
	t.Helper()
	var tx, seq int64
	if err := e.pool.QueryRow(context.Background(), `SELECT transaction_id::text::bigint, position FROM events ORDER BY transaction_id DESC, position DESC LIMIT 1`).Scan(&tx, &seq); err != nil {
		t.Fatal(err)
	}
	p.Transaction, p.Sequence = uint64(tx), seq
	return p
}

func waitActive(t *testing.T, e *env, name string, v int) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; {
		got, err := e.store.ActiveVersion(context.Background(), name)
		if err == nil && got == v {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("active version of %s: %d, %v; want %d", name, got, err, v)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package eventsource_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/eventsource/memory"
)

func TestPositionOrderAndForms(t *testing.T) {
	ps := []eventsource.Position{{}, {0, 1}, {1, 0}, {1, 5}, {2, 1}, {1 << 33, 3}, {1<<64 - 1, 1<<63 - 1}}
	for i, p := range ps {
		for j, q := range ps {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := p.Compare(q); got != want {
				t.Fatalf("%v.Compare(%v) = %d, want %d", p, q, got, want)
			}
			bp, _ := p.MarshalBinary()
			bq, _ := q.MarshalBinary()
			if got := bytes.Compare(bp, bq); got != want {
				t.Fatalf("binary forms of %v and %v compare %d, want %d", p, q, got, want)
			}
		}
		s := p.String()
		back, err := eventsource.ParsePosition(s)
		if err != nil || back != p {
			t.Fatalf("ParsePosition(%q) = %v, %v", s, back, err)
		}
		var u eventsource.Position
		b, _ := p.MarshalBinary()
		if err := u.UnmarshalBinary(b); err != nil || u != p {
			t.Fatalf("binary round trip of %v: %v, %v", p, u, err)
		}
		txt, _ := p.MarshalText()
		if err := u.UnmarshalText(txt); err != nil || u != p {
			t.Fatalf("text round trip of %v: %v, %v", p, u, err)
		}
	}
	if !ps[0].IsZero() || ps[1].IsZero() || !ps[1].Before(ps[2]) {
		t.Fatal("IsZero/Before")
	}
	for _, bad := range []string{"", "1", "1:", ":1", "01:2", "1:02", "-1:2", "1:-2", "1:2:3", " 1:2", "1:2 ", "+1:2",
		"18446744073709551616:1", "1:9223372036854775808", "a:b"} {
		if _, err := eventsource.ParsePosition(bad); err == nil {
			t.Errorf("ParsePosition(%q) accepted", bad)
		}
	}
	var u eventsource.Position
	if err := u.UnmarshalBinary(make([]byte, 15)); err == nil {
		t.Error("15 bytes accepted")
	}
	if err := u.UnmarshalBinary(append(make([]byte, 8), 0x80, 0, 0, 0, 0, 0, 0, 0)); err == nil {
		t.Error("a negative sequence accepted")
	}
}

func FuzzParsePosition(f *testing.F) {
	for _, s := range []string{"0:0", "745001:12", "18446744073709551615:9223372036854775807", "01:1", "1:-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := eventsource.ParsePosition(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("ParsePosition(%q) = %v, which prints as %q", s, p, p.String())
		}
	})
}

func TestExpectedVersionMatches(t *testing.T) {
	for _, tc := range []struct {
		e       eventsource.ExpectedVersion
		version int64
		want    bool
	}{
		{eventsource.AnyVersion, 0, true}, {eventsource.AnyVersion, 7, true},
		{eventsource.StreamExists, 0, false}, {eventsource.StreamExists, 1, true},
		{eventsource.NoStream, 0, true}, {eventsource.NoStream, 1, false},
		{3, 3, true}, {3, 2, false},
	} {
		if got := tc.e.Matches(tc.version); got != tc.want {
			t.Errorf("%v.Matches(%d) = %v", tc.e, tc.version, got)
		}
	}
	if eventsource.ExpectedVersion(-9).String() != "ExpectedVersion(-9)" || eventsource.NoStream.String() != "no stream" {
		t.Error("String")
	}
}

type counted struct{ N int }

func counterRepo(t *testing.T, s eventsource.Store, cfg eventsource.RepositoryConfig[int]) *eventsource.Repository[int, int, counted] {
	t.Helper()
	reg := eventsource.NewRegistry()
	eventsource.Register[counted](reg, "counted", 1)
	repo, err := eventsource.NewRepository(s, reg, eventsource.Decider[int, int, counted]{
		Decide: func(_ int, n int) ([]counted, error) { return []counted{{n}}, nil },
		Evolve: func(s int, e counted) int { return s + e.N },
	}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// lostAnswer commits appends and then reports ErrUnavailable the first
// times, as a store whose connection broke after the commit would.
type lostAnswer struct {
	*memory.Store
	lose atomic.Int32
}

func (s *lostAnswer) Append(ctx context.Context, a ...eventsource.StreamAppend) ([]eventsource.AppendResult, error) {
	res, err := s.Store.Append(ctx, a...)
	if err == nil && s.lose.Add(-1) >= 0 {
		return nil, eventsource.ErrUnavailable
	}
	return res, err
}

func TestRepositoryRetriesALostAnswerExactly(t *testing.T) {
	ctx := context.Background()
	s := &lostAnswer{Store: memory.New()}
	s.lose.Store(2)
	repo := counterRepo(t, s, eventsource.RepositoryConfig[int]{Backoff: broker.ConstantBackoff(time.Millisecond)})
	res, err := repo.Handle(ctx, "c-1", 5)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Append.Duplicate || res.Version != 1 || res.State != 5 || res.Attempts != 1 {
		t.Fatalf("result %+v", res)
	}
	n := 0
	for _, err := range s.ReadStream(ctx, "c-1", eventsource.ReadOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 1 {
		t.Fatalf("the stream holds %d events, want 1", n)
	}
	// Out of attempts, the error says the store is unavailable.
	s.lose.Store(10)
	if _, err := counterRepo(t, s, eventsource.RepositoryConfig[int]{MaxAttempts: 2, Backoff: broker.ConstantBackoff(time.Millisecond)}).
		Handle(ctx, "c-2", 1); !errors.Is(err, eventsource.ErrUnavailable) {
		t.Fatalf("after all attempts: %v", err)
	}
}

// conflicting refuses every append with a conflict.
type conflicting struct{ *memory.Store }

func (conflicting) Append(context.Context, ...eventsource.StreamAppend) ([]eventsource.AppendResult, error) {
	return nil, &eventsource.ConcurrencyError{StreamID: "c-1", Expected: 0, Actual: 1}
}

func TestRepositoryGivesUpAfterMaxAttempts(t *testing.T) {
	repo := counterRepo(t, conflicting{memory.New()}, eventsource.RepositoryConfig[int]{MaxAttempts: 3, Backoff: broker.ConstantBackoff(time.Millisecond)})
	_, err := repo.Handle(context.Background(), "c-1", 1)
	var ce *eventsource.ConcurrencyError
	if !errors.Is(err, eventsource.ErrTooManyAttempts) || !errors.As(err, &ce) || ce.Actual != 1 || !strings.Contains(err.Error(), "3 attempts") {
		t.Fatalf("Handle = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := repo.Handle(ctx, "c-1", 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Handle with a cancelled context = %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	s := memory.New()
	reg := eventsource.NewRegistry()
	d := eventsource.Decider[int, int, int]{Decide: func(int, int) ([]int, error) { return nil, nil }, Evolve: func(s, _ int) int { return s }}
	for name, f := range map[string]func() error{
		"nil store": func() error {
			_, err := eventsource.NewRepository(nil, reg, d, eventsource.RepositoryConfig[int]{})
			return err
		},
		"nil registry": func() error {
			_, err := eventsource.NewRepository(s, nil, d, eventsource.RepositoryConfig[int]{})
			return err
		},
		"no Decide": func() error {
			_, err := eventsource.NewRepository(s, reg, eventsource.Decider[int, int, int]{}, eventsource.RepositoryConfig[int]{})
			return err
		},
		"negative": func() error {
			_, err := eventsource.NewRepository(s, reg, d, eventsource.RepositoryConfig[int]{MaxAttempts: -1})
			return err
		},
		"bad backoff": func() error {
			_, err := eventsource.NewRepository(s, reg, d, eventsource.RepositoryConfig[int]{Backoff: broker.Backoff{Initial: -1}})
			return err
		},
		"reader nil": func() error { _, err := eventsource.NewReader(nil, reg, eventsource.ReaderConfig{}); return err },
		"reader batch": func() error {
			_, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{BatchSize: -1})
			return err
		},
		"reader policy": func() error {
			_, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{Undecodable: 7})
			return err
		},
		"reader nil handler": func() error {
			r, _ := eventsource.NewReader(s, reg, eventsource.ReaderConfig{})
			return r.Run(context.Background(), eventsource.Position{}, nil)
		},
	} {
		if err := f(); !errors.Is(err, eventsource.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
}

// flakyLog fails its first reads.
type flakyLog struct {
	*memory.Store
	fail atomic.Int32
}

func (f *flakyLog) ReadLog(ctx context.Context, q eventsource.LogQuery) (eventsource.Page, error) {
	if f.fail.Add(-1) >= 0 {
		return eventsource.Page{}, errors.New("connection reset")
	}
	return f.Store.ReadLog(ctx, q)
}

func TestReaderRunRetriesFailedReadsAndStopsOnHandlerErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := &flakyLog{Store: memory.New()}
	s.fail.Store(3)
	reg := eventsource.NewRegistry()
	eventsource.Register[counted](reg, "counted", 1)
	e, _ := reg.Encode(ctx, counted{1})
	if _, err := s.Append(ctx, eventsource.StreamAppend{StreamID: "x", Events: []eventsource.EventData{e}, Expected: eventsource.AnyVersion}); err != nil {
		t.Fatal(err)
	}
	r, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{Backoff: broker.ConstantBackoff(time.Millisecond), PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	got := 0
	err = r.Run(ctx, eventsource.Position{}, func(_ context.Context, b eventsource.Batch) error {
		got += len(b.Events)
		return stop
	})
	if !errors.Is(err, stop) || got != 1 || s.fail.Load() >= 0 {
		t.Fatalf("Run = %v after %d events (failures left %d)", err, got, s.fail.Load())
	}
}

func TestDecodeEmptyPayloadAndPointers(t *testing.T) {
	reg := eventsource.NewRegistry()
	eventsource.Register[counted](reg, "counted", 1)
	vs, err := reg.Decode(eventsource.Record{EventData: eventsource.EventData{Type: "counted", SchemaVersion: 1}})
	if err != nil || len(vs) != 1 || vs[0] != (counted{}) {
		t.Fatalf("empty payload: %v, %v", vs, err)
	}
	if name, v, ok := reg.TypeOf(counted{}); !ok || name != "counted" || v != 1 {
		t.Fatal("TypeOf")
	}
	if _, _, ok := reg.TypeOf(&counted{}); ok {
		t.Fatal("TypeOf a pointer")
	}
	if got := reg.Types(); len(got) != 4 || got[0] != "counted" || got[2] != eventsource.TypeStreamDeleted {
		t.Fatalf("Types = %v", got)
	}
}

func TestValidateStreamID(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		b := make([]byte, r.IntN(20))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		id := string(b)
		err := eventsource.ValidateStreamID(id)
		if err != nil && !errors.Is(err, eventsource.ErrInvalidStreamID) {
			t.Fatalf("%q: %v", id, err)
		}
	}
	if eventsource.CategoryOf("order-1-2") != "order" || eventsource.CategoryOf("plain") != "plain" || eventsource.Category("order") != "order-" {
		t.Fatal("categories")
	}
}

// Package fault is the one fault-injection seam of steadfast's crash tests.
//
// Library code names the few points where a test may make it behave as a
// crashed process would (stop without a final commit, leave a transaction
// open) and asks At whether to fail there; a test arms the points through
// the context it passes in (With). What a crash does is written in the
// test (an export_test.go), not in the library: the library only stops at
// the point with the injected error, the way it stops when the process
// dies.
//
// No production context carries an injector, so a point costs one context
// lookup; points sit where a call, a shutdown or a transaction begins, not
// in per-message loops (a loop looks the injector up once with From).
package fault

import "context"

// Injector decides, at the named point with the point's data, whether to
// fail there: a non-nil error is the fault.
type Injector func(point string, data any) error

type key struct{}

// With returns a copy of ctx that carries inj.
func With(ctx context.Context, inj Injector) context.Context {
	return context.WithValue(ctx, key{}, inj)
}

// From returns the injector ctx carries, or nil.
func From(ctx context.Context) Injector {
	inj, _ := ctx.Value(key{}).(Injector)
	return inj
}

// At returns the fault injected at point, or nil when ctx carries no
// injector or it lets the point pass.
func At(ctx context.Context, point string, data any) error {
	if inj := From(ctx); inj != nil {
		return inj(point, data)
	}
	return nil
}

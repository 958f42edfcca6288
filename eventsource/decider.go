package eventsource

// Decider is the behaviour of one kind of stream (an aggregate), as three
// pure functions over a state S, commands C and events E:
//
//   - Initial gives the state of a stream with no events;
//   - Decide turns a command into the events it causes, or an error when
//     the command is refused (the error is returned to the caller as it
//     is, and nothing is appended);
//   - Evolve applies one event to a state.
//
// The state of a stream is the left fold of Evolve over its events,
// starting from Initial. E is usually an interface that the stream's event
// types implement (a "sealed" marker method), or any; every event type must
// be registered in the Registry the Repository uses.
//
// Evolve must not modify the state it is given if S holds maps or slices
// that a snapshot or the caller may share; return a new state instead.
type Decider[S, C, E any] struct {
	// Initial returns the state of a new stream. Nil means S's zero value.
	Initial func() S
	// Decide returns the events cmd causes in state. Required.
	Decide func(state S, cmd C) ([]E, error)
	// Evolve returns state with event applied. Required.
	Evolve func(state S, event E) S
}

func (d Decider[S, C, E]) initial() S {
	if d.Initial == nil {
		var s S
		return s
	}
	return d.Initial()
}

// Fold applies events to state with Evolve, in order.
func (d Decider[S, C, E]) Fold(state S, events ...E) S {
	for _, e := range events {
		state = d.Evolve(state, e)
	}
	return state
}

// Package saga runs sagas: long-lived business transactions made of steps
// across services, each undone by a compensation when a later step fails.
// It is a library, not a server: the orchestrator (Engine) lives in your
// services and keeps its state in your database; there is no coordinator
// process to run and no external scheduler for timeouts.
//
// Two styles are supported:
//
//   - Orchestration: a typed, versioned Definition of steps, run by an
//     Engine that sends commands to participant services and applies their
//     replies, durably, across crashes and redeliveries.
//   - Choreography: services react to each other's events; Choreography
//     derives events that carry the flow's correlation, causation and trace,
//     and a Tracker puts each flow back together and flags flows that
//     stopped short of an end.
//
// # Defining a saga
//
//	def, err := saga.Define("order-fulfilment", 1,
//		saga.Step[Order]{Name: "reserve-inventory", Command: reserve, CompensationCommand: release},
//		saga.Step[Order]{Name: "charge-payment", Kind: saga.Pivot, Command: charge, OnReply: keepPaymentID},
//		saga.Step[Order]{Name: "ship", Kind: saga.Retriable, Command: ship},
//	)
//
// A step is local (Action, run inside the transaction that records the
// transition, so its effect commits exactly once with it) or remote
// (Command, a message to a participant answered by a correlated reply).
// Steps come in order: compensatable steps (each with an optional
// compensation), at most one pivot, then retriable steps. Before the pivot
// succeeded, a failing step makes the saga compensate the completed steps
// in reverse order; once it succeeded the saga only moves forward: a
// retriable step is retried and, past its limit, the instance parks for an
// operator. A step whose outcome is unknown (its reply never came, or the
// saga was cancelled while waiting) is compensated too: participants treat
// a compensation of an action they never performed as done, and never
// perform it afterwards (Participant does both). A pivot whose outcome is
// unknown is never compensated blindly: the instance parks.
//
// # Running it
//
//	eng, _ := saga.NewEngine(store, saga.Config{Subscriber: broker})
//	_ = eng.Register(def)
//	go eng.Run(ctx)                                        // replies, timers, operator requests
//	created, err := saga.Start(ctx, eng, def, orderID, order) // idempotent on orderID
//
// The Store is saga/postgres (production) or saga/memory (tests, examples).
// With PostgreSQL, commands leave through the transactional outbox
// (outbox/postgres) and an outbox.Relay publishes them; run one in the same
// processes.
//
// # Guarantees
//
//   - Every transition is one store transaction: the instance's new state,
//     its history events and the commands it sends (written to the outbox)
//     commit together or not at all. A crash anywhere leaves the instance
//     where the last commit put it; the reply or timer that was being
//     applied is applied again, once.
//   - Replies are deduplicated in the transaction of the transition they
//     cause (the reply's message ID is recorded in the history, unique per
//     instance). A reply that is not the awaited one (late after a timeout
//     or once compensation began, for an earlier attempt, for a finished
//     instance) is recorded in the history and otherwise ignored: it never
//     re-drives the saga.
//   - Any number of engines share a store. Transitions use optimistic
//     concurrency on the instance's revision: of two engines deciding on one
//     instance at once, one commits and the other rolls back, reloads the
//     instance in a fresh transaction and decides again. Timers are claimed
//     with FOR UPDATE SKIP LOCKED, so an instance is advanced by one engine
//     at a time and engines never wait for each other.
//   - Starting is idempotent on the caller-supplied ID: starting twice gives
//     one instance.
//   - Commands and replies are delivered at least once, in order per
//     instance (they are keyed by the instance ID unless a step sets
//     another key). Participant makes each participant's action and
//     compensation take effect exactly once in its own database.
//   - Transitions run in a context detached from the caller's cancellation
//     (bounded by Config.TransitionTimeout): cancelling a request or
//     stopping an engine never leaves half a compensation.
//
// # Timers, retries, deadlines
//
// A step's Timeout bounds the wait for its reply (default 30s); a timed-out
// attempt is sent again (a new command for the same step, which a
// Participant answers from its record if it already acted) until
// Retry.MaxAttempts, then the step fails. Failed attempts of local steps,
// retriable steps and compensations are retried after Retry.Backoff (the
// library's one backoff type, broker.Backoff). A Definition may carry a
// deadline (WithDeadline): an instance that has not passed its pivot by
// then is cancelled. All of these are durable timers: a wake-up time on
// the instance row, fired by whichever engine claims it first, woken by
// LISTEN/NOTIFY when due soon and found by polling (Config.PollInterval)
// otherwise.
//
// # Failures and operators
//
// A compensation that keeps failing is retried with its backoff and, past
// CompensationRetry.MaxAttempts, the instance is parked (StatusParked) with
// its whole history, a warning log, the steadfast.saga.parked metric and,
// with Config.ParkTopic, an event. So are a retriable step past its limit,
// a pivot whose outcome is unknown and a reply the step's OnReply rejected.
// Operators list and inspect instances (Store.List, LoadTimeline) and
// request a retry (the step or compensation is tried again), a skip (it
// counts as done: the operator did it by hand) or a cancel (a running
// instance before its pivot is compensated; a parked one is aborted) with
// Engine.Cancel, Engine.Retry, Engine.Skip or Store.Request; the
// steadfast-saga command (package sagacli) does the same from a shell.
// Requests wake the engines and are carried out by the next transition.
//
// # Versions
//
// Each instance records its definition's name and version and runs on that
// version to the end. To change a saga, define version N+1 and register it
// beside version N; Start new instances on N+1; drop N once Engine.Check
// (which Run calls first) no longer reports unfinished instances on it. Run
// refuses to start while unfinished instances use a version that is not
// registered (UnregisteredError lists them), unless
// Config.AllowUnregistered.
//
// # Bad input
//
// A reply without a usable saga ID or message ID, or for an instance that
// does not exist, is rejected with an error matching ErrMalformedReply or
// ErrNotFound and dlq.ErrPermanent, so dead-letter middleware sets it aside
// at once. A reply naming an instance but otherwise malformed is recorded
// in that instance's history as rejected and acknowledged. Text from the
// wire is cut to MaxReasonBytes and cleaned before it is stored. A command
// a Participant cannot parse is rejected likewise (ErrMalformedCommand).
//
// # Observability
//
// Spans (OpenTelemetry API; global providers unless configured):
// "saga.start <type>", "saga.step <step>" and "saga.compensate <step>" for
// each attempt, "saga.reply <step>" for each reply, "saga.participant
// <step>" in participants; commands carry the step span's W3C trace
// context and replies carry the participant's, so one trace follows an
// instance across services. Metrics: started, completed, compensated,
// parked and aborted instances, unfinished instances by status (a gauge),
// step latency, conflicts, duplicate and rejected replies (see the Metric
// constants). Definition.Mermaid draws a definition; LoadTimeline returns an
// instance's history (steps, commands, replies, timings, errors) and
// renders it as text.
//
// # Choreography
//
// Choreography.Begin and Choreography.Next build events that carry the
// flow's correlation-id, name the event they react to in causation-id, and
// continue the trace. A Tracker, subscribed to the flow's topics, records
// every event in a FlowStore (one timeline per correlation ID), knows each
// flow's terminal events, reports flows that did not reach one within their
// deadline (Tracker.Stuck: where they stopped, and since when), and draws
// one flow as a Mermaid sequence diagram (FlowTimeline.Mermaid).
//
// # Costs
//
// On PostgreSQL a transition costs one transaction of five statements
// (BEGIN, a read, an update that also appends the history, the outbox
// insert, COMMIT), plus two per local step (a savepoint and its release); a
// participant's command, one transaction of five (BEGIN, record lock,
// record write, outbox insert, COMMIT) plus its own work; and the relay
// publishes and deletes each outbox row. A 3-step saga is thus about seven
// transactions and six outbox rows; see saga/postgres for the measured
// figures and the relay settings that matter at high rates.
package saga

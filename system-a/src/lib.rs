//! `system-a`: scenario 1, the requesting side. It takes a task over gRPC,
//! hands it to system-b through RabbitMQ, and answers with system-b's
//! result the moment system-b writes it to the task's znode, through a
//! watch, without polling.
//!
//! # Layout
//!
//! - [`server`]: [`server::run`] wires everything and serves gRPC on a
//!   listener the caller bound; the `Tasks` service hands each call on.
//! - [`edge`]: every decision over plain values, unit-tested without a
//!   server: request checks, the task a request id names, whether a retry
//!   is the same request, failures as gRPC codes, Watch admission.
//! - [`submit`]: the Submit flow (accept → outbox → publish → wait), and
//!   why a request id makes it idempotent.
//! - [`outbox`]: the transactional outbox: an accepted task reaches
//!   RabbitMQ even if the broker is away or system-a dies before
//!   publishing it.
//! - [`publisher`]: the one confirm-mode channel, kept open across broker
//!   outages, and the one way a task is published.
//! - [`watch`]: Watch streams, one shared watcher per task, limited.
//! - [`metrics`]: system-a's Prometheus metrics (Submits by outcome,
//!   their latency, the outbox), served on `--metrics-listen` with the
//!   common ones (`servicekit::metrics`).
//! - [`reaper`]: deletes finished tasks (and their request ids) after the
//!   retention.
//! - [`sightings`]: how long a znode has been there, on this process's
//!   monotonic clock (never its wall clock against the server's).
//! - [`client`]: `system-a submit`, the shell's client.
//! - [`proto`]: the generated gRPC types, shared with clients and tests.
//!
//! # The path of a Submit
//!
//! 1. [`edge::check_submit`]: entity, op and request id checked against
//!    the contract's name rules; the task id is fresh, or derived from
//!    the request id ([`edge::task_id_for`]).
//! 2. `Submitter::claim` (request id only): records the request under
//!    its key, or recognises a retry of it ([`edge::same_request`]).
//! 3. `Submitter::accept`: `<root>/outbox/<id>`, then `<root>/tasks/<id>`
//!    (pending) with its watch armed. The task is now accepted.
//! 4. `Submitter::publish` → [`publisher::publish`]; on a confirm,
//!    [`outbox::confirmed`] deletes the entry, else [`outbox::drain`]
//!    publishes it later. A confirm missing for
//!    [`publisher::CONFIRM_LIMIT`] also makes [`publisher::keep_channel`]
//!    leave that broker node for the next (a node that hangs closes
//!    nothing).
//! 5. `Submitter::wait`: the watch fires on system-b's write;
//!    [`edge::answer`] turns the node into the reply.
//!
//! A failure on the way is answered by [`edge::coordination_failure`],
//! which says whether the task was not accepted, or may still run.

pub mod client;
pub mod edge;
pub mod metrics;
pub mod outbox;
pub mod publisher;
pub mod reaper;
pub mod server;
pub mod sightings;
pub mod submit;
pub mod watch;

/// system-a's gRPC API, generated, so clients (the `submit` subcommand,
/// the end-to-end tests) use the same types as the server.
pub mod proto {
    tonic::include_proto!("tasks.v1");
}

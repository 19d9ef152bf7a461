//! Failure drills: break the running system the way production breaks,
//! drive the scenario that shows the effect, and judge the promise.
//!
//! `scripts/drill.sh NAME` runs one against the system `scripts/run.sh`
//! started; `scripts/drill.sh --compose [--scale-out] NAME` against
//! `docker compose up`. Each prints its evidence as it goes and ends with
//! one `VERDICT: PASS …` or `VERDICT: FAIL …` line; it exits non-zero when
//! a promise broke. Every piece of evidence is read where any operator
//! could read it: the replies system-a gives its clients, the registry
//! (`/services`, where each instance reports the config it applied and the
//! writes a fence refused, `servicekit::status`), the lock and election
//! queues, and the ha-workers' journal.
//!
//! # Layout
//! - [`system`]: where the system runs and how to hurt it: kill -9,
//!   SIGSTOP/SIGCONT, a broker outage, the coordination server's restart;
//!   the same verbs for processes under `scripts/run.sh` and for
//!   containers under compose.
//! - [`observe`]: what the tree says, read as the operator: registrations
//!   and their status, lock holders, the active worker, fencing tokens.
//! - [`workload`]: tasks submitted through system-a's gRPC API, as a
//!   client would, with request ids so a retry is never a second task.
//! - [`report`]: evidence lines and the verdict.
//! - [`drills`]: one module per drill; each says what it breaks, what it
//!   drives and which promise it judges.

pub mod drills;
pub mod observe;
pub mod report;
pub mod system;
pub mod workload;

pub use drills::{run, Drill};

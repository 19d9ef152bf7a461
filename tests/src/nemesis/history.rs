//! What happened in a run: every client operation with the instant it was
//! invoked and the instant its answer came (or none), and every fault with
//! its start and end. The checkers read nothing else of the run but this
//! and the durable state the system leaves (the store, the journal, the
//! tree), so a history saved with its seed is the whole case.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::linearizability as lin;

/// How a task ended for the client that submitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Answered "done": the entity's value after the task, and the lock
    /// token (zxid) it was applied under.
    Done { value: i64, token: i64, worker: String },
    /// Refused, or answered with another status: the task was not applied
    /// (or the system said it cannot tell, which a checker treats as
    /// "maybe").
    Refused(String),
    /// No answer within the client's patience: maybe applied.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub enum Entry {
    /// A Submit of "add 1" to `entity`, retried by its client with the
    /// same request id until it had an answer.
    Task {
        client: usize,
        entity: String,
        request_id: String,
        invoked: Instant,
        completed: Instant,
        outcome: TaskOutcome,
    },
    /// One operation on register `register` (a znode's data and version).
    Register {
        client: usize,
        register: usize,
        op: lin::Op,
        outcome: lin::Outcome,
        invoked: Instant,
        returned: Option<Instant>,
    },
    /// A write of the services' live config; `version` is its mzxid, what
    /// each instance reports once it has applied it.
    Config { version: i64, body: String, at: Instant },
    /// A fault the nemesis caused, from its start to its heal.
    Fault { what: String, started: Instant, healed: Instant },
}

/// The history of one run, appended to by every client and the nemesis.
pub struct History {
    pub start: Instant,
    entries: Mutex<Vec<Entry>>,
}

impl Default for History {
    fn default() -> Self {
        History { start: Instant::now(), entries: Mutex::new(Vec::new()) }
    }
}

impl History {
    pub fn push(&self, e: Entry) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Milliseconds since the run started.
    pub fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_millis() as u64
    }

    /// One JSON object per line, oldest invocation first: kept beside the
    /// verdict so a violation can be read without running anything again.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut entries = self.entries();
        entries.sort_by_key(|e| match e {
            Entry::Task { invoked, .. } | Entry::Register { invoked, .. } => *invoked,
            Entry::Config { at, .. } => *at,
            Entry::Fault { started, .. } => *started,
        });
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for e in entries {
            let line = match e {
                Entry::Task { client, entity, request_id, invoked, completed, outcome } => serde_json::json!({
                    "type": "task", "client": client, "entity": entity, "request_id": request_id,
                    "invoked_ms": self.ms(invoked), "completed_ms": self.ms(completed), "outcome": format!("{outcome:?}"),
                }),
                Entry::Register { client, register, op, outcome, invoked, returned } => serde_json::json!({
                    "type": "register", "client": client, "register": register, "op": format!("{op:?}"),
                    "outcome": format!("{outcome:?}"), "invoked_ms": self.ms(invoked),
                    "returned_ms": returned.map(|t| self.ms(t)),
                }),
                Entry::Config { version, body, at } => serde_json::json!({
                    "type": "config", "version": version, "body": body, "at_ms": self.ms(at),
                }),
                Entry::Fault { what, started, healed } => serde_json::json!({
                    "type": "fault", "what": what, "started_ms": self.ms(started), "healed_ms": self.ms(healed),
                }),
            };
            writeln!(out, "{line}")?;
        }
        out.flush()
    }
}

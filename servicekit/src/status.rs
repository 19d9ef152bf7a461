//! What an instance says about itself, in its registration node.
//!
//! The registry (`/services/<service>/<instance>`) already answers "who is
//! alive"; with a status it also answers "running which config" and "was
//! any of its writes refused by a fence". Anyone can read it with any
//! ZooKeeper client: the dashboard draws it on its timeline, and the drills
//! (`scripts/drill.sh`) read their evidence from it, the same way on the
//! coordinator, on an ensemble and in containers.
//!
//! ```json
//! {"pid": 4242, "queue": "tasks",
//!  "config_version": 4294967321,
//!  "fenced": {"count": 1, "what": "acct-1", "token": "8589934610@0", "newer": "8589934644@0"}}
//! ```
//!
//! - `config_version`: the mzxid of the `/config/<service>` write this
//!   instance applied last ([`Status::config_applied`]). A zxid never
//!   repeats, so "every instance shows V" means every instance applied
//!   that very write.
//! - `fenced`: how many of this instance's writes a store or journal
//!   refused by fencing token, and the last one: what it was writing, its
//!   token and the newer token the resource had seen
//!   ([`Status::fenced`]).
//!
//! The node is written only when something here changes (a config change,
//! a refusal: rare events), never per task.

use std::fmt::Display;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tokio::sync::watch;

/// A live status document; clones share it.
#[derive(Clone)]
pub struct Status {
    fields: Arc<Mutex<Map<String, Value>>>,
    published: Arc<watch::Sender<Vec<u8>>>,
}

impl Status {
    /// A status starting with `meta` (what does not change: pid, queue),
    /// which must be a JSON object; anything else starts empty.
    pub fn new(meta: Value) -> Status {
        let fields = match meta {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let bytes = Value::Object(fields.clone()).to_string().into_bytes();
        let (tx, _) = watch::channel(bytes);
        Status { fields: Arc::new(Mutex::new(fields)), published: Arc::new(tx) }
    }

    /// The document as it is now, and every change after: what the
    /// registration writes into the node (`zk_recipes::registry::register_live`).
    pub fn subscribe(&self) -> watch::Receiver<Vec<u8>> {
        self.published.subscribe()
    }

    /// The document now, as JSON.
    pub fn snapshot(&self) -> Value {
        Value::Object(self.fields.lock().map(|f| f.clone()).unwrap_or_default())
    }

    /// Sets one field and publishes the document if it changed.
    pub fn set(&self, key: &str, value: Value) {
        self.update(|fields| {
            fields.insert(key.to_string(), value);
        });
    }

    /// This instance applied the config write `mzxid`.
    pub fn config_applied(&self, mzxid: i64) {
        self.set("config_version", json!(mzxid));
    }

    /// A store or journal refused this instance's write to `what` with
    /// token `ours`, having seen `newer`: the fence did its job, and this
    /// is the evidence anyone can read.
    pub fn fenced(&self, what: &str, ours: impl Display, newer: impl Display) {
        self.update(|fields| {
            let count = fields.get("fenced").and_then(|f| f["count"].as_u64()).unwrap_or(0) + 1;
            fields.insert(
                "fenced".into(),
                json!({"count": count, "what": what, "token": ours.to_string(), "newer": newer.to_string()}),
            );
        });
    }

    fn update(&self, change: impl FnOnce(&mut Map<String, Value>)) {
        // A poisoned lock means a panic elsewhere mid-update; the status is
        // evidence, not state the service needs, so it goes on without it.
        let Ok(mut fields) = self.fields.lock() else { return };
        change(&mut fields);
        let bytes = Value::Object(fields.clone()).to_string().into_bytes();
        self.published.send_if_modified(|cur| {
            let changed = *cur != bytes;
            *cur = bytes;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_counts_and_keeps_the_last_one() {
        let status = Status::new(json!({"pid": 7}));
        let mut rx = status.subscribe();
        status.fenced("acct-1", "33@0", "34@0");
        status.fenced("acct-2", "40@0", "41@0");
        let doc: Value = serde_json::from_slice(&rx.borrow_and_update()).expect("JSON");
        assert_eq!(doc["pid"], 7);
        assert_eq!(doc["fenced"], json!({"count": 2, "what": "acct-2", "token": "40@0", "newer": "41@0"}));
    }

    #[test]
    fn an_unchanged_field_publishes_nothing() {
        let status = Status::new(json!({}));
        status.config_applied(12);
        let mut rx = status.subscribe();
        rx.borrow_and_update();
        status.config_applied(12);
        assert!(!rx.has_changed().expect("open"), "the same config version is not a change");
        status.config_applied(13);
        assert!(rx.has_changed().expect("open"));
    }
}

//! Who each service is to RabbitMQ, and what it may do there.
//!
//! # Users
//! Two broker users, one per service that touches the task queue, each
//! with the least it needs (the table, and why, is in docs/security.md,
//! "Broker identities"):
//!
//! | user       | configure | write           | read        |
//! |------------|-----------|-----------------|-------------|
//! | `system-a` | none      | `^<queue>\.in$` | none        |
//! | `system-b` | none      | `^<queue>\.in$` | `^<queue>$` |
//!
//! Neither may configure anything: the topology is provisioned once, from
//! the definitions this module writes, and the services only check that it
//! is there (a passive declare, which RabbitMQ lets any user of the vhost
//! do). Neither may read the dead-letter queue, and neither may publish
//! through the default exchange: a right to write `amq.default` is a right
//! to put a message into *every* queue of the vhost, the dead-letter queue
//! (whose messages an operator replays) included. Both publish through
//! `<queue>.in`, a direct exchange bound to the task queue alone.
//!
//! `guest` is used by no service: only by setup (`rabbitmqctl` needs no
//! user at all) and by the tests, as the observer and the attacker.
//!
//! # Files
//! [`generate`] makes one deployment's set: a credentials file per service
//! (`broker-<service>.cred`, `auth = user:password`, the format of the
//! ZooKeeper credentials files' `auth` line, read with
//! [`crate::auth::ZkAuth::credentials_from_file`]) and the broker's
//! definitions (`broker-definitions.json`: users with salted password
//! hashes, permissions, queues, exchanges, bindings), which
//! `rabbitmqctl import_definitions` loads into a running broker and
//! RabbitMQ's `load_definitions` setting loads at boot.

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::auth::{SYSTEM_A, SYSTEM_B};

/// The services that have a broker user, in the order files list them.
pub const ROLES: [&str; 2] = [SYSTEM_A, SYSTEM_B];

/// The vhost everything lives in (`%2f` in a URL).
pub const VHOST: &str = "/";

/// The exchange both services publish tasks through: direct, durable,
/// bound to `queue` (routing key `queue`) and nothing else.
pub fn task_exchange(queue: &str) -> String {
    format!("{queue}.in")
}

/// The fanout exchange the task queue dead-letters to.
pub fn dead_letter_exchange(queue: &str) -> String {
    format!("{queue}.dlx")
}

/// The queue where rejected tasks wait for an operator.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// The file name of `role`'s broker credentials.
pub fn credentials_file_name(role: &str) -> String {
    format!("broker-{role}.cred")
}

/// The file name of the broker definitions.
pub const DEFINITIONS_FILE: &str = "broker-definitions.json";

/// RabbitMQ's three permission regexes of one user in one vhost: which
/// resources (queues and exchanges alike, by name) it may configure
/// (declare, delete), write (publish to an exchange, bind a queue) and
/// read (consume from a queue, bind from an exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A regex that matches no resource: RabbitMQ's way of saying "none".
/// (Every real resource has a non-empty name; the default exchange is
/// `amq.default` to the permission check.)
pub const NOTHING: &str = "^$";

/// What `role` may do on the broker around the task queue `queue`;
/// `None` for a role that has no broker user.
pub fn permissions(role: &str, queue: &str) -> Option<Permissions> {
    let only = |name: &str| format!("^{}$", regex_escape(name));
    match role {
        // Publishes tasks: write on the exchange into the task queue, and
        // nothing to read (it cannot consume, or peek at, any queue).
        SYSTEM_A => {
            Some(Permissions { configure: NOTHING.into(), write: only(&task_exchange(queue)), read: NOTHING.into() })
        }
        // Consumes the task queue; puts a fresh copy of a task back after
        // a transient fault (not a requeue, which the quorum queue's
        // delivery limit counts) and after a store fault with its attempt
        // count, through the same exchange system-a uses. Not the dead-letter queue: what waits there is for an
        // operator to look at.
        SYSTEM_B => {
            Some(Permissions { configure: NOTHING.into(), write: only(&task_exchange(queue)), read: only(queue) })
        }
        _ => None,
    }
}

/// `name` with every regex metacharacter escaped, so a queue named
/// `tasks.v2` grants `tasks.v2` and not `tasksXv2`.
pub fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A password hashed the way RabbitMQ's `rabbit_password_hashing_sha256`
/// stores it: `base64(salt ++ sha256(salt ++ utf8(password)))` with a
/// 4-byte salt. The broker recomputes it from the password a client sends.
pub fn password_hash(password: &str, salt: [u8; 4]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut stored = salt.to_vec();
    stored.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(stored)
}

/// Whether `password` is the one `hash` (as [`password_hash`] writes it)
/// was made from.
pub fn password_matches(password: &str, hash: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else { return false };
    let Some((salt, _)) = raw.split_first_chunk::<4>() else { return false };
    password_hash(password, *salt) == hash
}

/// The user name of `role` in a deployment whose users are prefixed with
/// `prefix` (empty for one deployment per broker; the tests, which share
/// one broker, use one prefix per queue).
pub fn user_name(prefix: &str, role: &str) -> String {
    format!("{prefix}{role}")
}

/// One deployment's broker identities: what [`generate`] returns.
pub struct Generated {
    /// `(file name, text)` of each service's credentials file: secret.
    pub credentials: Vec<(String, String)>,
    /// The broker definitions (users with password hashes, permissions,
    /// topology) as JSON text.
    pub definitions: String,
}

/// Fresh users for the services of the task queue `queue`, with 256-bit
/// random passwords, and the definitions that create them, their
/// permissions and the queue's topology. What `zkctl
/// gen-broker-credentials` writes.
pub fn generate(queue: &str, user_prefix: &str) -> Generated {
    let mut credentials = Vec::new();
    let mut users = Vec::new();
    let mut permissions_json = Vec::new();
    for role in ROLES {
        let user = user_name(user_prefix, role);
        // 256 bits from the OS-seeded CSPRNG, URL-safe base64: nothing to
        // guess, and nothing a shell or a URL would mangle.
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let hash = password_hash(&password, rand::random::<[u8; 4]>());
        credentials.push((
            credentials_file_name(role),
            format!(
                "# RabbitMQ credentials of `{role}` for the task queue `{queue}`. Secret: keep it mode 0600.\n\
                 auth = {user}:{password}\n"
            ),
        ));
        // No tags: no management UI, no policies, no administration.
        users.push(json!({
            "name": user,
            "password_hash": hash,
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": ""
        }));
        if let Some(p) = permissions(role, queue) {
            permissions_json.push(json!({
                "user": user, "vhost": VHOST,
                "configure": p.configure, "write": p.write, "read": p.read
            }));
        }
    }
    let definitions = json!({
        "users": users,
        // A broker that loads definitions at boot creates no default vhost
        // (and no guest): the definitions must name it.
        "vhosts": [{"name": VHOST}],
        "permissions": permissions_json,
        "queues": topology_queues(queue),
        "exchanges": topology_exchanges(queue),
        "bindings": topology_bindings(queue),
    });
    // A Value always serialises; the fallback is never taken.
    let definitions = serde_json::to_string_pretty(&definitions).unwrap_or_default() + "\n";
    Generated { credentials, definitions }
}

/// A fresh Erlang cookie for the nodes of one RabbitMQ cluster: the
/// shared secret with which Erlang nodes (and `rabbitmqctl`) authenticate
/// to each other. Whoever holds it can run any code on every node, so it
/// is as secret as a password. 40 uppercase letters from the OS-seeded
/// CSPRNG (about 188 bits), the alphabet RabbitMQ's own generated cookies
/// use: an Erlang atom that no shell, YAML or config file mangles.
pub fn generate_erlang_cookie() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..40).map(|_| char::from(b'A' + rng.random_range(0..26u8))).collect()
}

/// How many times RabbitMQ hands one message out before it dead-letters
/// it instead: the bound on a message whose handling kills its consumer
/// (a crash, an OOM, a channel closed mid-task), which no header a worker
/// writes can count, since the worker never gets to write it. Every return
/// counts (a nack with requeue, and in RabbitMQ 3.10 also a consumer whose
/// channel died), so system-b never requeues a task it merely could not
/// finish yet: it puts a fresh copy back instead (`x-attempts` unchanged),
/// and a task that waits out a coordination-server outage is not
/// dead-lettered for it. 20 leaves room for that many broker fail-overs
/// under one message and still ends a crash loop within seconds.
pub const DELIVERY_LIMIT: i64 = 20;

/// The queue type both queues are declared with: quorum queues, replicated
/// by Raft over the cluster's nodes, confirm a publish once a majority of
/// them has it, and lose nothing while a majority lives. On one node they
/// cost a little throughput over classic queues (BENCHMARKS.md) and keep
/// every other promise.
pub const QUEUE_TYPE: &str = "quorum";

/// The task queue, durable, dead-lettering to `<queue>.dlx`; and the
/// dead-letter queue. Both are quorum queues. RabbitMQ refuses a later
/// declaration of the same queue with other arguments, and
/// `import_definitions` silently keeps a queue that exists with another
/// type, so `scripts/rabbitmq.sh import` checks the type after the import
/// and says how to migrate a classic one.
///
/// Dead-lettering from a quorum queue is at-most-once by default: the
/// message leaves the task queue before the dead-letter queue has it, and
/// a dead-letter queue that is away (its leader's node down) loses it. A
/// task dead-lettered is a task an operator must see, so the task queue
/// uses `at-least-once` dead-lettering: the message stays in the task
/// queue (not delivered again) until the dead-letter queue confirms it.
/// RabbitMQ takes that strategy only with `x-overflow: reject-publish`
/// (with `drop-head` it falls back to at-most-once); with no length limit
/// set, the overflow rule never rejects anything.
fn topology_queues(queue: &str) -> Value {
    json!([
        {"name": queue, "vhost": VHOST, "durable": true, "auto_delete": false,
         "arguments": {
            "x-queue-type": QUEUE_TYPE,
            "x-dead-letter-exchange": dead_letter_exchange(queue),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": DELIVERY_LIMIT,
         }},
        {"name": dead_letter_queue(queue), "vhost": VHOST, "durable": true, "auto_delete": false,
         "arguments": {"x-queue-type": QUEUE_TYPE}}
    ])
}

fn topology_exchanges(queue: &str) -> Value {
    json!([
        {"name": task_exchange(queue), "vhost": VHOST, "type": "direct", "durable": true,
         "auto_delete": false, "internal": false, "arguments": {}},
        {"name": dead_letter_exchange(queue), "vhost": VHOST, "type": "fanout", "durable": true,
         "auto_delete": false, "internal": false, "arguments": {}}
    ])
}

/// `<queue>.in` → `<queue>` (routing key `<queue>`, what the services
/// publish with), `<queue>.dlx` → `<queue>.dlq`.
fn topology_bindings(queue: &str) -> Value {
    json!([
        {"source": task_exchange(queue), "vhost": VHOST, "destination": queue,
         "destination_type": "queue", "routing_key": queue, "arguments": {}},
        {"source": dead_letter_exchange(queue), "vhost": VHOST, "destination": dead_letter_queue(queue),
         "destination_type": "queue", "routing_key": "", "arguments": {}}
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ZkAuth;

    #[test]
    fn the_hash_is_rabbitmqs() {
        // Computed independently with the shell:
        // (printf '\x01\x02\x03\x04'; printf '\x01\x02\x03\x04secret' | openssl dgst -sha256 -binary) | base64
        let hash = password_hash("secret", [1, 2, 3, 4]);
        assert_eq!(hash, "AQIDBDB9kM21iEUzN1lZ+6VReCsdNqS0sERdAQTcY6Xs3PMz");
        assert!(password_matches("secret", &hash));
        assert!(!password_matches("Secret", &hash));
        assert!(!password_matches("secret", "not base64!"));
        assert!(!password_matches("secret", "AQID"), "shorter than a salt");
    }

    #[test]
    fn regexes_match_only_the_named_resource() {
        assert_eq!(regex_escape("tasks.v2"), r"tasks\.v2");
        assert_eq!(regex_escape("a+b(c)|d"), r"a\+b\(c\)\|d");
        let a = permissions(SYSTEM_A, "tasks").expect("system-a has a user");
        assert_eq!(a, Permissions { configure: "^$".into(), write: r"^tasks\.in$".into(), read: "^$".into() });
        let b = permissions(SYSTEM_B, "tasks").expect("system-b has a user");
        assert_eq!(b, Permissions { configure: "^$".into(), write: r"^tasks\.in$".into(), read: "^tasks$".into() });
        assert_eq!(permissions("dashboard", "tasks"), None);
    }

    #[test]
    fn generated_definitions_hold_each_password_and_the_topology() {
        let g = generate("jobs", "t1.");
        let defs: Value = serde_json::from_str(&g.definitions).expect("JSON");
        assert_eq!(g.credentials.len(), 2);
        for (role, (file, text)) in ROLES.iter().zip(&g.credentials) {
            assert_eq!(file, &format!("broker-{role}.cred"));
            let path = std::env::temp_dir().join(format!("{}-{}", rand::random::<u64>(), file));
            std::fs::write(&path, text).expect("write");
            let creds = ZkAuth::credentials_from_file(&path).expect("the file parses");
            let _ = std::fs::remove_file(&path);
            assert_eq!(creds.user(), format!("t1.{role}"));
            let user = defs["users"]
                .as_array()
                .and_then(|u| u.iter().find(|u| u["name"] == creds.user()))
                .expect("the user is defined");
            assert_eq!(user["hashing_algorithm"], "rabbit_password_hashing_sha256");
            assert!(password_matches(creds.password(), user["password_hash"].as_str().expect("hash")));
            assert!(!text.is_empty() && !g.definitions.contains(creds.password()), "no password in definitions");
        }
        let names = |key: &str| -> Vec<String> {
            defs[key].as_array().expect(key).iter().map(|v| v["name"].as_str().unwrap_or("").to_string()).collect()
        };
        assert_eq!(names("queues"), ["jobs", "jobs.dlq"]);
        assert_eq!(names("exchanges"), ["jobs.in", "jobs.dlx"]);
        assert_eq!(defs["queues"][0]["arguments"]["x-dead-letter-exchange"], "jobs.dlx");
        assert_eq!(defs["queues"][0]["arguments"]["x-queue-type"], "quorum");
        assert_eq!(defs["queues"][0]["arguments"]["x-dead-letter-strategy"], "at-least-once");
        assert_eq!(defs["queues"][0]["arguments"]["x-overflow"], "reject-publish");
        assert_eq!(defs["queues"][0]["arguments"]["x-delivery-limit"], DELIVERY_LIMIT);
        assert_eq!(defs["queues"][1]["arguments"]["x-queue-type"], "quorum");
        assert_eq!(defs["permissions"][1]["read"], "^jobs$");
        // Two generations never share a password.
        let again = generate("jobs", "t1.");
        assert_ne!(again.credentials[0].1, g.credentials[0].1);
    }
}

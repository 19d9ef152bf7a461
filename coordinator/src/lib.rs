//! The coordination server: a single-node server that speaks the Apache
//! ZooKeeper client protocol.
//!
//! # The path of a request
//!
//! ```text
//!  socket ─► conn (read loop) ─► ops::session::handshake     first frame
//!                 │
//!                 ├─► admission (globalOutstandingLimit)
//!                 ├─► ops::process ─► read  ─► tree (read lock) ───────┐
//!                 │                 └► write ─► committer              │ reply queued
//!                 │                      check → prep → apply → log    │ under the lock
//!                 │                      → watches fire → notify ──────┤
//!                 └◄── conn (write loop) ◄── waits for the log's fsync ◄┘
//! ```
//!
//! # The modules, top layer first
//!
//! Each module uses only modules below it, and the files of a module that
//! is a directory (`tree/`, `ops/`) do the same among themselves
//! (`tests/layers.rs` fails on a cycle), so they can be read bottom up.
//!
//! | module | what it owns | ZooKeeper's counterpart |
//! |---|---|---|
//! | [`server`] | the accept loop, the background duties' timers (expiry, reaping, snapshots, shedding unread replies), shutdown | `ServerCnxnFactory` |
//! | `admin`, `grpc`, `fourlw` | the admin listener (HTTP and gRPC), four-letter words | `AdminServer`, `FourLetterCommands` |
//! | `conn` | one task pair per socket: framing, admission control, the reply writer | `NIOServerCnxn` |
//! | [`ops`] | what each request does: one handler per operation; the session lifecycle ([`ops::session`]: handshake, refusal, closeSession); what the server ends by the clock ([`ops::expiry`]: idle sessions, empty containers, TTL nodes) | `FinalRequestProcessor`, `ZooKeeperServer`, `ContainerManager` |
//! | [`core`] | the shared state and the ordering invariant; orders txns and delivers their watch events | `ZooKeeperServer`'s state |
//! | `committer` | the tree lock, and the only way the tree changes: check, prep, apply, log | `SyncRequestProcessor` and the commit path |
//! | `clients` | the registry of open connections, their queues and counters | `ServerCnxn` |
//! | [`session`] | the session table: ids (and [`session::SessionId`], how one is printed), passwords, liveness, deadlines | `SessionTrackerImpl` |
//! | [`prep`] | validation of a write: request in, txn out | `PrepRequestProcessor` |
//! | [`storage`] | the write-ahead log, group commit, snapshots on disk, recovery | `FileTxnSnapLog` |
//! | [`watch`] | watches and who gets which event | `WatchManager` |
//! | [`tree`] | the znodes, applying txns, the snapshot codec (its files form layers too: node → arena → `DataTree` → apply, snapshot) | `DataTree` |
//! | [`txn`] | the transaction records the log holds | `txn` jute records |
//! | [`acl`], [`path`] | ACL checks and digest identities (computed by zk-wire's `auth`, shared with clients); path rules | `PrepRequestProcessor` helpers |
//! | [`stats`], `frames` | counters and summaries; reply frames from zk-wire records | `ServerStats` |
//! | [`config`], [`token`] | the settings, from flags, environment and zoo.cfg; the admin token | `ServerConfig` |
//! | `lock` | the lock order (tree → sessions → watches → connections), checked in debug builds | |
//! | `conn_id` | `ConnId`: the registry mints it, sessions and watches name connections by it | |
//!
//! The ordering invariant that makes replies and watch events come in the
//! order ZooKeeper promises is explained in [`core`].
//!
//! # Embedding
//!
//! Embed it as `mini-redis` embeds its server: bind a listener yourself (port
//! 0 in tests), hand it to [`run`] with a shutdown future, and read the real
//! address off the listener.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let config = coordinator::Config::for_tests();
//! tokio::spawn(coordinator::run(listener, config, async { /* never */ std::future::pending().await }));
//! println!("serving ZooKeeper clients on {addr}");
//! # Ok(()) }
//! ```

pub mod acl;
mod admin;
mod clients;
mod committer;
pub mod config;
mod conn;
mod conn_id;
pub mod core;
mod fourlw;
mod frames;
mod grpc;
mod lock;
pub mod ops;
pub mod path;
pub mod prep;
pub mod server;
pub mod session;
pub mod stats;
pub mod storage;
pub mod token;
pub mod tree;
pub mod txn;
pub mod watch;

pub use config::{Args, Config, ConfigError};

pub use server::{run, serve};

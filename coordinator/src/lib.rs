//! The coordination server: a single-node server that speaks the Apache
//! ZooKeeper client protocol.
//!
//! # The path of a request
//!
//! ```text
//!  socket ─► conn (read loop) ─► session::handshake        first frame
//!                 │
//!                 ├─► admission (globalOutstandingLimit)
//!                 ├─► ops::process ─► ops::read   ─► tree (read lock) ─┐
//!                 │                 └► ops::write ─► committer         │ reply queued
//!                 │                      check → prep → apply → log    │ under the lock
//!                 │                      → watches fire → notify ──────┤
//!                 └◄── conn (write loop) ◄── waits for the log's fsync ◄┘
//! ```
//!
//! # The modules, in the order a request meets them
//!
//! | module | what it owns | ZooKeeper's counterpart |
//! |---|---|---|
//! | [`server`] | the accept loop, background duties (expiry, reaping, snapshots), shutdown | `ServerCnxnFactory`, `ContainerManager` |
//! | `conn` | one task pair per socket: framing, admission control, the reply writer; the registry of open connections | `NIOServerCnxn` |
//! | [`session`] | the handshake, the session table, expiry and closeSession | `SessionTrackerImpl` |
//! | `ops` | one handler per operation, answering with zk-wire's typed records | `FinalRequestProcessor` |
//! | [`prep`] | validation of a write: request in, txn out | `PrepRequestProcessor` |
//! | `committer` | the tree lock, and the only way the tree changes: check, prep, apply, log, notify | `SyncRequestProcessor` and the commit path |
//! | [`tree`] | the znodes, applying txns, the snapshot codec | `DataTree` |
//! | [`watch`] | watches and who gets which event | `WatchManager` |
//! | [`storage`] | the write-ahead log, group commit, snapshots on disk, recovery | `FileTxnSnapLog` |
//! | [`txn`] | the transaction records the log holds | `txn` jute records |
//! | [`acl`], [`path`] | ACL checks and digests; path rules | `PrepRequestProcessor` helpers |
//! | [`stats`], `fourlw`, `admin`, `grpc` | counters, four-letter words, the admin listener (HTTP and gRPC) | `ServerStats`, `FourLetterCommands`, `AdminServer` |
//! | [`config`], [`token`] | the settings, from flags, environment and zoo.cfg; the admin token | `ServerConfig` |
//! | `lock` | the lock order (tree → sessions → watches → connections), checked in debug builds | |
//!
//! The ordering invariant that makes replies and watch events come in the
//! order ZooKeeper promises is explained in [`core`], which holds the
//! shared state.
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
mod committer;
pub mod config;
mod conn;
pub mod core;
mod fourlw;
mod grpc;
mod lock;
mod ops;
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

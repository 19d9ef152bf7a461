//! The coordination server: a single-node server that speaks the Apache
//! ZooKeeper client protocol.
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
pub mod admin;
mod committer;
pub mod config;
pub mod conn;
pub mod core;
pub mod fourlw;
pub mod grpc;
mod lock;
mod ops;
pub mod path;
pub mod prep;
pub mod server;
pub mod session;
pub mod stats;
pub mod storage;
pub mod tree;
pub mod txn;
pub mod watch;

pub use config::{Args, Config, ConfigError};

pub use server::{run, serve};

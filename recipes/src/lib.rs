//! ZooKeeper recipes on zookeeper-async, written once and used by every
//! service; they behave the same against the coordinator and against Apache
//! ZooKeeper.
//!
//! # Layout
//! - [`lock`]: a fenced distributed lock (ephemeral-sequential, no herd).
//! - [`task`]: wait for a task's status, watch armed before publishing.
//! - [`config`]: a live value that always converges on the latest data.
//! - [`registry`]: ephemeral service registration and live membership.
//! - [`election`]: leader election with a per-term fencing token.

pub mod config;
pub mod election;
pub mod lock;
pub mod registry;
pub mod task;

//! [`ConnId`]: which connection, as the rest of the server names one.
//!
//! The connection registry (`clients`) mints the ids, one per accepted
//! socket, never reused. Two modules below the registry name connections
//! by them: the session table (which connection serves a session, and may
//! act for it) and the watch manager (whose watches are whose). The type
//! lives here, at the bottom, rather than in the registry because the
//! registry sits above the session table (a `Client` holds its session's
//! `Liveness`): were the id the registry's, the session table would need
//! the registry and the registry the session table.

/// A connection's id, unique for the server's life.
pub type ConnId = u64;

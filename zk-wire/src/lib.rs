//! The Apache ZooKeeper client wire protocol.
//!
//! ZooKeeper clients and servers exchange length-prefixed frames whose bodies
//! are *jute* records: big-endian integers, length-prefixed strings and
//! buffers (`-1` meaning null), and count-prefixed vectors. This crate holds
//! that encoding once, for both directions, so the coordinator (which decodes
//! requests and encodes replies) and the tests' raw client (which does the
//! opposite) share one implementation, and Apache ZooKeeper itself checks it
//! in the differential tests.
//!
//! # Layout
//!
//! - [`codec`]: the jute primitives ([`Jute`], [`Reader`]) and [`DecodeError`].
//! - [`records`]: every record of `zookeeper.jute` the client protocol uses.
//! - [`consts`]: opcodes, error codes, event types, permissions, create modes.
//! - [`request`]: a typed [`Request`] decoded from (opcode, body), including
//!   the multi-op framing.
//! - [`response`]: a typed [`Response`] encoded after a [`records::ReplyHeader`].
//! - [`frame`]: the 4-byte length prefix and the `jute.maxbuffer` limit.
//! - [`path`]: building znode paths (`join`), shared by every side.
//! - [`auth`]: the `digest` scheme's id ([`auth::digest_id`]), which the
//!   server derives and clients name in ACLs.
//! - `client` (cargo feature `client`): a raw async client for tests, which
//!   sends any request with any xid and shows every reply and notification.
//!
//! Decoding never panics and never allocates more than the input could hold:
//! every length is checked against the bytes that remain. The fuzz target and
//! the property tests hold it to that.

pub mod auth;
#[cfg(feature = "client")]
pub mod client;
pub mod codec;
pub mod consts;
pub mod frame;
pub mod path;
pub mod records;
pub mod request;
pub mod response;

pub use codec::{DecodeError, Jute, Reader};
pub use consts::{ErrorCode, OpCode};
pub use request::Request;
pub use response::Response;

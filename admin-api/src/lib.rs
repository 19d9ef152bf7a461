//! The coordinator's admin API (`coordinator.admin.v1.Admin`, defined in
//! `proto/coordinator/admin/v1/admin.proto`): the generated messages, the
//! client ([`admin_client::AdminClient`]) and the server trait
//! ([`admin_server::Admin`]) that the coordinator implements.
//!
//! A crate of its own so that a caller (the dashboard, the tests, an
//! operator's tool) gets the very types the server is built with, and so
//! can never disagree with it about the messages, without depending on the
//! server.

tonic::include_proto!("coordinator.admin.v1");

/// The API's encoded file descriptors, for gRPC server reflection (grpcurl
/// and grpcui discover the API from it, without the .proto file).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");

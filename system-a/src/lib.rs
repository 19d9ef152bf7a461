//! system-a's gRPC API, as a library so clients (the `submit` subcommand,
//! the end-to-end tests) use the same generated types as the server.

pub mod proto {
    tonic::include_proto!("tasks.v1");
}

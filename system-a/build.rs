// Protos are compiled with protox, a pure-Rust protobuf compiler, so a
// fresh machine needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tasks/v1/tasks.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

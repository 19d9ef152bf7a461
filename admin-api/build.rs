// The admin API's protos are compiled with protox, a pure-Rust protobuf
// compiler, so a fresh machine needs no `protoc`. The encoded descriptor
// set is kept for gRPC server reflection (grpcurl, grpcui).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/coordinator/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true);
    compiler.open_file(proto)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("admin_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

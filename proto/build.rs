//! Compiles the contracts with `protoc` (Debian's `protobuf-compiler`, which
//! `scripts/test.sh` and the Dockerfile install); set `PROTOC` to use another.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(
        &["proto/millrace.proto", "proto/grpc_predict_v2.proto"],
        &["proto"],
    )?;
    Ok(())
}

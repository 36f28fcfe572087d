//! Compiles the contracts with `protoc` (Debian's `protobuf-compiler`, which
//! `scripts/test.sh` and the Dockerfile install); set `PROTOC` to use another.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // Batch items are sliced out of the received buffer, not copied.
        .bytes(".millrace.v1.BatchItem.payload")
        .compile_protos(
            &["proto/millrace.proto", "proto/grpc_predict_v2.proto"],
            &["proto"],
        )?;
    Ok(())
}

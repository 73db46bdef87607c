//! Generates the kms.v1 code with the protoc that `protoc-bin-vendored` ships, so building needs
//! no system protoc.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; PROTOC is how prost-build finds protoc.
    env::set_var("PROTOC", protoc);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("kms_v1_descriptor.bin"))
        // Maps iterate in key order, so encodings are deterministic.
        .btree_map(".")
        .compile_protos(&["kms/v1/kms.proto"], &["."])?;
    println!("cargo:rerun-if-changed=kms/v1/kms.proto");
    Ok(())
}

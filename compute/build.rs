use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("strata_descriptor.bin"))
        .bytes(".")
        .compile_protos(
            &[
                "proto/strata/v1/kv.proto",
                "proto/strata/v1/admin.proto",
                "proto/strata/v1/txn.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto/strata/v1/kv.proto");
    println!("cargo:rerun-if-changed=proto/strata/v1/admin.proto");
    println!("cargo:rerun-if-changed=proto/strata/v1/txn.proto");
    Ok(())
}

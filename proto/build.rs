use std::path::PathBuf;

/// The `.proto` files of `strata.v1`: the one source of the API for the server, the client and
/// the CLI.
const PROTOS: [&str; 3] = [
    "strata/v1/kv.proto",
    "strata/v1/admin.proto",
    "strata/v1/txn.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("strata_descriptor.bin"))
        .bytes(".")
        .compile_protos(&PROTOS, &["."])?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The client compiles the server's own proto files: one source of truth for the API.
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".")
        .compile_protos(
            &[
                "../compute/proto/strata/v1/kv.proto",
                "../compute/proto/strata/v1/admin.proto",
            ],
            &["../compute/proto"],
        )?;
    println!("cargo:rerun-if-changed=../compute/proto/strata/v1/kv.proto");
    println!("cargo:rerun-if-changed=../compute/proto/strata/v1/admin.proto");
    Ok(())
}

//! Generates the Rust types and tonic services from `proto/`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The vendored protoc needs no system package, so a fresh machine builds.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    set_protoc(protoc);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "proto/processor/v1/link.proto",
        "proto/processor/v1/messages.proto",
        "proto/processor/v1/service.proto",
        "proto/coordinator/v1/admin.proto",
    ];
    tonic_prost_build::configure()
        // The link rpc is called `Connect`; the generated client's own
        // `connect(endpoint)` constructor would clash with it. Clients are
        // built with `new(channel)` instead.
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("descriptor.bin"))
        .compile_protos(&files, &["proto"])?;
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}

/// tonic-prost-build reads `PROTOC` from the environment.
fn set_protoc(path: PathBuf) {
    // SAFETY: a build script runs on one thread, so nothing reads the
    // environment while it is written.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", path);
    }
}

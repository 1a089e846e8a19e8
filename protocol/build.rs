//! Compiles `proto/quip/v1/quip.proto` with protox (a pure-Rust protobuf
//! compiler), so building Quip needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["quip/v1/quip.proto"], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}

//! Compiles `proto/tidegate.proto` with protox (pure Rust), so building never
//! needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/tidegate.proto");
    let descriptors = protox::compile(["tidegate.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles the eBPF programs (rewrite-ebpf) for bpfel-unknown-none and leaves the
//! object in OUT_DIR, where `loader` embeds it. A plain `cargo build` therefore builds
//! everything; `cargo xtask setup` installs what this needs (rust-src, bpf-linker).

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = format!("{manifest_dir}/../rewrite-ebpf");
    // aya-build only watches the eBPF crate; the programs also compile rewrite-common.
    println!("cargo:rerun-if-changed={manifest_dir}/../rewrite-common/src");
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=REWRITE_WITHOUT_EBPF");

    // The fuzz targets link this library to parse command lines, built by the nightly
    // toolchain with sanitizers; they never load programs, and that toolchain has no
    // rust-src for build-std. An empty object makes `loader::load` fail clearly.
    if std::env::var_os("REWRITE_WITHOUT_EBPF").is_some() {
        let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
        for object in ["rewrite-ebpf", "rewrite-bounce"] {
            std::fs::write(format!("{out_dir}/{object}"), []).context("writing an empty eBPF object")?;
        }
        println!("cargo:warning=REWRITE_WITHOUT_EBPF is set: this build cannot load the eBPF programs");
        return Ok(());
    }

    // The machine's toolchain is stable, and no nightly may be downloaded, so the
    // eBPF crate is built with the same stable compiler; RUSTC_BOOTSTRAP=1 unlocks
    // `-Z build-std=core`, which the bpfel-unknown-none target needs (it ships no
    // precompiled core). It is set only for the nested cargo that aya-build spawns.
    // SAFETY: build scripts are single-threaded; nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // Build with the toolchain that runs this build (pinned in rust-toolchain.toml),
    // not aya-build's default of "nightly".
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "1.95.0".to_owned());

    let package = aya_build::Package { name: "rewrite-ebpf", root_dir: &ebpf_dir, ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
        .context("building the eBPF programs failed; run `cargo xtask setup` to install rust-src and bpf-linker")
}

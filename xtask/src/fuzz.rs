//! `cargo xtask fuzz`: the differential test with more cases, then each libFuzzer
//! target (fuzz/) for a bounded time. libFuzzer needs the nightly toolchain's
//! sanitizer and coverage flags; the machine has one beside the pinned stable, and
//! nothing else is downloaded.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use super::{on_path, output, run, step};

/// The cargo-fuzz release the targets are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The targets in fuzz/Cargo.toml.
pub const TARGETS: [&str; 4] = ["reference_model", "mapping_syntax", "cli_arguments", "config_file"];

/// `cargo +nightly`, without the variables the outer (stable) cargo set for xtask, so
/// that nothing of the pinned toolchain leaks into the nightly build.
fn nightly_cargo() -> Command {
    let mut command = Command::new("cargo");
    command.arg("+nightly");
    for variable in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "CARGO", "RUSTC_WRAPPER"] {
        command.env_remove(variable);
    }
    command
}

fn ensure_nightly() -> anyhow::Result<String> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    ensure!(
        toolchains.lines().any(|line| line.starts_with("nightly")),
        "libFuzzer needs a nightly toolchain (for -Z sanitizer), and rustup lists none: {}",
        toolchains.trim()
    );
    Ok(output(nightly_cargo().arg("--version"))?.trim().to_owned())
}

fn ensure_cargo_fuzz() -> anyhow::Result<String> {
    if let Ok(version) = output(nightly_cargo().args(["fuzz", "--version"]))
        && version.contains(CARGO_FUZZ_VERSION)
    {
        return Ok(version.trim().to_owned());
    }
    run(
        nightly_cargo().args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]),
        "cargo install cargo-fuzz",
    )?;
    Ok(format!("installed cargo-fuzz {CARGO_FUZZ_VERSION}"))
}

fn ensure_cxx() -> anyhow::Result<String> {
    // libfuzzer-sys compiles libFuzzer's C++ sources.
    if on_path("c++") {
        return Ok("c++ present".into());
    }
    run(
        Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-qq", "g++"]),
        "apt-get install g++",
    )?;
    Ok("installed g++".into())
}

pub fn setup() -> anyhow::Result<()> {
    step("nightly toolchain", ensure_nightly())?;
    step("cargo-fuzz", ensure_cargo_fuzz())?;
    step("C++ compiler", ensure_cxx())?;
    Ok(())
}

/// Runs each target in `targets` for `seconds`, from its seeds, its regressions and the
/// corpus earlier runs grew. An input that makes a target fail is copied into
/// fuzz/regressions/TARGET, where `cargo xtask test` replays it, and the run fails.
pub fn run_targets(root: &Path, targets: &[String], seconds: u32) -> anyhow::Result<()> {
    let fuzz_dir = root.join("fuzz");
    for target in targets {
        ensure!(TARGETS.contains(&target.as_str()), "no fuzz target {target:?}; the targets are {TARGETS:?}");
        let corpus = fuzz_dir.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
        // Only this run's findings count.
        if artifacts.exists() {
            fs::remove_dir_all(&artifacts).with_context(|| format!("cannot clear {}", artifacts.display()))?;
        }
        eprintln!("fuzz: {target} for {seconds} s");
        let status = nightly_cargo()
            .current_dir(&fuzz_dir)
            .env("REWRITE_WITHOUT_EBPF", "1")
            .args(["fuzz", "run", target])
            .args([&corpus, &fuzz_dir.join("seeds").join(target), &fuzz_dir.join("regressions").join(target)])
            .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1"])
            .status()
            .context("cannot start cargo fuzz")?;
        if status.success() {
            continue;
        }
        let saved = save_findings(&artifacts, &fuzz_dir.join("regressions").join(target))?;
        if saved.is_empty() {
            bail!("cargo fuzz run {target} failed ({status}) without leaving an input; see its output above");
        }
        let names: Vec<String> = saved.iter().map(|path| path.display().to_string()).collect();
        bail!(
            "fuzz target {target} failed; the input is saved as {}: fix the bug and commit the file \
             (cargo xtask test replays it)",
            names.join(", ")
        );
    }
    Ok(())
}

/// Copies libFuzzer's findings (crash-*, oom-*, timeout-*, leak-*) into `regressions`.
fn save_findings(artifacts: &Path, regressions: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(entries) = fs::read_dir(artifacts) else { return Ok(Vec::new()) };
    fs::create_dir_all(regressions).with_context(|| format!("cannot create {}", regressions.display()))?;
    let mut saved = Vec::new();
    for entry in entries {
        let path = entry.context("reading the artifacts directory")?.path();
        let Some(name) = path.file_name() else { continue };
        let destination = regressions.join(name);
        fs::copy(&path, &destination).with_context(|| format!("cannot copy {}", path.display()))?;
        saved.push(destination);
    }
    Ok(saved)
}

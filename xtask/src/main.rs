//! `cargo xtask`: everything a fresh machine needs, in one place.
//!
//! * `setup`: idempotent; installs the rust-src component, bpf-linker built against this
//!   toolchain's own libLLVM, the apt packages the tests use, and mounts bpffs.
//! * `build`, `run -- ARGS`, `test`, `bench`, `fuzz`: run `setup` first.
//!
//! Why one file of about 550 lines: it is the command line and the set-up steps every
//! task starts with; the two tasks with a life of their own, the kernel matrix and
//! fuzzing, are in `kernels` and `fuzz`.

mod dist;
mod fuzz;
mod kernels;

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};

/// The bpf-linker release this project is built and tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// What building `rewrite` needs besides the toolchain, each with what proves it is
/// there (a binary on PATH, or an absolute path): protoc compiles etcd's protobufs for
/// the etcd client, and those import protobuf's own well-known types, which Debian
/// ships apart from protoc (a machine can have protoc without them).
const BUILD_PACKAGES: &[(&str, &str)] =
    &[("protobuf-compiler", "protoc"), ("libprotobuf-dev", "/usr/include/google/protobuf/descriptor.proto")];

/// What the tests and benchmarks use, installed only for them (never by `build` or
/// `run`, so a node that only runs rewrite gets no daemon from here): ip, ethtool,
/// nsenter and ping build and probe the namespaces; iptables and nftables are the
/// baselines of `cargo xtask bench`; etcd-server is the store the fleet tests run (each
/// in its own namespace; on a host booted with systemd, Debian's package also starts an
/// etcd on 127.0.0.1:2379, which the tests do not use); openssl makes their TLS
/// certificates; socat is the userspace bouncer bounce mode is measured against, and
/// ipset the second of the filters the gatekeeper is; systemd-analyze checks the
/// shipped unit; debootstrap makes the fresh Debian root the .deb is installed into,
/// and dpkg-deb builds that .deb; perf samples where the benchmark's CPU time goes.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("util-linux", "nsenter"),
    ("iputils-ping", "ping"),
    ("iptables", "iptables-legacy"),
    ("nftables", "nft"),
    ("etcd-server", "etcd"),
    ("openssl", "openssl"),
    ("socat", "socat"),
    ("ipset", "ipset"),
    ("systemd", "systemd-analyze"),
    ("debootstrap", "debootstrap"),
    ("dpkg", "dpkg-deb"),
    ("linux-perf", "perf"),
];
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the eBPF programs and the `rewrite` binary.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `rewrite ARGS` as root.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `rewrite`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: host unit tests, BPF_PROG_TEST_RUN fixtures and network-namespace
    /// end-to-end tests (needs root). With `--kernel`, run the kernel matrix instead:
    /// the kernel-path tests inside Debian's stock kernels, booted in QEMU.
    Test {
        /// A kernel of the matrix to boot instead of testing on this one: 5.10, 6.1,
        /// 6.12 or all.
        #[arg(long, value_name = "5.10|6.1|6.12|all")]
        kernel: Option<String>,
        /// With --kernel: only these test binaries of the matrix (comma-separated), to
        /// look closer at one.
        #[arg(long, value_delimiter = ',', requires = "kernel")]
        only: Vec<String>,
        /// Extra arguments for the test binaries (a name filter, --nocapture, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark rewrite against plain routing, iptables (nft and legacy) and an
    /// nftables map, and the programs' per-packet cost; writes docs/benchmarks.md with
    /// CSVs and SVG plots in docs/benchmarks/. Then the fleet (docs/fleet-benchmarks.md,
    /// with its scale figure: up to 8,000 simulated nodes), bounce mode against socat and
    /// iptables NAT (docs/bounce-benchmarks.md), and the gatekeeper against iptables and
    /// ipset (docs/gate-benchmarks.md). Takes about 55 minutes on 2 cores.
    Bench {
        /// Tiny tables and short runs, in under 5 minutes: proves the harness works.
        /// Writes to target/bench-quick/ and leaves docs/ alone.
        #[arg(long)]
        quick: bool,
    },
    /// The differential tests with more cases (the programs against the reference
    /// model on generated frames; `cargo xtask test` runs 100,000), then each libFuzzer
    /// target (fuzz/) for a bounded time. Needs the nightly toolchain for libFuzzer.
    Fuzz {
        /// Differential cases; 0 skips the differential tests.
        #[arg(long, default_value_t = 1_000_000)]
        cases: u32,
        /// Seconds per libFuzzer target; 0 skips them.
        #[arg(long, default_value_t = 300)]
        seconds: u32,
        /// Only these targets (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = fuzz::TARGETS.map(String::from))]
        targets: Vec<String>,
    },
    /// rustfmt check, and clippy on the host crates and on the eBPF crate (BPF target).
    Lint,
    /// The release artefacts in target/dist/: a static binary, a .deb (binary, systemd
    /// unit, example config, completions, man pages, licences), a tarball of the same,
    /// and SHA256SUMS.
    Dist,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    env::set_current_dir(&root).with_context(|| format!("cannot enter {}", root.display()))?;
    match cli.command {
        Task::Setup => setup(),
        Task::Build { release } => {
            setup_build()?;
            build(release)
        }
        Task::Run { release, args } => {
            setup_build()?;
            build(release)?;
            let binary = root.join("target").join(if release { "release" } else { "debug" }).join("rewrite");
            run_as_root(&binary, &args)
        }
        Task::Test { kernel: Some(kernel), only, args } => {
            let series = kernels::selected(&kernel)?;
            setup()?;
            step("kernel matrix packages", ensure_packages(kernels::HOST_PACKAGES))?;
            require_root("the kernel matrix boots guests that load eBPF programs")?;
            build(false)?;
            let upgrade_object = build_upgrade_object(&root)?;
            let binaries = test_binaries()?;
            let rewrite = root.join("target").join("debug").join("rewrite");
            let started = std::time::Instant::now();
            let selection = kernels::Selection { only, extra_args: args };
            let outcomes = kernels::run(&root, &series, &binaries, &rewrite, &upgrade_object, &selection)?;
            report_matrix(&outcomes, started.elapsed())
        }
        Task::Test { kernel: None, args, .. } => {
            setup()?;
            require_root("the tests attach eBPF programs and create network namespaces")?;
            build(false)?;
            let upgrade_object = build_upgrade_object(&root)?;
            // The install test puts the .deb into a fresh Debian 11 root.
            let artefacts = dist::dist(&root)?;
            let debian_root = dist::debian_root(&root)?;
            let mut command = cargo();
            command.env("REWRITE_UPGRADE_OBJECT", &upgrade_object);
            command.env("REWRITE_DIST_DEB", &artefacts.deb).env("REWRITE_DEBIAN_ROOT", &debian_root);
            command.args(["test", "--workspace", "--exclude", "rewrite-ebpf", "--no-fail-fast", "--"]).args(&args);
            run_tests(&mut command)
        }
        Task::Fuzz { cases, seconds, targets } => {
            setup()?;
            if cases > 0 {
                require_root("the differential tests load eBPF programs")?;
                build(false)?;
                let mut command = cargo();
                command.env("REWRITE_DIFFERENTIAL_CASES", cases.to_string()).args([
                    "test",
                    "--package",
                    "rewrite-tests",
                    "--test",
                    "differential",
                    "--",
                    "--nocapture",
                ]);
                run(&mut command, "the differential tests")?;
            }
            if seconds > 0 {
                fuzz::setup()?;
                fuzz::run_targets(&root, &targets, seconds)?;
            }
            Ok(())
        }
        Task::Dist => {
            setup_build()?;
            dist::dist(&root).map(drop)
        }
        Task::Lint => {
            setup()?;
            run(cargo().args(["fmt", "--all", "--", "--check"]), "cargo fmt --check")?;
            run(
                cargo().args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "rewrite-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]),
                "cargo clippy (host)",
            )?;
            // Same compiler, same flags as the build script uses for the programs.
            run(
                cargo()
                    .env("RUSTC_BOOTSTRAP", "1")
                    .args(["clippy", "--package", "rewrite-ebpf", "--release", "--target", "bpfel-unknown-none"])
                    .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
                "cargo clippy (eBPF)",
            )
        }
        Task::Bench { quick } => {
            setup()?;
            require_root("the benchmarks load eBPF programs and build network namespaces")?;
            build(true)?;
            // The per-packet cost first: the comparison's report includes its table.
            for bench in ["prog_cost", "versus", "fleet", "bounce", "gate", "metrics"] {
                let mut command = cargo();
                command.args(["bench", "--package", "rewrite-tests", "--bench", bench, "--"]);
                if quick {
                    command.arg("--quick");
                }
                run(&mut command, &format!("cargo bench ({bench})"))?;
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask's manifest is <root>/xtask/Cargo.toml.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot start {what}: {command:?}"))?;
    ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// Runs the test command, passing its output through, and ends with one line that
/// sums the "test result:" lines of every test binary, so a reader (or CI) sees the
/// total without adding up a dozen binaries.
fn run_tests(command: &mut Command) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = command.stdout(std::process::Stdio::piped()).spawn().context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += kernels::count_before(result, " passed");
            failed += kernels::count_before(result, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("summary: {passed} passed, {failed} failed");
    ensure!(status.success() && failed == 0, "tests failed ({status})");
    ensure!(passed > 0, "no test ran");
    Ok(())
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("cannot start {command:?}"))?;
    ensure!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(name: &str, result: anyhow::Result<String>) -> anyhow::Result<()> {
    match result {
        Ok(detail) => {
            eprintln!("setup: {name}: {detail}");
            Ok(())
        }
        Err(error) => Err(error.context(format!("setup step '{name}' failed"))),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn require_root(why: &str) -> anyhow::Result<()> {
    ensure!(is_root(), "run as root: {why}");
    Ok(())
}

/// What building and running need: the toolchain's parts, protoc, and bpffs.
fn setup_build() -> anyhow::Result<()> {
    step("rust-src", ensure_rust_src())?;
    step("bpf-linker", ensure_bpf_linker())?;
    step("build packages", ensure_packages(BUILD_PACKAGES))?;
    step("bpffs", ensure_bpffs())?;
    Ok(())
}

/// Everything: building, and the tools the tests and benchmarks drive.
fn setup() -> anyhow::Result<()> {
    setup_build()?;
    step("test packages", ensure_packages(TEST_PACKAGES))?;
    Ok(())
}

fn ensure_rust_src() -> anyhow::Result<String> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok("present".into());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src"]), "rustup component add rust-src")?;
    Ok("installed".into())
}

/// The toolchain's libLLVM, which bpf-linker must use so that the bitcode rustc emits
/// for the eBPF crate is read by the same LLVM that wrote it.
fn toolchain_libllvm() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.file_name().and_then(OsStr::to_str).is_some_and(|name| name.starts_with("libLLVM.so.")))
        .collect();
    candidates.sort();
    candidates
        .pop()
        .with_context(|| format!("no libLLVM.so.* in {}: this toolchain cannot drive bpf-linker", lib.display()))
}

fn llvm_major(libllvm: &Path) -> anyhow::Result<String> {
    // libLLVM.so.22.1-rust-1.95.0-stable -> 22
    let name = libllvm.file_name().and_then(OsStr::to_str).unwrap_or_default();
    let version = name.trim_start_matches("libLLVM.so.");
    let major = version.split('.').next().unwrap_or_default();
    ensure!(!major.is_empty() && major.chars().all(|c| c.is_ascii_digit()), "cannot read the LLVM version from {name}");
    Ok(major.to_owned())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"))
}

/// The libLLVM an installed bpf-linker loads, as the dynamic loader resolves it.
fn linked_libllvm(bpf_linker: &Path) -> Option<PathBuf> {
    let ldd = output(Command::new("ldd").arg(bpf_linker)).ok()?;
    let line = ldd.lines().find(|line| line.contains("libLLVM"))?;
    let target = line.split("=>").nth(1)?.split_whitespace().next()?;
    fs::canonicalize(target).ok()
}

fn ensure_bpf_linker() -> anyhow::Result<String> {
    let libllvm = toolchain_libllvm()?;
    let wanted = fs::canonicalize(&libllvm).with_context(|| format!("cannot resolve {}", libllvm.display()))?;
    let installed = cargo_home().join("bin").join("bpf-linker");
    if installed.exists() {
        match linked_libllvm(&installed) {
            Some(linked) if linked == wanted => return Ok(format!("present, linked against {}", wanted.display())),
            Some(linked) => eprintln!(
                "setup: bpf-linker is linked against {}, not {}: rebuilding",
                linked.display(),
                wanted.display()
            ),
            None => eprintln!("setup: bpf-linker does not load a libLLVM this toolchain has: rebuilding"),
        }
    }
    // bpf-linker's build finds LLVM through LLVM_PREFIX/lib/libLLVM.so; the toolchain
    // ships the library under its versioned name only, so give it both names. The
    // directory must outlive the build: the binary's rpath points into it.
    let file_name = libllvm.file_name().context("libLLVM path has no file name")?;
    let prefix = cargo_home().join("rewrite-bpf-linker-llvm").join(file_name);
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    for link_name in [OsStr::new("libLLVM.so"), file_name] {
        let link = lib_dir.join(link_name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&wanted, &link).with_context(|| format!("cannot link {}", link.display()))?;
    }
    let feature = format!("llvm-{}", llvm_major(&libllvm)?);
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)", wanted.display());
    run(
        cargo()
            .current_dir(env::temp_dir())
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .args(["--features", &feature]),
        "cargo install bpf-linker",
    )?;
    match linked_libllvm(&installed) {
        Some(linked) if linked == wanted => Ok(format!("built, linked against {}", wanted.display())),
        other => bail!("bpf-linker was built but loads {other:?} instead of {}", wanted.display()),
    }
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn on_path(binary: &str) -> bool {
    env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

/// Whether `proof` is there: an absolute path is a file, anything else a binary on PATH.
fn proof_present(proof: &str) -> bool {
    if proof.starts_with('/') { Path::new(proof).is_file() } else { on_path(proof) }
}

/// Installs the Debian packages of `packages` that are missing, each proved by a binary
/// or a file (see [`proof_present`]).
fn ensure_packages(packages: &[(&str, &str)]) -> anyhow::Result<String> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(package, proof)| !package_installed(package) || !proof_present(proof))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(format!("present ({})", packages.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")));
    }
    require_root(&format!("installing {}", missing.join(", ")))?;
    run(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")?;
    run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )?;
    for (package, proof) in packages {
        ensure!(proof_present(proof), "{package} was installed but {proof} is not there");
    }
    Ok(format!("installed {}", missing.join(", ")))
}

/// The test binaries of the workspace, by target name, built if needed.
fn test_binaries() -> anyhow::Result<std::collections::BTreeMap<String, PathBuf>> {
    let listing = output(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "rewrite-ebpf",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]))?;
    let mut binaries = std::collections::BTreeMap::new();
    for line in listing.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(executable)) = (message["target"]["name"].as_str(), message["executable"].as_str())
        else {
            continue;
        };
        if message["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|kind| kind == "test")) {
            binaries.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    ensure!(!binaries.is_empty(), "cargo built no test binary");
    Ok(binaries)
}

/// Prints the matrix's summary: per kernel, the tests passed and failed, the wall time,
/// and the verifier's cost of each program; fails if any kernel failed.
fn report_matrix(outcomes: &[kernels::Outcome], wall: std::time::Duration) -> anyhow::Result<()> {
    println!("kernel matrix summary:");
    for outcome in outcomes {
        println!(
            "  {} ({}, {}): {} passed, {} failed, {:.0} s{}",
            outcome.series,
            outcome.release,
            outcome.accelerator,
            outcome.passed,
            outcome.failed,
            outcome.wall.as_secs_f64(),
            if outcome.binaries_failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", outcome.binaries_failed.join(", "))
            }
        );
        for cost in &outcome.verifier {
            println!("    {cost}");
        }
    }
    println!("kernel matrix wall time: {:.0} s", wall.as_secs_f64());
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| outcome.failed > 0 || !outcome.binaries_failed.is_empty() || outcome.passed == 0)
        .map(|outcome| outcome.series)
        .collect();
    ensure!(failed.is_empty(), "the kernel matrix failed on {}", failed.join(", "));
    Ok(())
}

fn ensure_bpffs() -> anyhow::Result<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next();
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    });
    if mounted {
        return Ok(format!("{BPFFS} mounted"));
    }
    if !is_root() {
        return Ok(format!("{BPFFS} is not mounted; as root: mount -t bpf bpf {BPFFS}"));
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]), "mount -t bpf")?;
    Ok(format!("mounted {BPFFS}"))
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args(["build", "--workspace", "--exclude", "rewrite-ebpf", "--all-targets"]);
    if release {
        command.arg("--release");
    }
    run(&mut command, "cargo build")
}

/// A second build of the eBPF programs, with its own build tag (so its bytes, and its
/// version, differ from the embedded one), for the upgrade test. Built as the
/// `rewrite-user` build script builds the embedded object, in a target directory of
/// its own.
fn build_upgrade_object(root: &Path) -> anyhow::Result<PathBuf> {
    let target_dir = root.join("target").join("upgrade-object");
    run(
        cargo()
            .env("RUSTC_BOOTSTRAP", "1")
            .env("REWRITE_BUILD_TAG", "upgrade-test")
            .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf")
            .args(["build", "--package", "rewrite-ebpf", "--bins", "--release", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--target-dir"])
            .arg(&target_dir),
        "cargo build (the second eBPF object, for the upgrade test)",
    )?;
    let object = target_dir.join("bpfel-unknown-none").join("release").join("rewrite-ebpf");
    ensure!(object.is_file(), "the second eBPF object is missing at {}", object.display());
    Ok(object)
}

fn run_as_root(binary: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut command = if is_root() {
        Command::new(binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(binary);
        sudo
    };
    command.args(args);
    let status = command.status().with_context(|| format!("cannot start {}", binary.display()))?;
    // Pass rewrite's exit code through, so scripts see its failures.
    std::process::exit(status.code().unwrap_or(1));
}

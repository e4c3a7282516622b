//! `cargo xtask test --kernel 5.10|6.1|6.12|all`: the kernel matrix.
//!
//! Boots Debian's stock cloud kernels (bullseye's 5.10, bookworm's 6.1 and 6.12) in
//! QEMU with an initramfs that carries the built test binaries, the `rewrite` binary,
//! the few host tools the tests call (with the libraries `ldd` lists) and the modules
//! the tests need (veth, sch_ingress, cls_bpf), and runs inside each kernel: the
//! verifier check of every program, the BPF_PROG_TEST_RUN fixtures, a differential run
//! against the reference model, and the namespace tests with real sockets (two hosts
//! in xdp and tc mode, the router, ICMP errors, the CLI's live changes, tc attachment
//! through netlink, and an agent restart and upgrade under traffic).
//!
//! Kernel packages come from the Debian archive the machine already uses, through a
//! sources file and package lists of their own (the machine's apt state is not
//! touched), and are cached under `target/kernels/`. QEMU uses KVM when it boots a
//! guest within a few seconds, TCG otherwise.
//!
//! Why one file of about 620 lines: the matrix is one pipeline (fetch the kernel
//! packages, build the initramfs, boot, collect the verdict) whose steps share the cache
//! layout and the guest's protocol; split apart, each step would only make sense with
//! the others open beside it.

use std::{
    collections::BTreeMap,
    env, fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// A Debian kernel series the matrix boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    /// What `--kernel` calls it.
    pub name: &'static str,
    /// The Debian suite that ships it.
    suite: &'static str,
    /// The package names of the series: `prefix` + an ABI or version + `suffix`.
    prefix: &'static str,
    suffix: &'static str,
}

pub const SERIES: [Series; 3] = [
    Series { name: "5.10", suite: "bullseye", prefix: "linux-image-5.10.0-", suffix: "-cloud-amd64" },
    Series { name: "6.1", suite: "bookworm", prefix: "linux-image-6.1.0-", suffix: "-cloud-amd64-unsigned" },
    Series { name: "6.12", suite: "bookworm", prefix: "linux-image-6.12.", suffix: "+deb12-cloud-amd64-unsigned" },
];

/// Debian packages the matrix itself needs on the host.
pub const HOST_PACKAGES: &[(&str, &str)] =
    &[("qemu-system-x86", "qemu-system-x86_64"), ("busybox-static", "busybox"), ("cpio", "cpio"), ("xz-utils", "xz")];

/// Host tools the tests run inside the guest, copied with their libraries.
const GUEST_TOOLS: &[&str] = &["ip", "tc", "nsenter", "ethtool", "ping", "sysctl"];

/// Busybox applets the guest's init script uses.
const BUSYBOX_APPLETS: &[&str] =
    &["sh", "mount", "mkdir", "insmod", "poweroff", "cat", "echo", "sleep", "ls", "sync", "uname", "date", "timeout"];

/// How long one test binary may run in a guest before it is killed and counted failed.
const BINARY_TIMEOUT_SECONDS: u32 = 600;

/// Modules the tests need, as every cloud kernel of the matrix builds them.
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf"];

/// Cases of the differential run in each kernel (the host runs 100,000).
const DIFFERENTIAL_CASES: u32 = 20_000;

/// How long one kernel's run may take before it counts as hung.
const VM_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// Which test binaries run in the guest, and which of their tests.
fn plan() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        // --nocapture: its report of each program's cost is printed on success too.
        ("verifier", vec!["--nocapture"]),
        ("test_run", vec![]),
        ("gate_test_run", vec![]),
        ("bounce_test_run", vec![]),
        ("differential", vec![]),
        (
            "e2e",
            vec![
                "two_hosts_with_xdp_ingress",
                "two_hosts_with_tc_ingress",
                "two_ipv6_hosts_with_tc_ingress",
                "router_rewrites_forwarded_partial_checksum_packets",
                "mappings_change_live_from_the_cli",
                "path_mtu_discovery_with_tc_ingress",
                "path_mtu_discovery_with_xdp_ingress",
            ],
        ),
        ("tc_attach", vec![]),
        ("trace", vec![]),
        ("agent", vec!["no_datagram_is_lost_across_agent_restart_upgrade_and_a_big_apply"]),
    ]
}

/// What of the plan a run executes: every binary unless `only` names some, each with
/// `extra_args` (`--nocapture`, say) after its own.
#[derive(Debug, Default)]
pub struct Selection {
    pub only: Vec<String>,
    pub extra_args: Vec<String>,
}

impl Selection {
    fn plan(&self) -> anyhow::Result<Vec<(&'static str, Vec<String>)>> {
        let plan: Vec<(&'static str, Vec<String>)> = plan()
            .into_iter()
            .filter(|(name, _)| self.only.is_empty() || self.only.iter().any(|only| only == name))
            .map(|(name, args)| {
                // One test at a time in a guest: 5.10's BPF_PROG_TEST_RUN of an XDP program
                // re-patches the kernel's XDP dispatcher around every run, and two runs
                // that overlap on the guest's two vCPUs crashed the 5.10 guest in
                // `bpf_dispatcher_xdp_func` (an int3 met mid-patch), once in a CI run.
                let serial = std::iter::once("--test-threads=1".to_owned());
                (name, serial.chain(args.iter().map(|arg| (*arg).to_owned())).chain(self.extra_args.clone()).collect())
            })
            .collect();
        ensure!(!plan.is_empty(), "--only {:?} names no test binary of the matrix", self.only);
        Ok(plan)
    }
}

/// Parses `--kernel`: one series or `all`.
pub fn selected(choice: &str) -> anyhow::Result<Vec<Series>> {
    if choice == "all" {
        return Ok(SERIES.to_vec());
    }
    let names: Vec<&str> = SERIES.iter().map(|series| series.name).collect();
    SERIES
        .iter()
        .find(|series| series.name == choice)
        .map(|series| vec![*series])
        .with_context(|| format!("unknown kernel {choice:?}: choose one of {} or all", names.join(", ")))
}

/// What one kernel's run gave.
#[derive(Debug)]
pub struct Outcome {
    pub series: &'static str,
    pub release: String,
    pub accelerator: &'static str,
    pub passed: u64,
    pub failed: u64,
    pub binaries_failed: Vec<String>,
    pub wall: Duration,
    /// "program instructions load_ms" per program, from the verifier check.
    pub verifier: Vec<String>,
}

/// Runs the matrix for `series`; `binaries` maps a test binary's name to its path.
pub fn run(
    root: &Path,
    series: &[Series],
    binaries: &BTreeMap<String, PathBuf>,
    rewrite: &Path,
    upgrade_object: &Path,
    selection: &Selection,
) -> anyhow::Result<Vec<Outcome>> {
    let plan = selection.plan()?;
    let cache = root.join("target").join("kernels");
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let mut accelerator = accelerator();
    let mut outcomes = Vec::new();
    for series in series {
        let kernel = fetch(&cache, series)?;
        let initramfs = cache.join(format!("initramfs-{}.cpio", series.name));
        build_initramfs(&kernel, &initramfs, &plan, binaries, rewrite, upgrade_object)?;
        outcomes.push(boot(series, &kernel, &initramfs, &mut accelerator)?);
    }
    Ok(outcomes)
}

/// A kernel package, extracted.
struct Kernel {
    package: String,
    image: PathBuf,
    modules: PathBuf,
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("cannot start {command:?}"))?;
    ensure!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian archive of the machine's apt sources whose path ends in `path` (`/debian`,
/// `/debian-security`), or Debian's own.
pub fn debian_archive(path: &str) -> String {
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    sources
        .lines()
        .filter_map(|line| line.strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|uri| uri.trim_end_matches('/').ends_with(path))
        .map_or_else(|| format!("http://deb.debian.org{path}"), str::to_owned)
}

/// The apt options that point apt at the matrix's own sources file and lists for
/// `suite`, leaving the machine's apt state alone.
fn apt_options(cache: &Path, suite: &str) -> anyhow::Result<Vec<String>> {
    let dir = cache.join("apt").join(suite);
    fs::create_dir_all(dir.join("lists").join("partial"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let sources = dir.join("debian.sources");
    // The point release, and the updates and security suites where newer kernels of
    // the same series land.
    let keyring = "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg";
    fs::write(
        &sources,
        format!(
            "Types: deb\nURIs: {}\nSuites: {suite} {suite}-updates\nComponents: main\n{keyring}\n\n\
             Types: deb\nURIs: {}\nSuites: {suite}-security\nComponents: main\n{keyring}\n",
            debian_archive("/debian"),
            debian_archive("/debian-security")
        ),
    )
    .with_context(|| format!("cannot write {}", sources.display()))?;
    Ok(vec![
        "-o".into(),
        format!("Dir::Etc::sourcelist={}", sources.display()),
        "-o".into(),
        "Dir::Etc::sourceparts=-".into(),
        "-o".into(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
    ])
}

/// The newest package of the series: the highest number between prefix and suffix.
fn newest_package(names: &str, series: &Series) -> Option<String> {
    names
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            let middle = name.strip_prefix(series.prefix)?.strip_suffix(series.suffix)?;
            let number: u32 = middle.parse().ok()?;
            Some((number, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
}

/// The series' kernel, from the cache or downloaded and extracted into it.
fn fetch(cache: &Path, series: &Series) -> anyhow::Result<Kernel> {
    let cached_names: Vec<String> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| cache.join(name).join("done").exists())
        .collect();
    let cached = newest_package(&cached_names.join("\n"), series);
    let package = match cached {
        Some(package) => package,
        None => {
            let options = apt_options(cache, series.suite)?;
            eprintln!("kernel matrix: fetching the package lists of {} ({})", series.suite, debian_archive("/debian"));
            output(Command::new("apt-get").args(&options).args(["update", "-qq"]))?;
            let pattern = format!("^{}", series.prefix.replace('.', "\\."));
            let names = output(Command::new("apt-cache").args(&options).args(["search", "--names-only", &pattern]))?;
            let package = newest_package(&names, series)
                .with_context(|| format!("no package {}*{} in {}", series.prefix, series.suffix, series.suite))?;
            let dir = cache.join(&package);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            eprintln!("kernel matrix: downloading {package}");
            output(Command::new("apt-get").current_dir(&dir).args(&options).args(["download", "-qq", &package]))?;
            let deb = fs::read_dir(&dir)?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
                .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
            output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("root")))?;
            fs::remove_file(&deb)?;
            fs::write(dir.join("done"), b"")?;
            package
        }
    };
    let root = cache.join(&package).join("root");
    let image = fs::read_dir(root.join("boot"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("no vmlinuz in {}", root.join("boot").display()))?;
    let modules = fs::read_dir(root.join("lib").join("modules"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .next()
        .with_context(|| format!("no modules in {}", root.display()))?
        .join("kernel");
    Ok(Kernel { package, image, modules })
}

/// Finds a module file (`NAME.ko` or `NAME.ko.xz`) under `dir`.
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name) {
                return Some(found);
            }
        } else if let Some(file) = path.file_name().and_then(|file| file.to_str())
            && (file == format!("{name}.ko") || file == format!("{name}.ko.xz"))
        {
            return Some(path);
        }
    }
    None
}

/// Which binary on the host's PATH `name` is.
fn which(name: &str) -> anyhow::Result<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{name} is not on PATH (cargo xtask setup installs it)"))
}

/// The libraries `ldd` lists for `binary`, at their absolute paths.
fn libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = output(Command::new("ldd").arg(binary)).unwrap_or_default();
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// Copies `from` to `root` + `to` (an absolute path), creating the directories.
fn place(root: &Path, from: &Path, to: &Path) -> anyhow::Result<()> {
    let target = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, &target).with_context(|| format!("cannot copy {} to {}", from.display(), target.display()))?;
    Ok(())
}

/// Copies an executable without its debug information (the test binaries are about
/// 100 MB each with it), with the libraries it loads.
fn place_binary(root: &Path, from: &Path, to: &Path) -> anyhow::Result<()> {
    let target = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    output(Command::new("objcopy").arg("--strip-debug").arg(from).arg(&target))
        .with_context(|| format!("cannot copy {}", from.display()))?;
    for library in libraries(from)? {
        if !root.join(library.strip_prefix("/").unwrap_or(&library)).exists() {
            place(root, &fs::canonicalize(&library).unwrap_or(library.clone()), &library)?;
        }
    }
    Ok(())
}

/// Where the guest keeps the test binaries: `rewrite` beside `deps/`, as cargo lays
/// them out, so the tests find it where they look.
const GUEST_TARGET: &str = "/t/debug";

fn build_initramfs(
    kernel: &Kernel,
    out: &Path,
    plan: &[(&'static str, Vec<String>)],
    binaries: &BTreeMap<String, PathBuf>,
    rewrite: &Path,
    upgrade_object: &Path,
) -> anyhow::Result<()> {
    let staging = out.with_extension("d");
    let _ = fs::remove_dir_all(&staging);
    for dir in ["bin", "proc", "sys", "dev", "run", "tmp", "lib/modules", "etc"] {
        fs::create_dir_all(staging.join(dir))?;
    }
    place(&staging, &which("busybox")?, Path::new("/bin/busybox"))?;
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", staging.join("bin").join(applet))?;
    }
    for tool in GUEST_TOOLS {
        let path = which(tool)?;
        place_binary(&staging, &path, &path)?;
    }
    // The tests name a few files of /etc (protocols for ping, and the like).
    for file in ["/etc/protocols", "/etc/services", "/etc/nsswitch.conf"] {
        if Path::new(file).exists() {
            place(&staging, Path::new(file), Path::new(file))?;
        }
    }
    fs::write(staging.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(staging.join("etc/group"), "root:x:0:\n")?;
    place_binary(&staging, rewrite, &Path::new(GUEST_TARGET).join("rewrite"))?;
    place(&staging, upgrade_object, Path::new("/t/upgrade-object"))?;
    for (name, _) in plan {
        let binary = binaries.get(*name).with_context(|| format!("no test binary named {name} was built"))?;
        place_binary(&staging, binary, &Path::new(GUEST_TARGET).join("deps").join(name))?;
    }
    for module in MODULES {
        let file = find_module(&kernel.modules, module)
            .with_context(|| format!("{} has no {module} module", kernel.package))?;
        let target = staging.join("lib/modules").join(format!("{module}.ko"));
        if file.extension().is_some_and(|ext| ext == "xz") {
            let bytes = Command::new("xz").arg("-dc").arg(&file).output().context("cannot run xz")?;
            ensure!(bytes.status.success(), "xz -dc {} failed", file.display());
            fs::write(&target, bytes.stdout)?;
        } else {
            fs::copy(&file, &target)?;
        }
    }
    let init = staging.join("init");
    fs::write(&init, init_script(plan))?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // An uncompressed archive: the kernel unpacks it without a decompressor, and
    // compressing 100 MB would cost more time than it saves.
    let archive = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort | cpio -o -H newc --quiet")
        .current_dir(&staging)
        .stdout(archive)
        .status()
        .context("cannot run cpio")?;
    ensure!(status.success(), "cpio failed ({status})");
    fs::remove_dir_all(&staging)?;
    Ok(())
}

/// The guest's init: mounts, modules, then every test binary of the plan, each line of
/// their output on the console, and a result line per binary.
fn init_script(plan: &[(&'static str, Vec<String>)]) -> String {
    let mut script = String::from(
        "#!/bin/sh\n\
         export PATH=/bin:/usr/bin:/usr/sbin:/sbin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t tmpfs run /run\n\
         mount -t tmpfs tmp /tmp\n\
         for module in /lib/modules/*.ko; do insmod $module || echo \"MATRIX-MODULE-FAILED $module\"; done\n\
         ip link set lo up\n\
         export RUST_BACKTRACE=1 HOME=/tmp\n",
    );
    script.push_str(&format!(
        "export REWRITE_UPGRADE_OBJECT=/t/upgrade-object REWRITE_DIFFERENTIAL_CASES={DIFFERENTIAL_CASES}\n\
         echo \"MATRIX-KERNEL $(uname -r)\"\n"
    ));
    for (name, filters) in plan {
        let mut args: Vec<String> = filters.clone();
        if filters.iter().any(|filter| !filter.starts_with("--")) {
            args.push("--exact".into());
        }
        script.push_str(&format!(
            "echo \"MATRIX-START {name} $(date +%s)\"\n\
             timeout -s KILL {BINARY_TIMEOUT_SECONDS} {GUEST_TARGET}/deps/{name} {} 2>&1\n\
             echo \"MATRIX-RESULT {name} $? $(date +%s)\"\n",
            args.join(" ")
        ));
    }
    script.push_str("echo MATRIX-DONE\nsync\npoweroff -f\n");
    script
}

/// The accelerator QEMU runs the guests with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accelerator {
    /// KVM is there, but has not proved itself yet.
    Untried,
    Kvm,
    Tcg,
}

/// How long a KVM guest may take to reach its init script. Nested KVM has been seen
/// to hang guests at clock set-up; a guest that works gets there in a second or two.
const KVM_PROOF: Duration = Duration::from_secs(20);

fn accelerator() -> Accelerator {
    let usable = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if usable && env::var_os("REWRITE_MATRIX_TCG").is_none() { Accelerator::Untried } else { Accelerator::Tcg }
}

/// Boots the guest with KVM if it works (falling back to TCG for good when it does
/// not), or TCG.
fn boot(series: &Series, kernel: &Kernel, initramfs: &Path, accelerator: &mut Accelerator) -> anyhow::Result<Outcome> {
    if *accelerator != Accelerator::Tcg {
        match boot_with(series, kernel, initramfs, true)? {
            Some(outcome) => {
                *accelerator = Accelerator::Kvm;
                return Ok(outcome);
            }
            None => {
                eprintln!(
                    "kernel matrix: the KVM guest did not reach its init within {} s (or QEMU gave up on KVM); \
                     using TCG",
                    KVM_PROOF.as_secs()
                );
                *accelerator = Accelerator::Tcg;
            }
        }
    }
    boot_with(series, kernel, initramfs, false)?.context("the TCG guest did not start")
}

/// One boot. Returns `None` when a KVM guest does not reach its init in time or QEMU
/// gives up on KVM before it does.
fn boot_with(series: &Series, kernel: &Kernel, initramfs: &Path, kvm: bool) -> anyhow::Result<Option<Outcome>> {
    let started = Instant::now();
    let mut command = Command::new("qemu-system-x86_64");
    if kvm {
        command.args(["-enable-kvm", "-cpu", "max"]);
    } else {
        command.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    command
        .args(["-m", "3072", "-smp", "2", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let accelerator = if kvm { "kvm" } else { "tcg" };
    eprintln!("kernel matrix: booting {} ({}, {accelerator})", kernel.package, series.name);
    let mut child = command.spawn().context("cannot start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut outcome = Outcome {
        series: series.name,
        release: String::new(),
        accelerator,
        passed: 0,
        failed: 0,
        binaries_failed: Vec::new(),
        wall: Duration::ZERO,
        verifier: Vec::new(),
    };
    let mut done = false;
    let mut started_binaries = Vec::new();
    let deadline = started + VM_TIMEOUT;
    loop {
        let proving = kvm && outcome.release.is_empty();
        let until = if proving { (started + KVM_PROOF).min(deadline) } else { deadline };
        match received.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                // Serial consoles end lines with CR LF, and the firmware's screen codes
                // may precede the first line of the guest's own.
                let line = line.trim_end_matches('\r').to_owned();
                println!("[{}] {line}", series.name);
                let line = line.find("MATRIX-").map_or(line.clone(), |at| line[at..].to_owned());
                if let Some(release) = line.strip_prefix("MATRIX-KERNEL ") {
                    outcome.release = release.trim().to_owned();
                } else if let Some(rest) = line.strip_prefix("MATRIX-START ") {
                    started_binaries.push(rest.split_whitespace().next().unwrap_or_default().to_owned());
                } else if let Some(rest) = line.strip_prefix("MATRIX-RESULT ") {
                    let mut fields = rest.split_whitespace();
                    let (name, code) = (fields.next().unwrap_or_default(), fields.next().unwrap_or("?"));
                    if code != "0" {
                        outcome.binaries_failed.push(format!("{name} (exit {code})"));
                    }
                } else if line.starts_with("MATRIX-MODULE-FAILED") {
                    outcome.binaries_failed.push(line.clone());
                } else if line == "MATRIX-DONE" {
                    done = true;
                } else if let Some(result) = line.strip_prefix("test result: ") {
                    outcome.passed += count_before(result, "passed");
                    outcome.failed += count_before(result, "failed");
                } else if let Some(cost) = line.strip_prefix("verifier-cost ") {
                    outcome.verifier.push(cost.to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                if proving {
                    return Ok(None);
                }
                bail!(
                    "the {} guest did not finish within {} minutes (last binary started: {:?}); it was killed",
                    series.name,
                    VM_TIMEOUT.as_secs() / 60,
                    started_binaries.last()
                );
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    outcome.wall = started.elapsed();
    // A KVM guest that never reached its init (QEMU refused the CPU, or crashed):
    // KVM does not work here.
    if kvm && outcome.release.is_empty() {
        return Ok(None);
    }
    if !done {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        bail!(
            "the {} guest stopped before its tests finished (qemu: {status}; last binary started: {:?}) {}",
            series.name,
            started_binaries.last(),
            stderr.trim()
        );
    }
    Ok(Some(outcome))
}

/// The number just before `label` in a line such as "ok. 11 passed; 0 failed; ...".
pub fn count_before(text: &str, label: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(label.trim_start())
        })
        .and_then(|number| number.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_package_of_a_series_is_the_highest_number() {
        let names = "linux-image-6.1.0-55-cloud-amd64-unsigned - Linux 6.1\n\
                     linux-image-6.1.0-57-cloud-amd64-unsigned - Linux 6.1\n\
                     linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1\n\
                     linux-image-6.1.0-57-cloud-amd64-unsigned-dbg - debug symbols\n\
                     linux-image-6.12.118+deb12-cloud-amd64-unsigned - Linux 6.12\n";
        assert_eq!(newest_package(names, &SERIES[1]).as_deref(), Some("linux-image-6.1.0-57-cloud-amd64-unsigned"));
        assert_eq!(
            newest_package(names, &SERIES[2]).as_deref(),
            Some("linux-image-6.12.118+deb12-cloud-amd64-unsigned")
        );
        assert_eq!(newest_package(names, &SERIES[0]), None);
    }

    #[test]
    fn a_kernel_choice_is_one_series_or_all() {
        assert_eq!(selected("all").expect("all").len(), 3);
        assert_eq!(selected("5.10").expect("5.10")[0].suite, "bullseye");
        let error = selected("4.19").expect_err("no such series").to_string();
        assert!(error.contains("5.10, 6.1, 6.12 or all"), "{error}");
    }
}

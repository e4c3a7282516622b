//! Where the CPU time of the UDP figure goes. `perf record` samples every CPU while the
//! flood runs (the software `cpu-clock` event: virtual machines often have no hardware
//! counters, and this one works everywhere), and the samples are summed by the kind of
//! work their function does, in nanoseconds of CPU per packet the server received.
//! Client, router and server share the CPUs, so this is the whole path's cost; the
//! groups say which part of it each backend adds.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Samples per second per CPU. Odd, so it does not beat with periodic timers.
const FREQUENCY: u32 = 1_999;

/// The kinds of work, in report order, and the function-name patterns that make each
/// (the first group whose pattern a name contains wins; the rest is "everything else").
pub const GROUPS: [(&str, &[&str]); 5] = [
    // JIT-ed programs are named bpf_prog_<tag>_<name>; the host may run programs of its own.
    ("rewrite's programs", &["_rewrite_"]),
    (
        "BPF helpers and maps, other programs",
        &["htab_", "jhash", "trie_lookup", "lookup_nulls_elem", "bpf_", "csum_replace", "skb_store_bytes"],
    ),
    ("netfilter and conntrack", &["nf_", "nft_", "ipt_", "conntrack", "nat_", "ct_"]),
    ("XDP and TC hooks, veth", &["xdp", "tcx", "sch_handle", "tc_run", "cls_bpf", "veth_", "dev_map", "napi_"]),
    ("everything else", &[]),
];

/// Functions that mean "this CPU was idle": not part of any packet's cost.
const IDLE: [&str; 7] = ["idle", "halt", "mwait", "do_idle", "cpu_startup_entry", "pv_native_safe", "acpi_"];

/// A running `perf record` over all CPUs for a set time; [`Recording::finish`] waits for
/// it and reads it.
pub struct Recording {
    child: Child,
    file: PathBuf,
}

/// Nanoseconds of CPU per packet, by group (`GROUPS`' order), and the functions that
/// cost the most.
pub struct Breakdown {
    pub groups: Vec<f64>,
    pub total: f64,
    pub top: Vec<(String, f64)>,
}

impl Recording {
    /// Starts sampling into `file` for `duration` (perf times itself with a `sleep`
    /// workload, so no signal has to reach it); panics with the reason if perf is
    /// missing (`cargo xtask setup` installs it).
    pub fn start(file: &Path, duration: Duration) -> Self {
        let child = Command::new("perf")
            .args(["record", "--quiet", "-a", "-e", "cpu-clock", "-F", &FREQUENCY.to_string(), "-o"])
            .arg(file)
            .args(["--", "sleep", &format!("{:.3}", duration.as_secs_f64())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting perf record (run `cargo xtask setup`): {error}"));
        // perf needs a moment to open its events on every CPU.
        std::thread::sleep(Duration::from_millis(300));
        Self { child, file: file.to_path_buf() }
    }

    /// Waits for the recording to end and sums its samples per `packets` delivered.
    pub fn finish(mut self, packets: u64) -> Breakdown {
        let status = self.child.wait().expect("wait for perf record");
        assert!(status.success(), "perf record failed: {status}");
        let report = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "--sort", "sym", "-F", "sample,sym", "-i"])
            .arg(&self.file)
            .output()
            .expect("run perf report");
        assert!(report.status.success(), "perf report: {}", String::from_utf8_lossy(&report.stderr));
        let _ = std::fs::remove_file(&self.file);
        summarise(&String::from_utf8_lossy(&report.stdout), packets)
    }
}

/// Sums `perf report -F sample,sym` lines ("  1234  [k] htab_map_hash").
fn summarise(report: &str, packets: u64) -> Breakdown {
    let per_sample_ns = 1e9 / f64::from(FREQUENCY) / packets.max(1) as f64;
    let mut groups = vec![0.0; GROUPS.len()];
    let mut top = Vec::new();
    for line in report.lines().filter(|line| !line.trim_start().starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(count), Some(_kind), Some(symbol)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let Ok(count) = count.parse::<f64>() else { continue };
        if IDLE.iter().any(|idle| symbol.contains(idle)) {
            continue;
        }
        let ns = count * per_sample_ns;
        let group = GROUPS
            .iter()
            .position(|(_, patterns)| patterns.iter().any(|pattern| symbol.contains(pattern)))
            .unwrap_or(GROUPS.len() - 1);
        groups[group] += ns;
        top.push((symbol.to_owned(), ns));
    }
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(8);
    Breakdown { total: groups.iter().sum(), groups, top }
}

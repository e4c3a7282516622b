//! Per-packet cost of the programs, measured by BPF_PROG_TEST_RUN: the kernel runs the
//! program `REPEAT` times on one frame and reports the mean time per run. Compared with
//! an XDP program that only returns XDP_PASS, at 1 and at 1,000,000 mappings.
//!
//! The kernel reruns a program on the same buffer, so a rewritten frame would miss the
//! table on every run after the first. To time the matching path on every run, the
//! table also holds the inverse of the target mapping (REAL -> VIRTUAL), which the CLI
//! would refuse: the frame then flips between the two addresses and matches each time.
//! The outcome counters prove it: every run of a "match" column counts as rewritten.
//!
//! Run with `cargo xtask bench`. Prints a markdown table with the machine's description.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use rewrite_common::counters::{EGRESS, INGRESS, NO_MATCH, REWRITTEN};
use rewrite_tests::{
    netns::PinDir,
    packet::{IpSpec, verify_checksums},
};
use rewrite_user::{
    loader::{self, PROG_BENCH_XDP_PASS, PROG_TC_EGRESS, PROG_XDP_INGRESS},
    maps::{Counters, Mapping, MappingTable},
    pins::PinLayout,
};

const REPEAT: u32 = 200_000;
const PASSES: usize = 7;
const SIZES: [u32; 2] = [1, 1_000_000];

fn virtual_addr(index: u32) -> IpAddr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + index).into()
}

fn real_addr(index: u32) -> IpAddr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + index).into()
}

fn run_once(ebpf: &Ebpf, program: &str, frame: &[u8]) -> Duration {
    let mut output = vec![0u8; frame.len() + 64];
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut output),
        repeat: REPEAT,
        ..TestRunOptions::default()
    };
    let loaded = ebpf.program(program).expect("program in object");
    let result = if program == PROG_TC_EGRESS {
        let tc: &SchedClassifier = loaded.try_into().expect("TC program");
        tc.test_run(options)
    } else {
        let xdp: &Xdp = loaded.try_into().expect("XDP program");
        xdp.test_run(options)
    };
    let result = result.unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of {program}: {error:?}"));
    output.truncate(result.data_size_out as usize);
    verify_checksums(&output).expect("benchmark output must stay valid");
    result.duration
}

/// Median, min and max of `PASSES` runs, in nanoseconds per packet, after checking that
/// every run counted `outcome` (when given) in `direction`.
fn measure(
    ebpf: &Ebpf,
    layout: &PinLayout,
    program: &str,
    frame: &[u8],
    expect: Option<(u32, u32)>,
) -> (f64, f64, f64) {
    let before = Counters::read(layout).expect("read counters");
    let mut samples: Vec<f64> = (0..PASSES).map(|_| run_once(ebpf, program, frame).as_secs_f64() * 1e9).collect();
    if let Some((direction, outcome)) = expect {
        let runs =
            Counters::read(layout).expect("read counters").get(direction, outcome) - before.get(direction, outcome);
        assert_eq!(runs, u64::from(REPEAT) * PASSES as u64, "{program}: not every run took the measured path");
    }
    samples.sort_by(f64::total_cmp);
    (samples[PASSES / 2], samples[0], samples[PASSES - 1])
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .map(|line| line.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpus} x {cpu}, Linux {}", kernel.trim())
}

fn main() {
    let pins = PinDir::new("bench");
    let layout = PinLayout::new(pins.path());
    layout.create_dir(&layout.maps_dir()).expect("pin dir on bpffs");
    let mut ebpf = loader::load(&layout.maps_dir(), None).expect("load object");
    for name in [PROG_XDP_INGRESS, PROG_BENCH_XDP_PASS] {
        let xdp: &mut Xdp = ebpf.program_mut(name).expect("program").try_into().expect("XDP");
        xdp.load().expect("verifier accepts");
    }
    let tc: &mut SchedClassifier = ebpf.program_mut(PROG_TC_EGRESS).expect("program").try_into().expect("TC");
    tc.load().expect("verifier accepts");
    let mut table = MappingTable::open(&layout).expect("open maps");

    println!(
        "# Per-packet cost (BPF_PROG_TEST_RUN, {REPEAT} runs per pass, median of {PASSES} passes [min-max], ns)\n"
    );
    println!("Machine: {}\n", machine());
    println!(
        "| mappings | empty XDP | XDP ingress, match | XDP ingress, no match | TC egress, match | TC egress, no match |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let local = Ipv4Addr::new(192, 168, 77, 1);
    let stranger = Ipv4Addr::new(192, 0, 2, 1);
    let mut installed = 0;
    for size in SIZES {
        let batch: Vec<Mapping> = (installed..size)
            .map(|index| Mapping { virtual_addr: virtual_addr(index), real_addr: real_addr(index) })
            .collect();
        let started = std::time::Instant::now();
        table.insert_new_unchecked(&batch).expect("fill the table");
        eprintln!("installed {} mappings in {:?}", batch.len(), started.elapsed());
        installed = size;
        // A mapping from the middle of the table, so the lookup is not the first entry,
        // plus its inverse so that the rewritten frame matches again on the next run.
        let target = size / 2;
        let inverse = Mapping { virtual_addr: real_addr(target), real_addr: virtual_addr(target) };
        table.insert_new_unchecked(&[inverse]).expect("insert the inverse mapping");
        let ingress_match = IpSpec::tcp(real_addr(target), local).frame();
        let ingress_miss = IpSpec::tcp(stranger, local).frame();
        let egress_match = IpSpec::tcp(local, virtual_addr(target)).frame();
        let egress_miss = IpSpec::tcp(local, stranger).frame();
        let cells = [
            measure(&ebpf, &layout, PROG_BENCH_XDP_PASS, &ingress_match, None),
            measure(&ebpf, &layout, PROG_XDP_INGRESS, &ingress_match, Some((INGRESS, REWRITTEN))),
            measure(&ebpf, &layout, PROG_XDP_INGRESS, &ingress_miss, Some((INGRESS, NO_MATCH))),
            measure(&ebpf, &layout, PROG_TC_EGRESS, &egress_match, Some((EGRESS, REWRITTEN))),
            measure(&ebpf, &layout, PROG_TC_EGRESS, &egress_miss, Some((EGRESS, NO_MATCH))),
        ];
        // The inverse would make the next size's batch collide with it.
        table.remove_mapping(real_addr(target)).expect("remove the inverse mapping");
        let cells: Vec<String> =
            cells.iter().map(|(median, min, max)| format!("{median:.1} [{min:.1}-{max:.1}]")).collect();
        println!("| {size} | {} |", cells.join(" | "));
    }
}

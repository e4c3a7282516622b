//! Per-packet cost of the XDP ingress program for each lookup path (port-scoped hit,
//! address hit, prefix hit, miss), against an XDP program that only returns XDP_PASS,
//! from 1 to 1,000,000 entries: once with address mappings only (the table the
//! netfilter comparison uses), once with every table holding that many entries. Measured by BPF_PROG_TEST_RUN: the
//! kernel runs the program many times on one frame and reports the mean time per
//! run. The TC egress program's address hit and miss are shown for comparison.
//!
//! The kernel reruns a program on the same buffer, so a rewritten frame would miss on
//! every run after the first. So the tables also hold the inverse of each measured
//! entry (which the CLI would refuse): the frame flips between the two addresses and
//! matches every time. The outcome counters prove it: every run of a hit column counts
//! as rewritten, every run of the miss column as no match.
//!
//! Run with `cargo xtask bench` (`--quick`: 1 and 100 entries, fewer runs). Prints the
//! markdown tables and writes them, with a CSV, where the `versus` benchmark's report
//! picks them up.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use rewrite_common::mapping::AddressMapping;
use rewrite_common::pinned::{PROG_BENCH_XDP_PASS, PROG_TC_EGRESS, PROG_XDP_INGRESS};
use rewrite_common::{
    counters::{EGRESS, INGRESS, NO_MATCH, REWRITTEN, UNSUPPORTED},
    mapping::{PortMapping, PrefixMapping},
    maps::MAX_PREFIX_MAPPINGS,
    ports::PortRange,
    protocol::Protocol,
};
use rewrite_common::{
    maps::Addr,
    trace::{AddressTerm, SIDE_EITHER, TraceFilter},
};
use rewrite_tests::{
    packet::{IpSpec, verify_checksums},
    programs::{LoadedObject, TraceMaps},
};
use rewrite_user::table::counters::Counters;

struct Plan {
    repeat: u32,
    passes: usize,
    sizes: Vec<u32>,
    out_dir: std::path::PathBuf,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        if quick {
            Self { repeat: 20_000, passes: 3, sizes: vec![1, 100], out_dir: root.join("target/bench-quick") }
        } else {
            Self {
                repeat: 200_000,
                passes: 7,
                sizes: vec![1, 100, 1_000, 10_000, 100_000, 1_000_000],
                out_dir: root.join("docs/benchmarks"),
            }
        }
    }
}

/// Median, min and max in nanoseconds per packet.
#[derive(Clone, Copy)]
struct Cost {
    median: f64,
    min: f64,
    max: f64,
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} [{:.0}–{:.0}]", self.median, self.min, self.max)
    }
}

fn nth(base: [u8; 4], index: u32) -> IpAddr {
    Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + index).into()
}

/// Address mappings: 10.0.0.0/12 -> 100.64.0.0/12.
fn address(index: u32) -> AddressMapping {
    AddressMapping { virtual_addr: nth([10, 0, 0, 0], index), real_addr: nth([100, 64, 0, 0], index) }
}

/// Port-scoped mappings: 172.16.0.0/12 port 80 -> 32 ports per address of 198.18.0.0/15.
fn service(index: u32) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp,
        virtual_addr: nth([172, 16, 0, 0], index),
        virtual_first: 80,
        real_addr: nth([198, 18, 0, 0], index / 32),
        real_first: 1024 + u16::try_from(index % 32).expect("below 32"),
        count: 1,
    }
}

/// Prefix mappings: /24s from 10.64.0.0 -> /24s from 100.128.0.0.
fn subnet(index: u32) -> PrefixMapping {
    PrefixMapping {
        virtual_net: nth([10, 64, 0, 0], index * 256),
        real_net: nth([100, 128, 0, 0], index * 256),
        len: 24,
    }
}

fn inverse_ports(mapping: &PortMapping) -> PortMapping {
    PortMapping {
        virtual_addr: mapping.real_addr,
        virtual_first: mapping.real_first,
        real_addr: mapping.virtual_addr,
        real_first: mapping.virtual_first,
        ..*mapping
    }
}

fn run_once(loaded: &LoadedObject, program: &str, frame: &[u8], repeat: u32) -> Duration {
    let (result, duration) = loaded
        .test_run(program, frame, repeat)
        .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of {program}: {error:?}"));
    verify_checksums(&result.output).expect("benchmark output must stay valid");
    duration
}

/// One path measured: a program run on a frame, and the outcome every run must count
/// (`(direction, outcome)`), if any.
struct Path<'a> {
    program: &'a str,
    frame: &'a [u8],
    expect: Option<(u32, u32)>,
}

fn path<'a>(program: &'a str, frame: &'a [u8], expect: Option<(u32, u32)>) -> Path<'a> {
    Path { program, frame, expect }
}

/// Median, min and max of the plan's passes for each path, in nanoseconds per packet,
/// after checking that every run counted its outcome. The passes are interleaved (pass 1
/// of every path, then pass 2, ...), so that a slow spell of the shared machine falls on
/// one pass of each path, which the median drops, rather than on every pass of one path.
fn measure_row(plan: &Plan, loaded: &LoadedObject, paths: &[Path<'_>]) -> Vec<Cost> {
    let mut samples = vec![Vec::with_capacity(plan.passes); paths.len()];
    for _ in 0..plan.passes {
        for (path, samples) in paths.iter().zip(&mut samples) {
            let before = Counters::read(&loaded.layout).expect("read counters");
            samples.push(run_once(loaded, path.program, path.frame, plan.repeat).as_secs_f64() * 1e9);
            if let Some((direction, outcome)) = path.expect {
                let runs = Counters::read(&loaded.layout).expect("read counters").get(direction, outcome)
                    - before.get(direction, outcome);
                assert_eq!(runs, u64::from(plan.repeat), "{}: not every run took the measured path", path.program);
            }
        }
    }
    samples
        .into_iter()
        .map(|mut samples| {
            samples.sort_by(f64::total_cmp);
            Cost { median: samples[plan.passes / 2], min: samples[0], max: samples[plan.passes - 1] }
        })
        .collect()
}

/// An ARP request: a frame the programs look at only as far as its ethertype.
fn arp_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    // Ethernet, IPv4, sizes 6 and 4, request; sender 02:00:00:00:00:01 192.0.2.1, target 192.0.2.2.
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2]);
    frame
}

/// Where a program's time goes on the address-only table of the first size, each
/// stage the difference between two paths that differ only by it.
struct Stages {
    /// The empty XDP program: BPF_PROG_TEST_RUN's own cost per run.
    empty: Cost,
    /// XDP and TC egress on a frame that is not IP: entry, scratch area, gate check,
    /// outcome counter, and (XDP) the bounce tail call, with nothing to parse.
    xdp_not_ip: Cost,
    tc_not_ip: Cost,
}

/// Size of a loaded program: instructions after the verifier's rewrites, JIT bytes, and
/// the instructions the verifier walked to accept it.
struct ProgramSize {
    name: &'static str,
    xlated_instructions: u32,
    jited_bytes: u32,
    verified_instructions: Option<u32>,
}

fn program_size(loaded: &LoadedObject, name: &'static str) -> ProgramSize {
    let info = loaded
        .ebpf
        .program(name)
        .unwrap_or_else(|| panic!("{name} in the object"))
        .info()
        .unwrap_or_else(|error| panic!("program info of {name}: {error}"));
    ProgramSize {
        name,
        xlated_instructions: info.size_translated().unwrap_or(0) / 8,
        jited_bytes: info.size_jitted(),
        verified_instructions: info.verified_instruction_count(),
    }
}

/// The object with fresh maps and the programs measured.
fn load() -> LoadedObject {
    LoadedObject::new("bench", None, &[PROG_XDP_INGRESS, PROG_BENCH_XDP_PASS, PROG_TC_EGRESS])
}

const ADDRESS_COLUMNS: [&str; 5] =
    ["empty XDP", "XDP address hit", "XDP miss", "TC egress address hit", "TC egress miss"];
const ALL_COLUMNS: [&str; 7] = [
    "empty XDP",
    "XDP port hit",
    "XDP address hit",
    "XDP prefix hit",
    "XDP miss",
    "TC egress address hit",
    "TC egress miss",
];

fn main() {
    let plan = Plan::new(std::env::args().any(|arg| arg == "--quick"));
    let client = IpAddr::from(Ipv4Addr::new(192, 168, 77, 1));
    let stranger = IpAddr::from(Ipv4Addr::new(192, 0, 2, 1));

    // Address mappings only: the port and prefix tables are empty, and the programs
    // skip their lookups. This is the table the netfilter comparison uses.
    let mut address_rows = Vec::new();
    let mut stages = None;
    let mut tracing = None;
    let sizes;
    {
        let loaded = load();
        sizes = [PROG_XDP_INGRESS, PROG_TC_EGRESS].map(|name| program_size(&loaded, name));
        let mut table = loaded.table();
        let mut installed = 0;
        for &size in &plan.sizes {
            let addresses: Vec<AddressMapping> = (installed..size).map(address).collect();
            table.insert_new_unchecked(&addresses).expect("fill the address table");
            installed = size;
            let target = address(size / 2);
            let inverse = AddressMapping { virtual_addr: target.real_addr, real_addr: target.virtual_addr };
            table.insert_new_unchecked(&[inverse]).expect("inverse address");
            let hit = IpSpec::tcp(target.real_addr, client).frame();
            let miss = IpSpec::tcp(stranger, client).frame();
            let egress_hit = IpSpec::tcp(client, target.virtual_addr).frame();
            let egress_miss = IpSpec::tcp(client, stranger).frame();
            let arp = arp_frame();
            let mut paths = vec![
                path(PROG_BENCH_XDP_PASS, &hit, None),
                path(PROG_XDP_INGRESS, &hit, Some((INGRESS, REWRITTEN))),
                path(PROG_XDP_INGRESS, &miss, Some((INGRESS, NO_MATCH))),
                path(PROG_TC_EGRESS, &egress_hit, Some((EGRESS, REWRITTEN))),
                path(PROG_TC_EGRESS, &egress_miss, Some((EGRESS, NO_MATCH))),
            ];
            // The stages of the first size are measured in the same passes.
            if stages.is_none() {
                paths.push(path(PROG_XDP_INGRESS, &arp, Some((INGRESS, UNSUPPORTED))));
                paths.push(path(PROG_TC_EGRESS, &arp, Some((EGRESS, UNSUPPORTED))));
            }
            let mut cells = measure_row(&plan, &loaded, &paths);
            if tracing.is_none() {
                tracing = Some(trace_costs(&plan, &loaded, size, &hit, &egress_hit));
            }
            if stages.is_none() {
                let tc_not_ip = cells.pop().expect("the TC stage");
                let xdp_not_ip = cells.pop().expect("the XDP stage");
                stages = Some(Stages { empty: cells[0], xdp_not_ip, tc_not_ip });
            }
            eprintln!(
                "address table, {size} entries: {}",
                cells.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | ")
            );
            address_rows.push((size, cells));
            table.remove_mapping(inverse.virtual_addr).expect("remove inverse");
        }
    }

    // Every table holding that many entries (the prefix trie at most its capacity).
    let mut all_rows = Vec::new();
    let loaded = load();
    let mut table = loaded.table();
    let mut installed = 0;
    for &size in &plan.sizes {
        let started = std::time::Instant::now();
        let addresses: Vec<AddressMapping> = (installed..size).map(address).collect();
        table.insert_new_unchecked(&addresses).expect("fill the address table");
        let services: Vec<PortMapping> = (installed..size).map(service).collect();
        table.insert_ports_unchecked(&services).expect("fill the port table");
        // One slot stays free for the inverse entry below.
        let prefixes = MAX_PREFIX_MAPPINGS - 1;
        for index in installed.min(prefixes)..size.min(prefixes) {
            table.insert_prefix_unchecked(&subnet(index)).expect("fill the prefix trie");
        }
        eprintln!("installed {} entries per table in {:?}", size - installed, started.elapsed());
        installed = size;

        // Entries from the middle of each table, with their inverses (see the top).
        let target = size / 2;
        let (addr, port, prefix) = (address(target), service(target), subnet(target.min(MAX_PREFIX_MAPPINGS - 2)));
        let inverse_addr = AddressMapping { virtual_addr: addr.real_addr, real_addr: addr.virtual_addr };
        table.insert_new_unchecked(&[inverse_addr]).expect("inverse address");
        table.insert_ports_unchecked(&[inverse_ports(&port)]).expect("inverse port");
        let inverse_prefix =
            PrefixMapping { virtual_net: prefix.real_net, real_net: prefix.virtual_net, len: prefix.len };
        table.insert_prefix_unchecked(&inverse_prefix).expect("inverse prefix");

        let port_hit = IpSpec::tcp(port.real_addr, client).with_ports(port.real_first, 40000).frame();
        let address_hit = IpSpec::tcp(addr.real_addr, client).frame();
        let prefix_host = match prefix.real_net {
            IpAddr::V4(net) => IpAddr::from(Ipv4Addr::from(u32::from(net) + 7)),
            IpAddr::V6(_) => unreachable!("IPv4 prefixes"),
        };
        let prefix_hit = IpSpec::tcp(prefix_host, client).frame();
        let miss = IpSpec::tcp(stranger, client).frame();
        let egress_hit = IpSpec::tcp(client, addr.virtual_addr).frame();
        let egress_miss = IpSpec::tcp(client, stranger).frame();
        let cells = measure_row(
            &plan,
            &loaded,
            &[
                path(PROG_BENCH_XDP_PASS, &address_hit, None),
                path(PROG_XDP_INGRESS, &port_hit, Some((INGRESS, REWRITTEN))),
                path(PROG_XDP_INGRESS, &address_hit, Some((INGRESS, REWRITTEN))),
                path(PROG_XDP_INGRESS, &prefix_hit, Some((INGRESS, REWRITTEN))),
                path(PROG_XDP_INGRESS, &miss, Some((INGRESS, NO_MATCH))),
                path(PROG_TC_EGRESS, &egress_hit, Some((EGRESS, REWRITTEN))),
                path(PROG_TC_EGRESS, &egress_miss, Some((EGRESS, NO_MATCH))),
            ],
        );
        eprintln!(
            "all tables, {size} entries: {}",
            cells.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | ")
        );
        all_rows.push((size, cells));

        // Take the inverses out again: the next size's batch would collide with them.
        table.remove_mapping(inverse_addr.virtual_addr).expect("remove inverse address");
        let inverse = inverse_ports(&port);
        table
            .remove_ports(inverse.protocol, inverse.virtual_addr, PortRange::single(inverse.virtual_first))
            .expect("remove inverse port");
        table.remove_prefix(inverse_prefix.virtual_net, inverse_prefix.len).expect("remove inverse prefix");
    }
    let stages = stages.expect("at least one size");
    let mut sections = breakdown(&stages, &address_rows, &all_rows, &sizes);
    sections.push_str(&tracing.expect("at least one size"));
    write_report(&plan, &address_rows, &all_rows, &sections);
}

/// Runs per pass of the tracing paths: the ring holds about 10,000 records, so every
/// run of a "recorded" path writes one before the ring is read.
const TRACE_REPEAT: u32 = 4_000;

/// The tracing section: the address hit of the XDP and TC egress programs with no
/// trace reader, with one whose filter leaves the packet out, and with one that records
/// it (no rate limit; the ring is read between runs), interleaved pass by pass.
fn trace_costs(plan: &Plan, loaded: &LoadedObject, size: u32, xdp_hit: &[u8], tc_hit: &[u8]) -> String {
    let mut trace = TraceMaps::open(loaded);
    let mut nobody = TraceFilter::default();
    nobody.addresses[0] = AddressTerm {
        value: Addr::from(IpAddr::from(Ipv4Addr::new(192, 0, 2, 200))),
        mask: Addr { octets: [0xff; 16] },
        side: SIDE_EITHER,
        reserved: [0; 3],
    };
    let states = [None, Some(nobody), Some(TraceFilter::default())];
    let programs = [(PROG_XDP_INGRESS, xdp_hit), (PROG_TC_EGRESS, tc_hit)];
    let mut samples = vec![vec![Vec::with_capacity(plan.passes); states.len()]; programs.len()];
    for _ in 0..plan.passes {
        for (state_index, state) in states.iter().enumerate() {
            match state {
                None => trace.turn_off(),
                Some(filter) => trace.turn_on(*filter, u32::MAX),
            }
            for (program_index, (program, frame)) in programs.iter().enumerate() {
                trace.records();
                let nanos = run_once(loaded, program, frame, TRACE_REPEAT).as_secs_f64() * 1e9;
                let recorded = trace.records().len();
                let wanted = if state_index == 2 { TRACE_REPEAT as usize } else { 0 };
                assert_eq!(recorded, wanted, "{program}, trace state {state_index}: every run takes the measured path");
                samples[program_index][state_index].push(nanos);
            }
        }
    }
    trace.turn_off();
    let median = |samples: &[f64]| {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let mut text = format!(
        "#### Tracing (`rewrite trace`)\n\n\
         The address hit at N = {size}, {TRACE_REPEAT} runs per pass, median of {} passes, the three states \
         interleaved: no reader (the one read of the lease), a reader whose filter leaves the packet out, and \
         one that records it (no rate limit; the ring is read between runs). ns per packet.\n\n\
         | program | trace off | on, filtered out | on, recorded | filtered out − off | recorded − off |\n\
         |---|---:|---:|---:|---:|---:|\n",
        plan.passes
    );
    for ((program, _), samples) in programs.iter().zip(&samples) {
        let [off, filtered, recorded] = [median(&samples[0]), median(&samples[1]), median(&samples[2])];
        text.push_str(&format!(
            "| {program} | {off:.0} | {filtered:.0} | {recorded:.0} | {:.0} | {:.0} |\n",
            filtered - off,
            recorded - off
        ));
    }
    text.push('\n');
    text
}

/// The "where the time goes" section: stage costs by difference, the figures the
/// performance targets are stated in, and the programs' sizes.
fn breakdown(
    stages: &Stages,
    address_rows: &[(u32, Vec<Cost>)],
    all_rows: &[(u32, Vec<Cost>)],
    sizes: &[ProgramSize],
) -> String {
    let (size, address) = &address_rows[0];
    let (_, all) = &all_rows[0];
    // Columns of ADDRESS_COLUMNS and ALL_COLUMNS.
    let (xdp_hit, xdp_miss, tc_hit, tc_miss) =
        (address[1].median, address[2].median, address[3].median, address[4].median);
    let empty = stages.empty.median;
    let (xdp_not_ip, tc_not_ip) = (stages.xdp_not_ip.median, stages.tc_not_ip.median);
    let mut text = format!(
        "#### Where the time goes\n\n\
         Medians at N = {size} (address table), in ns per packet; each stage is the difference between two \
         paths that differ only by it.\n\n\
         | stage | XDP ingress | TC egress |\n|---|---:|---:|\n\
         | BPF_PROG_TEST_RUN itself (the empty XDP program) | {empty:.0} | {empty:.0} |\n\
         | entry, scratch area, gate check, outcome counter (a frame that is not IP; XDP: the bounce tail call; TC: the skb's context) | {:.0} | {:.0} |\n\
         | parsing Ethernet, IP and the ports, and both address lookups (miss − not IP) | {:.0} | {:.0} |\n\
         | the entry's counters, the rewrite and its checksums (hit − miss) | {:.0} | {:.0} |\n\n",
        xdp_not_ip - empty,
        tc_not_ip - empty,
        xdp_miss - xdp_not_ip,
        tc_miss - tc_not_ip,
        xdp_hit - xdp_miss,
        tc_hit - tc_miss,
    );
    let ratio = |all_column: usize, address_column: usize| all[all_column].median / address[address_column].median;
    text.push_str(&format!(
        "Against the targets: XDP address hit {:.0} ns over the empty program (target ≤ 40), TC egress address \
         hit {:.0} ns over it (target ≤ 80); with every table in use, XDP address hit {:.2}×, XDP miss {:.2}× \
         and TC egress hit {:.2}× the address-only figure (target ≤ 1.3×). Nanoseconds are this machine's: \
         the empty program's cost is a rough gauge of its speed.\n\n",
        xdp_hit - empty,
        tc_hit - empty,
        ratio(2, 1),
        ratio(4, 2),
        ratio(5, 3),
    ));
    text.push_str(
        "| program | instructions (after the verifier) | JIT bytes | instructions the verifier walked |\n|---|---:|---:|---:|\n",
    );
    for program in sizes {
        let verified = program.verified_instructions.map_or_else(|| "–".to_owned(), |count| count.to_string());
        text.push_str(&format!(
            "| {} | {} | {} | {verified} |\n",
            program.name, program.xlated_instructions, program.jited_bytes
        ));
    }
    text.push('\n');
    text
}

fn write_report(plan: &Plan, address_rows: &[(u32, Vec<Cost>)], all_rows: &[(u32, Vec<Cost>)], breakdown: &str) {
    let mut markdown = format!(
        "### Per-packet program cost (BPF_PROG_TEST_RUN, ns per packet)\n\n\
         {} runs per pass, median of {} passes [min–max], on {}; the passes of a row's paths are \
         interleaved, so that a slow spell of the shared machine costs each path one pass, not all of one \
         path's. The same frame is run again and again, \
         so the entries it uses stay in the CPU's caches: this is the cost of the program's work, not of \
         cache misses on a large table under real traffic.\n\n",
        plan.repeat,
        plan.passes,
        rewrite_tests::machine::describe()
    );
    let mut csv = String::from("tables,entries,path,median_ns,min_ns,max_ns\n");
    for (title, tables, columns, rows) in [
        ("Address mappings only (as in the netfilter comparison)", "address", &ADDRESS_COLUMNS[..], address_rows),
        ("Every table holding N entries (prefix trie: at most 16,383)", "all", &ALL_COLUMNS[..], all_rows),
    ] {
        markdown.push_str(&format!(
            "#### {title}\n\n| N | {} |\n|---:|{}\n",
            columns.join(" | "),
            "---:|".repeat(columns.len())
        ));
        for (size, cells) in rows {
            let text: Vec<String> = cells.iter().map(ToString::to_string).collect();
            markdown.push_str(&format!("| {size} | {} |\n", text.join(" | ")));
            for (column, cost) in columns.iter().zip(cells) {
                csv.push_str(&format!("{tables},{size},{column},{:.1},{:.1},{:.1}\n", cost.median, cost.min, cost.max));
            }
        }
        // Flatness: each path's median at the largest N against the smallest.
        if let (Some((first_size, first)), Some((last_size, last))) = (rows.first(), rows.last()) {
            let ratios: Vec<String> = columns
                .iter()
                .zip(first.iter().zip(last))
                .skip(1)
                .map(|(column, (a, b))| format!("{column} {:.2}×", b.median / a.median))
                .collect();
            markdown.push_str(&format!("\nN = {last_size} against N = {first_size}: {}.\n\n", ratios.join(", ")));
        }
    }
    markdown.push_str(breakdown);
    println!("{markdown}");
    std::fs::create_dir_all(&plan.out_dir).expect("create the output directory");
    std::fs::write(plan.out_dir.join("prog_cost.md"), markdown).expect("write prog_cost.md");
    std::fs::write(plan.out_dir.join("prog_cost.csv"), csv).expect("write prog_cost.csv");
}

//! Differential test: the real programs (BPF_PROG_TEST_RUN) against the reference
//! model (`rewrite_common::model::ModelTable`), on packets proptest generates from pools
//! of addresses and ports that hit every mapping kind and miss them all. The expected
//! frame is built from scratch by the test's packet builder (every checksum computed in
//! full), so it shares no checksum code with the programs.
//!
//! `REWRITE_DIFFERENTIAL_CASES` sets the number of cases (default 100,000);
//! `cargo xtask fuzz --cases N` runs this test with N.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use rewrite_common::{
    mapping::{Direction, Rewrite},
    model::ModelTable,
    spec::MappingSpec,
};
use rewrite_tests::{
    packet::{IpSpec, Transport, hex, verify_checksums},
    programs::LoadedObject,
};
use rewrite_user::loader::{PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_INGRESS};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC.
const TC_NEXT: u32 = u32::MAX;
const DEFAULT_CASES: u32 = 100_000;

/// The table under test, in the maps and in the model alike.
const MAPPINGS: [(&str, &str); 9] = [
    ("10.200.0.2", "10.100.0.2"),
    ("10.200.0.9", "10.100.0.9"),
    ("fd00::2", "2001:db8::2"),
    ("fd00::9", "2001:db8::9"),
    ("10.200.0.2:9200/tcp", "10.100.0.30:9400/tcp"),
    ("10.200.0.3:5000-5009/udp", "10.100.0.31:6000-6009/udp"),
    ("[fd00::2]:443/tcp", "[2001:db8::30]:8443/tcp"),
    ("10.201.0.0/16", "172.20.0.0/16"),
    ("fd01::/64", "2001:db8:1::/64"),
];

/// Addresses the generator draws from: every side of every mapping, hosts inside the
/// prefixes, and strangers.
const V4_POOL: [&str; 12] = [
    "10.100.0.1",
    "10.200.0.2",
    "10.100.0.2",
    "10.200.0.9",
    "10.100.0.9",
    "10.100.0.30",
    "10.200.0.3",
    "10.100.0.31",
    "10.201.3.7",
    "172.20.3.7",
    "192.0.2.1",
    "10.201.255.255",
];
const V6_POOL: [&str; 10] = [
    "2001:db8::1",
    "fd00::2",
    "2001:db8::2",
    "fd00::9",
    "2001:db8::9",
    "2001:db8::30",
    "fd01::1:2",
    "2001:db8:1::1:2",
    "2001:db8:ffff::1",
    "fd02::1",
];
const PORT_POOL: [u16; 10] = [9200, 9400, 5000, 5009, 6000, 6009, 443, 8443, 22, 40000];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    XdpIngress,
    TcIngress,
    TcEgress,
}

impl Hook {
    fn direction(self) -> Direction {
        if self == Self::TcEgress { Direction::Egress } else { Direction::Ingress }
    }
}

struct Programs {
    object: LoadedObject,
    model: ModelTable,
}

impl Programs {
    fn new() -> Self {
        let object = LoadedObject::new("differential", None, &[PROG_XDP_INGRESS, PROG_TC_INGRESS, PROG_TC_EGRESS]);
        let mut table = object.table();
        let mut model = ModelTable::default();
        for (virtual_side, real_side) in MAPPINGS {
            let spec = MappingSpec::parse(virtual_side, real_side).expect("a valid mapping");
            match spec {
                MappingSpec::Address { virtual_addr, real_addr } => {
                    table.add(virtual_addr, real_addr).map(drop).expect("add to the maps");
                    model.add(virtual_addr, real_addr).map(drop).expect("add to the model");
                }
                MappingSpec::Ports(mapping) => {
                    table.add_ports(&mapping).map(drop).expect("add to the maps");
                    model.add_ports(&mapping).map(drop).expect("add to the model");
                }
                MappingSpec::Prefix(mapping) => {
                    table.add_prefix(&mapping).map(drop).expect("add to the maps");
                    model.add_prefix(&mapping).map(drop).expect("add to the model");
                }
            }
        }
        Self { object, model }
    }

    /// The program's output frame, after checking its verdict (always "pass").
    fn run(&self, hook: Hook, input: &[u8]) -> Result<Vec<u8>, TestCaseError> {
        let (program, pass) = match hook {
            Hook::XdpIngress => (PROG_XDP_INGRESS, XDP_PASS),
            Hook::TcIngress => (PROG_TC_INGRESS, TC_NEXT),
            Hook::TcEgress => (PROG_TC_EGRESS, TC_NEXT),
        };
        let (result, _) = self
            .object
            .test_run(program, input, 1)
            .map_err(|error| TestCaseError::fail(format!("BPF_PROG_TEST_RUN failed: {error:?}")))?;
        prop_assert_eq!(result.verdict, pass, "{:?} must let every packet pass", hook);
        Ok(result.output)
    }

    /// What the model says `spec` becomes through `hook`.
    fn expected(&self, hook: Hook, spec: &IpSpec) -> (IpSpec, Rewrite) {
        let ports = match &spec.transport {
            Transport::Tcp { src_port, dst_port, .. } => Some((6, *src_port, *dst_port)),
            Transport::Udp { src_port, dst_port, .. } => Some((17, *src_port, *dst_port)),
            _ => None,
        };
        let rewrite = self.model.rewrite(hook.direction(), spec.src, spec.dst, ports);
        let src = rewrite.src.map_or(spec.src, |target| IpAddr::from(target.addr));
        let dst = rewrite.dst.map_or(spec.dst, |target| IpAddr::from(target.addr));
        let mut expected = spec.with_addresses(src, dst);
        if let Some((_, src_port, dst_port)) = ports {
            let port = |target: Option<rewrite_common::mapping::Target>, old: u16| {
                target.and_then(|target| target.port).map_or(old, u16::from_be_bytes)
            };
            expected = expected.with_ports(port(rewrite.src, src_port), port(rewrite.dst, dst_port));
        }
        (expected, rewrite)
    }
}

/// One generated case: a packet and the hook it meets.
#[derive(Clone, Debug)]
struct Case {
    hook: Hook,
    spec: IpSpec,
}

fn case() -> impl Strategy<Value = Case> {
    let hook = prop_oneof![Just(Hook::XdpIngress), Just(Hook::TcIngress), Just(Hook::TcEgress)];
    let ipv6 = any::<bool>();
    let addresses = (0..V4_POOL.len().max(V6_POOL.len()), 0..V4_POOL.len().max(V6_POOL.len()));
    let port = prop_oneof![3 => proptest::sample::select(PORT_POOL.to_vec()), 1 => any::<u16>()];
    let transport = 0..3u8;
    let payload = proptest::collection::vec(any::<u8>(), 0..64);
    let vlan = proptest::option::weighted(0.2, 1..4095u16);
    // IPv4 options: a multiple of 4 bytes of NOPs with an end-of-list, IHL 6 to 15.
    let options = proptest::option::weighted(0.2, 1..=10usize);
    (hook, ipv6, addresses, port.clone(), port, transport, payload, vlan, options, any::<bool>()).prop_map(
        |(hook, ipv6, (src, dst), src_port, dst_port, transport, payload, vlan, options, zero_udp_checksum)| {
            let pick = |index: usize| -> IpAddr {
                let text = if ipv6 { V6_POOL[index % V6_POOL.len()] } else { V4_POOL[index % V4_POOL.len()] };
                text.parse().expect("pool address")
            };
            let transport = match transport {
                0 => Transport::Tcp { src_port, dst_port, payload },
                1 => Transport::Udp { src_port, dst_port, payload, zero_checksum: zero_udp_checksum },
                _ => Transport::IcmpEcho { id: src_port, seq: dst_port, payload },
            };
            let mut spec = IpSpec::new(pick(src), pick(dst), transport);
            spec.vlan = vlan;
            if let (Some(words), false) = (options, ipv6) {
                spec.options = vec![1; words * 4];
                spec.options[words * 4 - 1] = 0;
            }
            Case { hook, spec }
        },
    )
}

fn check(programs: &Programs, case: &Case) -> Result<(), TestCaseError> {
    let input = case.spec.frame();
    let (expected_spec, rewrite) = programs.expected(case.hook, &case.spec);
    let expected = expected_spec.frame();
    let output = programs.run(case.hook, &input)?;
    prop_assert!(
        output == expected,
        "{:?} differs from the model\ninput:\n{}\noutput:\n{}\nexpected:\n{}",
        case.hook,
        hex(&input),
        hex(&output),
        hex(&expected)
    );
    if rewrite.is_empty() {
        prop_assert!(output == input, "a packet that matches no mapping must come back byte-identical");
    } else {
        verify_checksums(&output).map_err(|error| TestCaseError::fail(format!("checksums of the output: {error}")))?;
    }
    Ok(())
}

/// The number of cases: `REWRITE_DIFFERENTIAL_CASES`, or `DEFAULT_CASES`.
fn cases() -> u32 {
    std::env::var("REWRITE_DIFFERENTIAL_CASES")
        .ok()
        .map(|text| {
            text.parse::<u32>().unwrap_or_else(|_| panic!("REWRITE_DIFFERENTIAL_CASES={text:?} is not a number"))
        })
        .unwrap_or(DEFAULT_CASES)
}

/// Every strict prefix of a valid frame is a packet cut short somewhere in its headers
/// or payload: its IP length claims more than it has. It must pass byte-identical,
/// whichever mapping its addresses would match. The shortest prefix is one byte past
/// the Ethernet header for XDP; for TC, BPF_PROG_TEST_RUN refuses a frame without a
/// whole fixed IP header (it pulls one into the skb), so TC cuts start after it.
#[test]
fn truncated_frames_pass_byte_identical() {
    let cases = cases() / 4;
    let programs = Programs::new();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(case(), any::<proptest::sample::Index>()), |(case, cut)| {
        let frame = case.spec.frame();
        let fixed_ip_header = if case.spec.src.is_ipv4() { 20 } else { 40 };
        let shortest = if case.hook == Hook::XdpIngress { 15 } else { case.spec.l3_offset() + fixed_ip_header };
        let truncated = &frame[..shortest + cut.index(frame.len() - shortest)];
        let output = programs.run(case.hook, truncated)?;
        prop_assert!(
            output == truncated,
            "{:?} changed a truncated frame\ninput:\n{}\noutput:\n{}",
            case.hook,
            hex(truncated),
            hex(&output)
        );
        Ok(())
    });
    if let Err(error) = result {
        panic!("a truncated frame was changed (minimal case after shrinking): {error}");
    }
}

#[test]
fn programs_agree_with_the_model_byte_for_byte() {
    let cases = cases();
    let programs = Programs::new();
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let (rewritten, unmatched) = (AtomicU32::new(0), AtomicU32::new(0));
    let result = runner.run(&case(), |case| {
        let (_, rewrite) = programs.expected(case.hook, &case.spec);
        let tally = if rewrite.is_empty() { &unmatched } else { &rewritten };
        tally.fetch_add(1, Ordering::Relaxed);
        check(&programs, &case)
    });
    if let Err(error) = result {
        panic!("the programs disagree with the model (minimal case after shrinking): {error}");
    }
    // The pools must exercise both outcomes, or agreement proves little.
    let (rewritten, unmatched) = (rewritten.into_inner(), unmatched.into_inner());
    eprintln!("{cases} cases: {rewritten} rewritten, {unmatched} matching no mapping, all as the model says");
    assert!(rewritten >= cases / 5, "only {rewritten} of {cases} cases were rewritten: the generator misses the table");
    assert!(unmatched >= cases / 10, "only {unmatched} of {cases} cases matched nothing");
}

/// One's complement addition of 16-bit words.
fn ones_add(a: u16, b: u16) -> u16 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u16::from(carry)
}

/// A transport checksum that is wrong must stay wrong by the same amount: an incremental
/// update carries the error over, which is what lets the receiver still drop the packet.
/// (Recomputing the checksum from scratch would launder a corrupted packet.) The expected
/// field is the model's correct checksum plus the input's error, in one's complement,
/// where 0x0000 and 0xffff are the same number.
#[test]
fn wrong_transport_checksums_stay_wrong_by_the_same_amount() {
    let cases = cases() / 4;
    let programs = Programs::new();
    let checked = AtomicU32::new(0);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(case(), 1..=u16::MAX), |(case, wrong)| {
        let field = match case.spec.transport {
            Transport::Tcp { .. } => 16,
            Transport::Udp { zero_checksum: false, .. } => 6,
            Transport::IcmpEcho { .. } => 2,
            _ => return Ok(()),
        };
        let ip_header = if case.spec.src.is_ipv4() { 20 + case.spec.options.len() } else { 40 };
        let at = case.spec.l3_offset() + ip_header + field;
        let mut input = case.spec.frame();
        let correct_in = u16::from_be_bytes([input[at], input[at + 1]]);
        if wrong == correct_in {
            return Ok(());
        }
        input[at..at + 2].copy_from_slice(&wrong.to_be_bytes());
        let error = ones_add(wrong, !correct_in);
        let (expected_spec, rewrite) = programs.expected(case.hook, &case.spec);
        let mut expected = if rewrite.is_empty() { input.clone() } else { expected_spec.frame() };
        let correct_out = u16::from_be_bytes([expected[at], expected[at + 1]]);
        if !rewrite.is_empty() {
            expected[at..at + 2].copy_from_slice(&ones_add(correct_out, error).to_be_bytes());
        }
        let mut output = programs.run(case.hook, &input)?;
        // Compare with the two zeros of one's complement made one.
        for frame in [&mut expected, &mut output] {
            if frame.len() > at + 1 && frame[at..at + 2] == [0, 0] {
                frame[at..at + 2].copy_from_slice(&[0xff, 0xff]);
            }
        }
        prop_assert!(
            output == expected,
            "{:?}: a wrong checksum was not carried over\ninput:\n{}\noutput:\n{}\nexpected:\n{}",
            case.hook,
            hex(&input),
            hex(&output),
            hex(&expected)
        );
        checked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    if let Err(error) = result {
        panic!("a wrong checksum was not carried over (minimal case after shrinking): {error}");
    }
    let checked = checked.into_inner();
    assert!(checked >= cases / 2, "only {checked} of {cases} cases had a checksum to corrupt");
}

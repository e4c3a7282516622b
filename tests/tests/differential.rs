//! Differential tests: the real programs (BPF_PROG_TEST_RUN) against the byte-level
//! reference model (`rewrite_common::reference`), on frames proptest generates: IPv4
//! and IPv6; TCP, UDP, ICMP echoes and ICMP errors quoting a packet; IPv4 options,
//! IPv6 extension headers, fragments and VLAN tags; then, for half of them, hostile
//! edits: bogus length, header-length, version, protocol and fragment fields, zero,
//! 0xffff and random checksums, stray bytes, truncation and trailing padding. Addresses
//! and ports come from pools that hit every mapping kind and miss them all.
//!
//! Each case checks the output frame byte for byte, the verdict, and the outcome
//! counter the program moved, against the model; and three invariants that do not need
//! the model: a frame that is not rewritten comes back byte-identical, a rewritten
//! frame whose checksums verified still verifies (by `packet::verify_checksums`, a
//! third, independent checksum computation), and a frame rewritten on egress and then
//! back on ingress is the original.
//!
//! `REWRITE_DIFFERENTIAL_CASES` sets the number of cases (default 100,000);
//! `cargo xtask fuzz --cases N` runs these tests with N.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestCaseError, TestRunner},
};
use rewrite_common::pinned::{PROG_TC_EGRESS, PROG_TC_ICMP_ERRORS, PROG_TC_INGRESS, PROG_XDP_INGRESS};
use rewrite_common::{
    counters::{OUTCOMES, REWRITTEN},
    mapping::{Direction, Rewrite},
    model::ModelTable,
    reference::{self, Program},
    spec::MappingSpec,
};
use rewrite_tests::{
    packet::{
        ETH_LEN, IPV6_DESTINATION_OPTIONS, IPV6_HOP_BY_HOP, IPV6_ROUTING, IpSpec, Transport, hex, verify_checksums,
    },
    programs::LoadedObject,
};
use rewrite_user::table::counters::Counters;

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

/// Addresses on the VIRTUAL side of the table, and strangers: a packet between them is
/// rewritten on egress to what ingress restores, so the round trip is the identity.
const V4_ROUND_TRIP_POOL: [&str; 6] =
    ["10.200.0.2", "10.200.0.9", "10.200.0.3", "10.201.3.7", "10.100.0.1", "192.0.2.1"];
const V6_ROUND_TRIP_POOL: [&str; 5] = ["fd00::2", "fd00::9", "fd01::1:2", "2001:db8::1", "fd02::1"];

fn program_name(program: Program) -> &'static str {
    match program {
        Program::XdpIngress => PROG_XDP_INGRESS,
        Program::TcIngress => PROG_TC_INGRESS,
        Program::TcEgress => PROG_TC_EGRESS,
        Program::TcIcmpErrors => PROG_TC_ICMP_ERRORS,
    }
}

fn is_tc(program: Program) -> bool {
    program != Program::XdpIngress
}

struct Programs {
    object: LoadedObject,
    model: ModelTable,
}

impl Programs {
    fn new() -> Self {
        let names = Program::ALL.map(program_name);
        let object = LoadedObject::new("differential", None, &names);
        let mut table = object.table();
        let mut model = ModelTable::default();
        for (virtual_side, real_side) in MAPPINGS {
            let spec = MappingSpec::parse(virtual_side, real_side).expect("a valid mapping");
            table.add(&spec).unwrap_or_else(|error| panic!("add {spec} to the maps: {error}"));
            model.add_spec(&spec).unwrap_or_else(|error| panic!("add {spec} to the model: {error}"));
        }
        Self { object, model }
    }

    fn counters(&self) -> Counters {
        Counters::read(&self.object.layout).expect("read the outcome counters")
    }

    /// The program's output frame, after checking its verdict (always "pass"). `None`
    /// when BPF_PROG_TEST_RUN refuses to build an skb from the frame (see
    /// [`tc_test_run_refuses`]); the program never sees such a frame.
    fn run(&self, program: Program, input: &[u8]) -> Result<Option<Vec<u8>>, TestCaseError> {
        let pass = if is_tc(program) { TC_NEXT } else { XDP_PASS };
        let (result, _) = match self.object.test_run(program_name(program), input, 1) {
            Ok(result) => result,
            Err(_) if is_tc(program) && tc_test_run_refuses(input) => return Ok(None),
            Err(error) => return Err(TestCaseError::fail(format!("BPF_PROG_TEST_RUN failed: {error:?}"))),
        };
        prop_assert_eq!(result.verdict, pass, "{:?} must let every packet pass", program);
        Ok(Some(result.output))
    }

    /// Checks that ingress turns `there` (what egress made of `original`) back into
    /// `original`: by TC, and by XDP with the TC program for ICMP errors beside it, as
    /// `--ingress xdp` attaches them. One difference is allowed: a checksum of 0xffff
    /// (which a computation never produces, but a sender may) comes back as 0x0000,
    /// the same number in one's complement, as any incremental update writes it.
    fn expect_round_trip(&self, original: &[u8], there: &[u8]) -> Result<(), TestCaseError> {
        let back_tc = self.run(Program::TcIngress, there)?.expect("a whole frame");
        let back_xdp = self.run(Program::XdpIngress, there)?.expect("a whole frame");
        let back_xdp = self.run(Program::TcIcmpErrors, &back_xdp)?.expect("a whole frame");
        for (path, back) in [("TC", &back_tc), ("XDP and TC for ICMP errors", &back_xdp)] {
            prop_assert!(
                back == original || differs_only_by_zero_checksums(original, back),
                "egress then ingress ({}) is not the identity\noriginal:\n{}\nafter egress:\n{}\nafter ingress:\n{}",
                path,
                hex(original),
                hex(there),
                hex(back)
            );
        }
        Ok(())
    }

    /// Runs `program` on `input` and checks it against the model: the output frame
    /// byte for byte, and the one outcome counter that moved. Returns the output and
    /// the outcome.
    fn check(&self, program: Program, input: &[u8]) -> Result<Option<reference::Run>, TestCaseError> {
        let expected = reference::run(&self.model, program, input);
        let before = self.counters();
        let Some(output) = self.run(program, input)? else { return Ok(None) };
        let after = self.counters();
        prop_assert!(
            output == expected.frame,
            "{:?} differs from the model (outcome {:?})\ninput:\n{}\noutput:\n{}\nexpected:\n{}",
            program,
            expected.outcome,
            hex(input),
            hex(&output),
            hex(&expected.frame)
        );
        let direction = program.direction().index();
        let moved: Vec<(u32, u64)> = (0..OUTCOMES)
            .map(|outcome| (outcome, after.get(direction, outcome) - before.get(direction, outcome)))
            .filter(|(_, delta)| *delta != 0)
            .collect();
        let wanted: Vec<(u32, u64)> = expected.outcome.map(|outcome| (outcome, 1)).into_iter().collect();
        prop_assert_eq!(moved, wanted, "{:?}: outcome counters (index, increment)\ninput:\n{}", program, hex(input));
        Ok(Some(reference::Run { frame: output, outcome: expected.outcome }))
    }
}

/// Whether `back` differs from `original` only where `original` has a checksum field
/// (IP header, transport, ICMP, quoted IP header) of 0xffff and `back` has 0x0000.
fn differs_only_by_zero_checksums(original: &[u8], back: &[u8]) -> bool {
    let Ok(datagram) = reference::parse(original) else { return false };
    let ip = &datagram.ip;
    let mut fields: Vec<usize> = datagram.pseudo_checksum.iter().map(|check| check.at).collect();
    if !ip.ipv6 {
        fields.push(ip.l3 + 10);
    }
    if let Some(quote) = datagram.quote {
        fields.extend([datagram.l4 + 2, quote + 10]);
    }
    let normalised: Vec<u8> = fields.iter().fold(original.to_vec(), |mut frame, &at| {
        if frame.get(at..at + 2) == Some(&[0xff, 0xff]) {
            frame[at..at + 2].copy_from_slice(&[0, 0]);
        }
        frame
    });
    original.len() == back.len() && normalised == back
}

/// Whether BPF_PROG_TEST_RUN for a TC program refuses `frame` (EINVAL) before the
/// program runs: it needs the whole fixed IP header that the EtherType announces, to
/// fill in the skb. (VLAN-tagged frames are taken as they are.)
fn tc_test_run_refuses(frame: &[u8]) -> bool {
    let needed = match frame.get(12..14) {
        Some([0x08, 0x00]) => 14 + 20,
        Some([0x86, 0xdd]) => 14 + 40,
        _ => 14,
    };
    frame.len() < needed
}

/// A header field a hostile edit can hit.
#[derive(Clone, Copy, Debug)]
enum Field {
    EtherType,
    Version,
    HeaderLength,
    IpLength,
    Protocol,
    FragmentBits,
    IpChecksum,
    TcpDataOffset,
    UdpLength,
    TransportChecksum,
}

/// What the edit writes there.
#[derive(Clone, Copy, Debug)]
enum Value {
    Zero,
    AllOnes,
    /// The field's value plus this, wrapping.
    Plus(i16),
    Any(u16),
}

#[derive(Clone, Debug)]
enum Edit {
    Set(Field, Value),
    /// One byte anywhere in the frame.
    Byte(Index, u8),
    /// Cut the frame short (BPF_PROG_TEST_RUN needs the Ethernet header).
    Truncate(Index),
    /// Bytes after the datagram, as Ethernet padding adds them.
    Pad(Vec<u8>),
}

/// Where a field sits: its offset, and whether it is a whole 16-bit word, a byte, or
/// the high or low nibble of a byte.
#[derive(Clone, Copy)]
enum Width {
    Word,
    Byte,
    HighNibble,
    LowNibble,
}

fn field_location(spec: &IpSpec, field: Field) -> Option<(usize, Width)> {
    let (l3, l4, ipv4) = (spec.l3_offset(), spec.l4_offset(), spec.src.is_ipv4());
    Some(match field {
        Field::EtherType => (l3 - 2, Width::Word),
        Field::Version => (l3, Width::HighNibble),
        Field::HeaderLength if ipv4 => (l3, Width::LowNibble),
        Field::IpLength => (l3 + if ipv4 { 2 } else { 4 }, Width::Word),
        Field::Protocol => (l3 + if ipv4 { 9 } else { 6 }, Width::Byte),
        Field::FragmentBits if ipv4 => (l3 + 6, Width::Word),
        Field::IpChecksum if ipv4 => (l3 + 10, Width::Word),
        Field::TcpDataOffset if matches!(spec.transport, Transport::Tcp { .. }) => (l4 + 12, Width::HighNibble),
        Field::UdpLength if matches!(spec.transport, Transport::Udp { .. }) => (l4 + 4, Width::Word),
        Field::TransportChecksum => match spec.transport {
            Transport::Tcp { .. } | Transport::TcpSegment { .. } => (l4 + 16, Width::Word),
            Transport::Udp { .. } => (l4 + 6, Width::Word),
            Transport::IcmpEcho { .. } | Transport::Icmp { .. } => (l4 + 2, Width::Word),
            Transport::Raw { .. } => return None,
        },
        _ => return None,
    })
}

impl Edit {
    fn apply(&self, spec: &IpSpec, frame: &mut Vec<u8>) {
        match self {
            Self::Set(field, value) => {
                let Some((at, width)) = field_location(spec, *field) else { return };
                let current = match width {
                    Width::Word if at + 2 <= frame.len() => u16::from_be_bytes([frame[at], frame[at + 1]]),
                    Width::Byte | Width::HighNibble | Width::LowNibble if at < frame.len() => u16::from(frame[at]),
                    _ => return,
                };
                let new = match value {
                    Value::Zero => 0,
                    Value::AllOnes => 0xffff,
                    Value::Plus(delta) => current.wrapping_add_signed(*delta),
                    Value::Any(value) => *value,
                };
                let low_byte = new.to_be_bytes()[1];
                match width {
                    Width::Word => frame[at..at + 2].copy_from_slice(&new.to_be_bytes()),
                    Width::Byte => frame[at] = low_byte,
                    Width::HighNibble => frame[at] = (frame[at] & 0x0f) | (low_byte << 4),
                    Width::LowNibble => frame[at] = (frame[at] & 0xf0) | (low_byte & 0x0f),
                }
            }
            Self::Byte(at, value) => {
                let at = at.index(frame.len());
                frame[at] = *value;
            }
            Self::Truncate(at) => frame.truncate(ETH_LEN + at.index(frame.len() - ETH_LEN + 1)),
            Self::Pad(bytes) => frame.extend_from_slice(bytes),
        }
    }
}

/// One generated case: a program, a packet, and the edits made to its frame.
#[derive(Clone, Debug)]
struct Case {
    program: Program,
    spec: IpSpec,
    edits: Vec<Edit>,
}

impl Case {
    fn frame(&self) -> Vec<u8> {
        let mut frame = self.spec.frame();
        for edit in &self.edits {
            edit.apply(&self.spec, &mut frame);
        }
        frame
    }
}

fn program() -> impl Strategy<Value = Program> {
    proptest::sample::select(Program::ALL.to_vec())
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => proptest::sample::select(PORT_POOL.to_vec()), 1 => any::<u16>()]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..48)
}

/// An address pair of one family from the pools.
fn addresses(v4: &'static [&'static str], v6: &'static [&'static str]) -> impl Strategy<Value = (IpAddr, IpAddr)> {
    let pick = move |ipv6: bool, index: Index| -> IpAddr {
        let pool = if ipv6 { v6 } else { v4 };
        pool[index.index(pool.len())].parse().expect("pool address")
    };
    (any::<bool>(), any::<Index>(), any::<Index>()).prop_map(move |(ipv6, src, dst)| (pick(ipv6, src), pick(ipv6, dst)))
}

/// A TCP, UDP or ICMP echo transport.
fn simple_transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        (port(), port(), payload()).prop_map(|(src_port, dst_port, payload)| Transport::Tcp {
            src_port,
            dst_port,
            payload
        }),
        (port(), port(), payload(), proptest::bool::weighted(0.2)).prop_map(
            |(src_port, dst_port, payload, zero_checksum)| Transport::Udp {
                src_port,
                dst_port,
                payload,
                zero_checksum
            }
        ),
        (port(), port(), payload()).prop_map(|(id, seq, payload)| Transport::IcmpEcho { id, seq, payload }),
    ]
}

/// The IP-level dressing of a packet: VLAN tag, IPv4 options, IPv6 extension headers,
/// fragment fields.
#[derive(Clone, Debug)]
struct Dressing {
    vlan: Option<u16>,
    option_words: Option<usize>,
    extension_headers: Vec<u8>,
    fragment_offset: u16,
    more_fragments: bool,
}

fn dressing() -> impl Strategy<Value = Dressing> {
    let extension = proptest::sample::select(vec![IPV6_HOP_BY_HOP, IPV6_DESTINATION_OPTIONS, IPV6_ROUTING]);
    (
        proptest::option::weighted(0.15, 1..4095u16),
        proptest::option::weighted(0.15, 1..=10usize),
        prop_oneof![4 => Just(Vec::new()), 1 => proptest::collection::vec(extension, 1..=3)],
        prop_oneof![6 => Just(0u16), 1 => 1..0x1fffu16],
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(vlan, option_words, extension_headers, fragment_offset, more_fragments)| Dressing {
            vlan,
            option_words,
            extension_headers,
            fragment_offset,
            more_fragments,
        })
}

impl Dressing {
    fn dress(&self, spec: &mut IpSpec) {
        spec.vlan = self.vlan;
        if spec.src.is_ipv4() {
            if let Some(words) = self.option_words {
                // NOPs, then an end-of-list: IHL 6 to 15.
                spec.options = vec![1; words * 4];
                spec.options[words * 4 - 1] = 0;
            }
        } else {
            // Six bytes of PadN make an 8-byte options header; a type 0 routing
            // header with no segments left is as short.
            spec.extension_headers =
                self.extension_headers.iter().map(|kind| (*kind, vec![1, 4, 0, 0, 0, 0])).collect();
        }
        spec.fragment_offset = self.fragment_offset;
        spec.more_fragments = self.more_fragments;
        // A later fragment carries payload, not a transport header.
        if self.fragment_offset != 0 {
            let protocol = match &spec.transport {
                Transport::Tcp { .. } | Transport::TcpSegment { .. } => 6,
                Transport::Udp { .. } => 17,
                _ if spec.src.is_ipv4() => 1,
                _ => 58,
            };
            spec.transport = Transport::Raw { protocol, bytes: spec.frame()[spec.l4_offset()..].to_vec() };
        }
    }
}

/// An ICMP error (or another ICMP message) quoting a packet drawn from the same pools,
/// cut after its first 8 transport bytes, whole, or anywhere.
fn icmp_message(
    ipv6: bool,
    v4: &'static [&'static str],
    v6: &'static [&'static str],
) -> impl Strategy<Value = Transport> {
    let kinds = if ipv6 { vec![1u8, 2, 3, 4, 128, 129, 135] } else { vec![3u8, 11, 12, 0, 5] };
    let quoted = (addresses(v4, v6), simple_transport(), proptest::option::weighted(0.2, 1..=4usize));
    (
        proptest::sample::select(kinds),
        any::<u8>(),
        quoted,
        prop_oneof![Just(None), Just(Some(8usize)), (0..80usize).prop_map(Some)],
    )
        .prop_map(move |(kind, code, ((src, dst), transport, option_words), cut)| {
            let (src, dst) = match (src, dst, ipv6) {
                (IpAddr::V4(_), IpAddr::V4(_), false) | (IpAddr::V6(_), IpAddr::V6(_), true) => (src, dst),
                // The quote has the error's family: take the pool's first pair.
                _ if ipv6 => (v6[0].parse().expect("pool"), v6[1].parse().expect("pool")),
                _ => (v4[0].parse().expect("pool"), v4[1].parse().expect("pool")),
            };
            let mut quoted = IpSpec::new(src, dst, transport);
            if let (Some(words), false) = (option_words, ipv6) {
                quoted.options = vec![1; words * 4];
            }
            let mut body = quoted.ip_packet();
            let header = quoted.l4_offset() - quoted.l3_offset();
            if let Some(cut) = cut {
                body.truncate(if cut == 8 { header + 8 } else { cut });
            }
            Transport::Icmp { kind, code, body }
        })
}

/// A well-formed packet from the pools.
fn packet(v4: &'static [&'static str], v6: &'static [&'static str]) -> impl Strategy<Value = IpSpec> {
    (addresses(v4, v6), any::<bool>(), dressing())
        .prop_flat_map(move |((src, dst), icmp, dressing)| {
            let transport = if icmp { icmp_message(src.is_ipv6(), v4, v6).boxed() } else { simple_transport().boxed() };
            (Just((src, dst)), transport, Just(dressing))
        })
        .prop_map(|((src, dst), transport, dressing)| {
            let mut spec = IpSpec::new(src, dst, transport);
            dressing.dress(&mut spec);
            spec
        })
}

fn edit() -> impl Strategy<Value = Edit> {
    let field = proptest::sample::select(vec![
        Field::EtherType,
        Field::Version,
        Field::HeaderLength,
        Field::IpLength,
        Field::Protocol,
        Field::FragmentBits,
        Field::IpChecksum,
        Field::TcpDataOffset,
        Field::UdpLength,
        Field::TransportChecksum,
    ]);
    let value = prop_oneof![
        Just(Value::Zero),
        Just(Value::AllOnes),
        (-64..=64i16).prop_map(Value::Plus),
        any::<u16>().prop_map(Value::Any),
        // Values that mean something in the fields above.
        proptest::sample::select(vec![4u16, 5, 6, 15, 17, 1, 58, 0, 43, 44, 51, 60, 0x0800, 0x86dd, 0x8100, 0x2000])
            .prop_map(Value::Any),
    ];
    prop_oneof![
        6 => (field, value).prop_map(|(field, value)| Edit::Set(field, value)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Edit::Byte(at, value)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Edit::Pad),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let edits = prop_oneof![1 => Just(Vec::new()), 1 => proptest::collection::vec(edit(), 1..=3)];
    (program(), packet(&V4_POOL, &V6_POOL), edits).prop_map(|(program, spec, edits)| Case { program, spec, edits })
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

/// Tallies of what the generated cases exercised, so that a generator that drifts
/// away from the interesting corners fails the test rather than passing vacuously.
#[derive(Default)]
struct Tally {
    outcomes: [AtomicU32; OUTCOMES as usize],
    left_to_other_program: AtomicU32,
    refused_by_test_run: AtomicU32,
    checksums_verified: AtomicU32,
    round_trips: AtomicU32,
}

#[test]
fn programs_agree_with_the_model_byte_for_byte() {
    let cases = cases();
    let programs = Programs::new();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let tally = Tally::default();
    let result = runner.run(&case(), |case| {
        let input = case.frame();
        let Some(reference::Run { frame: output, outcome }) = programs.check(case.program, &input)? else {
            tally.refused_by_test_run.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        match outcome {
            Some(outcome) => tally.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed),
            None => tally.left_to_other_program.fetch_add(1, Ordering::Relaxed),
        };
        if outcome != Some(REWRITTEN) {
            prop_assert!(output == input, "a frame that is not rewritten must come back byte-identical");
        } else if verify_checksums(&input).is_ok() {
            verify_checksums(&output)
                .map_err(|error| TestCaseError::fail(format!("checksums of the rewritten frame: {error}")))?;
            tally.checksums_verified.fetch_add(1, Ordering::Relaxed);
            // Back the other way, when ingress would leave the original alone (none of
            // its addresses is a REAL): the original bytes again.
            let untouched_by_ingress = reference::run(&programs.model, Program::TcIngress, &input).outcome;
            if case.program == Program::TcEgress && untouched_by_ingress != Some(REWRITTEN) {
                programs.expect_round_trip(&input, &output)?;
                tally.round_trips.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("the programs disagree with the model (minimal case after shrinking): {error}");
    }
    let count = |counter: &AtomicU32| counter.load(Ordering::Relaxed);
    let outcomes: Vec<u32> = tally.outcomes.iter().map(count).collect();
    eprintln!(
        "{cases} cases, all as the model says: by outcome {outcomes:?} (rewritten, no match, malformed, unsupported, \
         helper error, fragment unmatched); {} left to the other program; {} refused by BPF_PROG_TEST_RUN; {} \
         rewritten frames re-verified; {} egress rewrites taken back by ingress",
        count(&tally.left_to_other_program),
        count(&tally.refused_by_test_run),
        count(&tally.checksums_verified),
        count(&tally.round_trips)
    );
    let share = |part: u32, of: u32| u64::from(part) * u64::from(of) >= u64::from(cases);
    assert!(share(outcomes[0], 8), "fewer than 1/8 of the cases were rewritten: {outcomes:?}");
    assert!(share(outcomes[1], 20), "fewer than 1/20 matched nothing: {outcomes:?}");
    assert!(share(outcomes[2], 20), "fewer than 1/20 were malformed: {outcomes:?}");
    assert!(share(outcomes[3], 50), "fewer than 1/50 were unsupported: {outcomes:?}");
    assert!(share(outcomes[5], 200), "fewer than 1/200 were unmatched later fragments: {outcomes:?}");
    assert_eq!(outcomes[4], 0, "no case may end in a helper error");
    assert!(share(count(&tally.checksums_verified), 10), "fewer than 1/10 of the cases re-verified checksums");
    assert!(share(count(&tally.round_trips), 100), "fewer than 1/100 of the cases made a round trip");
    assert!(
        count(&tally.refused_by_test_run) * 20 < cases,
        "BPF_PROG_TEST_RUN refused more than 1/20 of the frames: the generator wastes cases"
    );
}

/// A frame rewritten on egress and then on ingress (by TC, and by XDP with the TC
/// program for ICMP errors beside it, as `--ingress xdp` attaches them) returns to its
/// original bytes, when its addresses are VIRTUAL or strangers.
#[test]
fn rewritten_there_and_back_returns_the_original_bytes() {
    let cases = cases() / 4;
    let programs = Programs::new();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let changed = AtomicU32::new(0);
    let result = runner.run(&packet(&V4_ROUND_TRIP_POOL, &V6_ROUND_TRIP_POOL), |spec| {
        let original = spec.frame();
        let there = programs.run(Program::TcEgress, &original)?.expect("a whole frame");
        if there != original {
            changed.fetch_add(1, Ordering::Relaxed);
        }
        programs.expect_round_trip(&original, &there)
    });
    if let Err(error) = result {
        panic!("a round trip changed the frame (minimal case after shrinking): {error}");
    }
    let changed = changed.into_inner();
    assert!(u64::from(changed) * 3 >= u64::from(cases), "only {changed} of {cases} frames were rewritten on egress");
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
    let result = runner.run(&(program(), packet(&V4_POOL, &V6_POOL), any::<Index>()), |(program, spec, cut)| {
        let frame = spec.frame();
        let fixed_ip_header = if spec.src.is_ipv4() { 20 } else { 40 };
        let shortest = if is_tc(program) { spec.l3_offset() + fixed_ip_header } else { 15 };
        let truncated = &frame[..shortest + cut.index(frame.len() - shortest)];
        let output = programs.run(program, truncated)?.expect("a frame with its fixed IP header");
        prop_assert!(
            output == truncated,
            "{:?} changed a truncated frame\ninput:\n{}\noutput:\n{}",
            program,
            hex(truncated),
            hex(&output)
        );
        Ok(())
    });
    if let Err(error) = result {
        panic!("a truncated frame was changed (minimal case after shrinking): {error}");
    }
}

/// One's complement addition of 16-bit words.
fn ones_add(a: u16, b: u16) -> u16 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u16::from(carry)
}

/// Where the model's lookup says `spec`'s headers go, applied by the packet builder
/// (every checksum computed in full): the expected frame for a well-formed packet that
/// is not an ICMP error, independent of the byte-level model's checksum code.
fn rebuilt(model: &ModelTable, direction: Direction, spec: &IpSpec) -> (IpSpec, Rewrite) {
    let ports = match &spec.transport {
        Transport::Tcp { src_port, dst_port, .. } | Transport::TcpSegment { src_port, dst_port, .. } => {
            Some((6, *src_port, *dst_port))
        }
        Transport::Udp { src_port, dst_port, .. } => Some((17, *src_port, *dst_port)),
        _ => None,
    };
    let rewrite = model.rewrite(direction, spec.src, spec.dst, ports);
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

/// A transport checksum that is wrong must stay wrong by the same amount: an incremental
/// update carries the error over, which is what lets the receiver still drop the packet.
/// (Recomputing the checksum from scratch would launder a corrupted packet.) The expected
/// field is the correct checksum of the rewritten packet, built in full by the packet
/// builder, plus the input's error, in one's complement, where 0x0000 and 0xffff are the
/// same number.
#[test]
fn wrong_transport_checksums_stay_wrong_by_the_same_amount() {
    let cases = cases() / 4;
    let programs = Programs::new();
    let checked = AtomicU32::new(0);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let hooks = proptest::sample::select(vec![Program::XdpIngress, Program::TcIngress, Program::TcEgress]);
    let packets = (addresses(&V4_POOL, &V6_POOL), simple_transport())
        .prop_map(|((src, dst), transport)| IpSpec::new(src, dst, transport));
    let result = runner.run(&(hooks, packets, 1..=u16::MAX), |(program, spec, wrong)| {
        let field = match spec.transport {
            Transport::Tcp { .. } => 16,
            Transport::Udp { zero_checksum: false, .. } => 6,
            Transport::IcmpEcho { .. } => 2,
            _ => return Ok(()),
        };
        let at = spec.l4_offset() + field;
        let mut input = spec.frame();
        let correct_in = u16::from_be_bytes([input[at], input[at + 1]]);
        if wrong == correct_in {
            return Ok(());
        }
        input[at..at + 2].copy_from_slice(&wrong.to_be_bytes());
        let error = ones_add(wrong, !correct_in);
        let (expected_spec, rewrite) = rebuilt(&programs.model, program.direction(), &spec);
        let mut expected = if rewrite.is_empty() { input.clone() } else { expected_spec.frame() };
        let correct_out = u16::from_be_bytes([expected[at], expected[at + 1]]);
        if !rewrite.is_empty() {
            expected[at..at + 2].copy_from_slice(&ones_add(correct_out, error).to_be_bytes());
        }
        let mut output = programs.run(program, &input)?.expect("a whole frame");
        // Compare with the two zeros of one's complement made one.
        for frame in [&mut expected, &mut output] {
            if frame[at..at + 2] == [0, 0] {
                frame[at..at + 2].copy_from_slice(&[0xff, 0xff]);
            }
        }
        prop_assert!(
            output == expected,
            "{:?}: a wrong checksum was not carried over\ninput:\n{}\noutput:\n{}\nexpected:\n{}",
            program,
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

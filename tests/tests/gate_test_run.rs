//! BPF_PROG_TEST_RUN fixtures for the gatekeeper in the rewrite programs' ingress (XDP
//! and TC): what passes leaves byte for byte as the rewrite alone would make it, what
//! is dropped gets the drop verdict, and exactly the expected reason counter moves.

use std::net::IpAddr;

use rewrite_common::{
    pinned::{PROG_TC_INGRESS, PROG_XDP_INGRESS},
    ports::PortRange,
    spec::MappingSpec,
};
use rewrite_tests::{
    fixture::address,
    packet::{IPV6_DESTINATION_OPTIONS, IPV6_ROUTING, IpSpec, Transport, hex},
    programs::LoadedObject,
};
use rewrite_user::gate::{ClientPorts, GateTable, Mode, PortSpec, parse_allow};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_SHOT: u32 = 2;
/// TC_ACT_UNSPEC (-1): pass on to the next program.
const TC_NEXT: u32 = u32::MAX;

const HOST: &str = "10.100.0.1";
const MEMBER_REAL: &str = "10.100.0.2";
const MEMBER_VIRTUAL: &str = "10.200.0.2";
const ALLOWED: &str = "192.0.2.77";
const UNKNOWN: &str = "198.51.100.9";
const PROTECTED_UDP: u16 = 5000;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

/// The ports the fixtures' gate leaves open: Linux's default ephemeral range.
fn client_ports() -> ClientPorts {
    ClientPorts { ephemeral: PortRange::new(32768, 60999).expect("a range"), bounce: Vec::new() }
}

/// The rewrite object with one mapping (MEMBER), the gate protecting udp/5000 in
/// `mode`, and 192.0.2.0/24 allowed.
fn object(mode: Mode) -> LoadedObject {
    let object = LoadedObject::new("gtr", Some(64), &[PROG_XDP_INGRESS, PROG_TC_INGRESS]);
    object.table().add(&address(ip(MEMBER_VIRTUAL), ip(MEMBER_REAL))).expect("add the member's mapping");
    let mut gate = GateTable::open(&object.layout).expect("open the gate maps");
    gate.protect(&[PortSpec::parse(&format!("udp/{PROTECTED_UDP}")).expect("spec")], &client_ports(), true)
        .expect("protect");
    gate.allow(parse_allow("192.0.2.0/24").expect("prefix"), true).expect("allow");
    gate.set_mode(mode).expect("mode");
    object
}

fn counters(object: &LoadedObject) -> std::collections::BTreeMap<&'static str, u64> {
    GateTable::open(&object.layout).expect("open the gate maps").counters().expect("counters")
}

/// Runs both ingress programs on `input`; each must return its verdict (`drop` or
/// pass) and, when it passes, `output` byte for byte.
fn expect_both(object: &LoadedObject, input: &[u8], drop: bool, output: &[u8], what: &str) {
    for (program, drop_verdict, pass_verdict) in
        [(PROG_XDP_INGRESS, XDP_DROP, XDP_PASS), (PROG_TC_INGRESS, TC_ACT_SHOT, TC_NEXT)]
    {
        let (result, _) = object.test_run(program, input, 1).unwrap_or_else(|error| panic!("{what}: {error:?}"));
        if drop {
            assert_eq!(result.verdict, drop_verdict, "{what}: {program} drops");
        } else {
            assert_eq!(result.verdict, pass_verdict, "{what}: {program} passes");
            assert_eq!(hex(&result.output), hex(output), "{what}: {program}'s output");
        }
    }
}

#[test]
fn enforce_passes_members_and_allowed_prefixes_and_drops_the_rest() {
    let object = object(Mode::Enforce);
    // A member's packet passes, with its source restored to VIRTUAL by the rewrite.
    let member = IpSpec::udp(ip(MEMBER_REAL), ip(HOST)).with_ports(40000, PROTECTED_UDP);
    let rewritten = member.with_addresses(ip(MEMBER_VIRTUAL), ip(HOST));
    expect_both(&object, &member.frame(), false, &rewritten.frame(), "a member");
    let allowed = IpSpec::udp(ip(ALLOWED), ip(HOST)).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &allowed, false, &allowed, "an allowed prefix");
    let unknown = IpSpec::udp(ip(UNKNOWN), ip(HOST)).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &unknown, true, &[], "an unknown source");
    // Not protected, or not the gate's business: byte-identical, uncounted.
    let open_port = IpSpec::udp(ip(UNKNOWN), ip(HOST)).with_ports(40000, 5001).frame();
    expect_both(&object, &open_port, false, &open_port, "an open port");
    let ssh = IpSpec::tcp(ip(UNKNOWN), ip(HOST)).with_ports(40000, 22).frame();
    expect_both(&object, &ssh, false, &ssh, "ssh");
    let ping = IpSpec::icmp(ip(UNKNOWN), ip(HOST)).frame();
    expect_both(&object, &ping, false, &ping, "ICMP");
    let counted = counters(&object);
    assert_eq!(counted["passed_member"], 2, "{counted:?}");
    assert_eq!(counted["passed_allowed_prefix"], 2, "{counted:?}");
    assert_eq!(counted["dropped"], 2, "{counted:?}");
    assert_eq!(counted["passed_management"], 0, "ssh is only counted when it is protected: {counted:?}");
    assert_eq!(counted["would_drop"], 0, "{counted:?}");
}

#[test]
fn monitor_passes_unknown_sources_unchanged_and_counts_them() {
    let object = object(Mode::Monitor);
    let unknown = IpSpec::udp(ip(UNKNOWN), ip(HOST)).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &unknown, false, &unknown, "monitor mode");
    let counted = counters(&object);
    assert_eq!((counted["would_drop"], counted["dropped"]), (2, 0), "{counted:?}");
}

#[test]
fn off_is_the_default_and_checks_nothing() {
    let object = LoadedObject::new("gtr", Some(64), &[PROG_XDP_INGRESS, PROG_TC_INGRESS]);
    let mut gate = GateTable::open(&object.layout).expect("open the gate maps");
    gate.protect(&[PortSpec::parse("udp/5000").expect("spec")], &client_ports(), true).expect("protect");
    let unknown = IpSpec::udp(ip(UNKNOWN), ip(HOST)).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &unknown, false, &unknown, "gate off");
    assert!(counters(&object).values().all(|count| *count == 0), "nothing counted while off");
}

#[test]
fn ipv6_sources_are_gated_alike() {
    let object = object(Mode::Enforce);
    object.table().add(&address(ip("fd00::2"), ip("2001:db8::2"))).expect("add an IPv6 member");
    GateTable::open(&object.layout)
        .expect("open the gate maps")
        .allow(parse_allow("2001:db8:77::/48").expect("prefix"), true)
        .expect("allow");
    let host = ip("2001:db8::1");
    let member = IpSpec::udp(ip("2001:db8::2"), host).with_ports(40000, PROTECTED_UDP);
    let rewritten = member.with_addresses(ip("fd00::2"), host);
    expect_both(&object, &member.frame(), false, &rewritten.frame(), "an IPv6 member");
    let allowed = IpSpec::udp(ip("2001:db8:77::5"), host).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &allowed, false, &allowed, "inside an IPv6 allow prefix");
    let unknown = IpSpec::udp(ip("2001:db8:99::9"), host).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &unknown, true, &[], "an unknown IPv6 source");
    let counted = counters(&object);
    assert_eq!(
        (counted["passed_member"], counted["passed_allowed_prefix"], counted["dropped"]),
        (2, 2, 2),
        "{counted:?}"
    );
}

#[test]
fn a_source_inside_a_real_prefix_is_a_member() {
    let object = object(Mode::Enforce);
    let prefix =
        rewrite_common::mapping::PrefixMapping { virtual_net: ip("10.201.0.0"), real_net: ip("172.20.0.0"), len: 16 };
    object.table().add(&MappingSpec::Prefix(prefix)).expect("add a prefix mapping");
    let member = IpSpec::udp(ip("172.20.5.5"), ip(HOST)).with_ports(40000, PROTECTED_UDP);
    let rewritten = member.with_addresses(ip("10.201.5.5"), ip(HOST));
    expect_both(&object, &member.frame(), false, &rewritten.frame(), "inside a REAL prefix");
    let outside = IpSpec::udp(ip("172.21.5.5"), ip(HOST)).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &outside, true, &[], "just outside it");
    assert_eq!(counters(&object)["passed_member"], 2);
}

/// The object of [`object`] protecting tcp/9200 too, for the TCP cases.
const PROTECTED_TCP: u16 = 9200;

fn object_with_tcp(mode: Mode) -> LoadedObject {
    let object = object(mode);
    let mut gate = GateTable::open(&object.layout).expect("open the gate maps");
    gate.protect(&[PortSpec::parse(&format!("tcp/{PROTECTED_TCP}")).expect("spec")], &client_ports(), true)
        .expect("protect");
    object
}

/// Raw transport bytes after the IP header(s): the first `bytes` of a TCP or UDP header
/// (ports first), and whatever follows.
fn transport(protocol: u8, src_port: u16, dst_port: u16, rest: &[u8]) -> Transport {
    let mut bytes = src_port.to_be_bytes().to_vec();
    bytes.extend_from_slice(&dst_port.to_be_bytes());
    bytes.extend_from_slice(rest);
    Transport::Raw { protocol, bytes }
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Builds a case's packet from a source and a destination.
type Builder = Box<dyn Fn(IpAddr, IpAddr) -> IpSpec>;

/// Frames the rewrite's parser gives up on, which the host's kernel still delivers to
/// the port they name (the walks around the gate found in the field): the gate takes
/// the ports from the frame and judges the source as for any other packet.
#[test]
fn frames_the_parser_gives_up_on_are_judged_by_their_ports() {
    let host6 = ip("2001:db8::1");
    let cases: Vec<(&str, Builder)> = vec![
        (
            "an IPv6 UDP datagram whose length field is 0",
            Box::new(|src, dst| IpSpec::new(src, dst, transport(UDP, 40000, PROTECTED_UDP, &[0, 0, 0, 0, 1, 2, 3, 4]))),
        ),
        (
            "an IPv6 UDP datagram behind a routing header with segments left 0",
            Box::new(|src, dst| {
                let mut spec = IpSpec::udp(src, dst).with_ports(40000, PROTECTED_UDP);
                spec.extension_headers.push((IPV6_ROUTING, vec![0, 0, 0, 0, 0, 0]));
                spec
            }),
        ),
        (
            "an IPv6 TCP first fragment of 8 transport bytes",
            Box::new(|src, dst| {
                let mut spec = IpSpec::new(src, dst, transport(TCP, 40000, PROTECTED_TCP, &[0, 0, 0, 1]));
                spec.more_fragments = true;
                spec
            }),
        ),
    ];
    let object = object_with_tcp(Mode::Enforce);
    object.table().add(&address(ip("fd00::2"), ip("2001:db8::2"))).expect("add an IPv6 member");
    for (what, build) in &cases {
        let unknown = build(ip("2001:db8:99::9"), host6).frame();
        expect_both(&object, &unknown, true, &[], &format!("{what}, from an unknown source"));
        // A member's frame passes; the rewrite leaves a frame it cannot parse alone.
        let member = build(ip("2001:db8::2"), host6).frame();
        expect_both(&object, &member, false, &member, &format!("{what}, from a member"));
    }
    // The same in IPv4: a TCP SYN cut after 8 transport bytes by a first fragment, and a
    // UDP datagram whose length field says less than its header.
    let ipv4_cases: Vec<(&str, Builder)> = vec![
        (
            "an IPv4 TCP first fragment of 8 transport bytes",
            Box::new(|src, dst| {
                let mut spec = IpSpec::new(src, dst, transport(TCP, 40000, PROTECTED_TCP, &[0, 0, 0, 1]));
                spec.more_fragments = true;
                spec
            }),
        ),
        (
            "an IPv4 UDP datagram whose length field is 0",
            Box::new(|src, dst| IpSpec::new(src, dst, transport(UDP, 40000, PROTECTED_UDP, &[0, 0, 0, 0, 1, 2, 3, 4]))),
        ),
    ];
    for (what, build) in &ipv4_cases {
        let unknown = build(ip(UNKNOWN), ip(HOST)).frame();
        expect_both(&object, &unknown, true, &[], &format!("{what}, from an unknown source"));
        let member = build(ip(MEMBER_REAL), ip(HOST)).frame();
        expect_both(&object, &member, false, &member, &format!("{what}, from a member"));
    }
    let counted = counters(&object);
    let cases = u64::try_from(cases.len() + ipv4_cases.len()).expect("a few cases");
    assert_eq!(counted["dropped"], 2 * cases, "each case, in XDP and TC: {counted:?}");
    assert_eq!(counted["passed_member"], 2 * cases, "{counted:?}");
    // A later fragment carries no ports: the host cannot reassemble it without a first
    // fragment the gate admitted. Not the gate's business.
    let mut later = IpSpec::new(ip(UNKNOWN), ip(HOST), Transport::Raw { protocol: TCP, bytes: vec![0; 16] });
    later.fragment_offset = 1;
    let later = later.frame();
    expect_both(&object, &later, false, &later, "a later fragment");
    assert_eq!(counters(&object)["dropped"], 2 * cases, "a later fragment is not counted");
}

/// Frames whose port cannot be known: a first fragment without the ports, an IPv6 first
/// fragment whose header chain runs past its end, and a header chain longer than the
/// gate walks. Enforce drops them, monitor counts them, each under its own reason.
#[test]
fn frames_the_gate_cannot_judge_fail_closed() {
    let host6 = ip("2001:db8::1");
    let unknown6 = ip("2001:db8:99::9");
    let mut no_ports = IpSpec::new(ip(UNKNOWN), ip(HOST), Transport::Raw { protocol: TCP, bytes: vec![0x9c, 0x40] });
    no_ports.more_fragments = true;
    // Fragment header, then a destination options header that claims 16 bytes of
    // which the fragment carries 8.
    let mut cut_chain = IpSpec::new(
        unknown6,
        host6,
        Transport::Raw { protocol: IPV6_DESTINATION_OPTIONS, bytes: vec![UDP, 1, 0, 0, 0, 0, 0, 0] },
    );
    cut_chain.more_fragments = true;
    let mut long_chain = IpSpec::udp(unknown6, host6).with_ports(40000, PROTECTED_UDP);
    long_chain.extension_headers = vec![(IPV6_DESTINATION_OPTIONS, vec![0; 6]); 9];
    let fragments = [no_ports.frame(), cut_chain.frame()];
    let chain = long_chain.frame();

    let object = object_with_tcp(Mode::Enforce);
    for frame in &fragments {
        expect_both(&object, frame, true, &[], "a first fragment without its ports");
    }
    expect_both(&object, &chain, true, &[], "a header chain of 9 extension headers");
    let counted = counters(&object);
    assert_eq!((counted["dropped_fragment"], counted["dropped_header_chain"]), (4, 2), "{counted:?}");
    assert_eq!(counted["dropped"], 0, "each under its own reason: {counted:?}");

    let object = object_with_tcp(Mode::Monitor);
    for frame in &fragments {
        expect_both(&object, frame, false, frame, "monitor: a first fragment without its ports");
    }
    expect_both(&object, &chain, false, &chain, "monitor: a long header chain");
    let counted = counters(&object);
    assert_eq!((counted["would_drop_fragment"], counted["would_drop_header_chain"]), (4, 2), "{counted:?}");
    assert_eq!((counted["dropped_fragment"], counted["dropped_header_chain"]), (0, 0), "{counted:?}");

    // Off, none of it is the gate's business.
    let object = LoadedObject::new("gtr", Some(64), &[PROG_XDP_INGRESS, PROG_TC_INGRESS]);
    for frame in fragments.iter().chain([&chain]) {
        expect_both(&object, frame, false, frame, "gate off");
    }
    assert!(counters(&object).values().all(|count| *count == 0));
}

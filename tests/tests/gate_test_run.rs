//! BPF_PROG_TEST_RUN fixtures for the gatekeeper in the rewrite programs' ingress (XDP
//! and TC): what passes leaves byte for byte as the rewrite alone would make it, what
//! is dropped gets the drop verdict, and exactly the expected reason counter moves.

use std::net::IpAddr;

use rewrite_tests::{
    packet::{IpSpec, hex},
    programs::LoadedObject,
};
use rewrite_user::{
    gate::{GateTable, Mode, PortSpec, parse_prefix},
    loader::{PROG_TC_INGRESS, PROG_XDP_INGRESS},
};

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

/// The rewrite object with one mapping (MEMBER), the gate protecting udp/5000 in
/// `mode`, and 192.0.2.0/24 allowed.
fn object(mode: Mode) -> LoadedObject {
    let object = LoadedObject::new("gtr", Some(64), &[PROG_XDP_INGRESS, PROG_TC_INGRESS]);
    object.table().add(ip(MEMBER_VIRTUAL), ip(MEMBER_REAL)).expect("add the member's mapping");
    let mut gate = GateTable::open(&object.layout).expect("open the gate maps");
    gate.protect(&[PortSpec::parse(&format!("udp/{PROTECTED_UDP}")).expect("spec")], true).expect("protect");
    gate.allow(parse_prefix("192.0.2.0/24").expect("prefix"), true).expect("allow");
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
    gate.protect(&[PortSpec::parse("udp/5000").expect("spec")], true).expect("protect");
    let unknown = IpSpec::udp(ip(UNKNOWN), ip(HOST)).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &unknown, false, &unknown, "gate off");
    assert!(counters(&object).values().all(|count| *count == 0), "nothing counted while off");
}

#[test]
fn ipv6_sources_are_gated_alike() {
    let object = object(Mode::Enforce);
    object.table().add(ip("fd00::2"), ip("2001:db8::2")).expect("add an IPv6 member");
    GateTable::open(&object.layout)
        .expect("open the gate maps")
        .allow(parse_prefix("2001:db8:77::/48").expect("prefix"), true)
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
    object.table().add_prefix(&prefix).expect("add a prefix mapping");
    let member = IpSpec::udp(ip("172.20.5.5"), ip(HOST)).with_ports(40000, PROTECTED_UDP);
    let rewritten = member.with_addresses(ip("10.201.5.5"), ip(HOST));
    expect_both(&object, &member.frame(), false, &rewritten.frame(), "inside a REAL prefix");
    let outside = IpSpec::udp(ip("172.21.5.5"), ip(HOST)).with_ports(40000, PROTECTED_UDP).frame();
    expect_both(&object, &outside, true, &[], "just outside it");
    assert_eq!(counters(&object)["passed_member"], 2);
}

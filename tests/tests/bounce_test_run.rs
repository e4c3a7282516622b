//! BPF_PROG_TEST_RUN fixtures for bounce mode: its XDP and TC programs, loaded into the
//! kernel, run on crafted frames inside a namespace whose routes and neighbours the
//! fixture sets, so that the route lookup the programs make is deterministic. Every
//! case compares the whole output frame byte for byte (MAC addresses, translated
//! addresses and ports, checksums) and the verdict.
//!
//! A test run only returns the verdict of a redirect; the frame goes nowhere.

use std::net::IpAddr;

use rewrite_tests::{
    bounce::{
        BOUNCER_CLIENT_SIDE_MAC, BOUNCER_TARGET_SIDE_MAC, CLIENT, CLIENT_MAC, CLIENT_V6, LISTEN, LISTEN_V6, SOURCE,
        SOURCE_V6, TARGET, TARGET_MAC, TARGET_V6,
    },
    netns::Netns,
    packet::{IpSpec, hex, verify_checksums},
    programs::LoadedObject,
};
use rewrite_user::{
    bounce::{BounceStats, BounceTable, ServiceSpec},
    loader::{PROG_TC_BOUNCE, PROG_XDP_BOUNCE},
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
/// TC_ACT_UNSPEC (-1): "pass, and let the next tcx program run".
const TC_NEXT: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;
/// The one port each fixture's service may allocate, so that the output is known.
const BOUNCE_PORT: u16 = 61000;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}

/// The bouncer alone: a device towards the client and one towards the target (veth
/// pairs whose peers stay in the namespace), forwarding on, and, if `neighbours`,
/// permanent neighbour entries for the client and the target so that the route lookup
/// returns their MAC addresses.
fn bouncer(neighbours: bool) -> Netns {
    let netns = Netns::new("btr");
    for (dev, peer, mac, v4, v6) in [
        ("bc", "bcp", BOUNCER_CLIENT_SIDE_MAC, "10.230.1.1/24", "fd00:231::1/64"),
        ("bt", "btp", BOUNCER_TARGET_SIDE_MAC, "10.230.2.1/24", "fd00:232::1/64"),
    ] {
        netns.ip(&["link", "add", dev, "address", &mac_text(mac), "type", "veth", "peer", "name", peer]);
        netns.ip(&["addr", "add", v4, "dev", dev]);
        netns.ip(&["addr", "add", v6, "dev", dev, "nodad"]);
        netns.ip(&["link", "set", peer, "up"]);
        netns.ip(&["link", "set", dev, "up"]);
    }
    if neighbours {
        for (addr, mac, dev) in [
            (CLIENT, CLIENT_MAC, "bc"),
            (CLIENT_V6, CLIENT_MAC, "bc"),
            (TARGET, TARGET_MAC, "bt"),
            (TARGET_V6, TARGET_MAC, "bt"),
        ] {
            netns.ip(&["neigh", "replace", addr, "lladdr", &mac_text(mac), "dev", dev, "nud", "permanent"]);
        }
    }
    netns.sysctl("net.ipv4.ip_forward", "1");
    netns.sysctl("net.ipv6.conf.all.forwarding", "1");
    netns
}

/// Loads the bounce object in the calling thread's namespace with a UDP service
/// LISTEN:5353 -> TARGET:53 in each family, each allocating only [`BOUNCE_PORT`].
fn bounce_object() -> LoadedObject {
    let object = LoadedObject::bounce("btr", 64, &[PROG_XDP_BOUNCE, PROG_TC_BOUNCE]);
    let mut table = BounceTable::open(&object.layout).expect("open the bounce maps");
    for (listen, target) in [
        (format!("{LISTEN}:5353/udp"), format!("{TARGET}:53")),
        (format!("[{LISTEN_V6}]:5353/udp"), format!("[{TARGET_V6}]:53")),
    ] {
        let spec = ServiceSpec::new(&listen, &target, None, Some((BOUNCE_PORT, BOUNCE_PORT))).expect("a valid service");
        let resolved = spec.resolve().expect("the fixture's namespace routes to the target and forwards");
        table.add(&resolved).expect("add the service");
    }
    object
}

/// A frame as the fixture expects it to leave: `spec` between the given MACs.
fn frame_between(spec: &IpSpec, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut frame = spec.frame();
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame
}

/// Runs `program` on `input` and checks verdict and output frame exactly.
fn expect_run(object: &LoadedObject, program: &str, input: &[u8], verdict: u32, output: &[u8], what: &str) {
    let (result, _) = object.test_run(program, input, 1).unwrap_or_else(|error| panic!("{what}: test run: {error:?}"));
    assert_eq!(result.verdict, verdict, "{what}: verdict");
    assert_eq!(hex(&result.output), hex(output), "{what}: the frame as it left");
    if result.output != input {
        verify_checksums(&result.output).unwrap_or_else(|error| panic!("{what}: {error}"));
    }
}

fn counter(object: &LoadedObject, name: &str) -> u64 {
    let stats = BounceStats::read(&object.layout).expect("read the bounce counters");
    *stats.counters.get(name).unwrap_or_else(|| panic!("no counter {name}"))
}

/// A datagram from the client opens a flow and leaves towards the target, translated
/// and between the route's MACs; the target's answer comes back translated to LISTEN.
fn a_flow_is_opened_and_answered_by(program: &str, redirect: u32) {
    bouncer(true).run(|| {
        let object = bounce_object();
        for (client, listen, source, target) in
            [(CLIENT, LISTEN, SOURCE, TARGET), (CLIENT_V6, LISTEN_V6, SOURCE_V6, TARGET_V6)]
        {
            let request = IpSpec::udp(ip(client), ip(listen)).with_ports(40000, 5353);
            let bounced = request.with_addresses(ip(source), ip(target)).with_ports(BOUNCE_PORT, 53);
            expect_run(
                &object,
                program,
                &request.frame(),
                redirect,
                &frame_between(&bounced, TARGET_MAC, BOUNCER_TARGET_SIDE_MAC),
                &format!("{program}: {client} -> {listen}"),
            );
            let answer = IpSpec::udp(ip(target), ip(source)).with_ports(53, BOUNCE_PORT);
            let answered = answer.with_addresses(ip(listen), ip(client)).with_ports(5353, 40000);
            expect_run(
                &object,
                program,
                &answer.frame(),
                redirect,
                &frame_between(&answered, CLIENT_MAC, BOUNCER_CLIENT_SIDE_MAC),
                &format!("{program}: the answer from {target}"),
            );
        }
        assert_eq!(counter(&object, "connects"), 2, "one flow per family");
        assert_eq!(counter(&object, "forwarded"), 4);
        assert_eq!(counter(&object, "errors"), 0);
    });
}

#[test]
fn xdp_opens_a_flow_and_translates_both_ways_byte_for_byte() {
    a_flow_is_opened_and_answered_by(PROG_XDP_BOUNCE, XDP_REDIRECT);
}

#[test]
fn tc_opens_a_flow_and_translates_both_ways_byte_for_byte() {
    a_flow_is_opened_and_answered_by(PROG_TC_BOUNCE, TC_ACT_REDIRECT);
}

#[test]
fn xdp_leaves_an_unresolved_next_hop_to_tc_before_touching_any_state() {
    bouncer(false).run(|| {
        let object = bounce_object();
        let request = IpSpec::udp(ip(CLIENT), ip(LISTEN)).with_ports(40000, 5353);
        let frame = request.frame();
        expect_run(&object, PROG_XDP_BOUNCE, &frame, XDP_PASS, &frame, "XDP with no neighbour entry");
        assert_eq!(counter(&object, "connects"), 0, "XDP opened nothing");
        assert_eq!(counter(&object, "unroutable"), 0, "deferring is not a failure");
        // TC translates and hands the frame to bpf_redirect_neigh, which fills the MACs
        // when it resolves the target: they leave as they came.
        let bounced = request.with_addresses(ip(SOURCE), ip(TARGET)).with_ports(BOUNCE_PORT, 53);
        let mut expected = bounced.frame();
        expected[..12].copy_from_slice(&frame[..12]);
        expect_run(&object, PROG_TC_BOUNCE, &frame, TC_ACT_REDIRECT, &expected, "TC with no neighbour entry");
        assert_eq!(counter(&object, "connects"), 1);
    });
}

#[test]
fn packets_that_open_no_flow_pass_byte_identical() {
    bouncer(true).run(|| {
        let object = bounce_object();
        let cases = [
            // TCP to a UDP service's address and port: no service.
            ("TCP to a UDP LISTEN", IpSpec::tcp(ip(CLIENT), ip(LISTEN)).with_ports(40000, 5353)),
            // UDP to another port of LISTEN.
            ("UDP to an unbounced port", IpSpec::udp(ip(CLIENT), ip(LISTEN)).with_ports(40000, 5354)),
            // A reply to a bounce port that no flow holds.
            ("UDP to a free bounce port", IpSpec::udp(ip(TARGET), ip(SOURCE)).with_ports(53, BOUNCE_PORT)),
            ("ICMP to LISTEN", IpSpec::icmp(ip(CLIENT), ip(LISTEN))),
        ];
        for (what, spec) in cases {
            let frame = spec.frame();
            expect_run(&object, PROG_XDP_BOUNCE, &frame, XDP_PASS, &frame, &format!("XDP: {what}"));
            expect_run(&object, PROG_TC_BOUNCE, &frame, TC_NEXT, &frame, &format!("TC: {what}"));
        }
        let mut truncated = IpSpec::udp(ip(CLIENT), ip(LISTEN)).with_ports(40000, 5353).frame();
        truncated.truncate(14 + 20 + 4);
        expect_run(&object, PROG_XDP_BOUNCE, &truncated, XDP_PASS, &truncated, "XDP: a truncated datagram");
        expect_run(&object, PROG_TC_BOUNCE, &truncated, TC_NEXT, &truncated, "TC: a truncated datagram");
        assert_eq!(counter(&object, "connects"), 0);
        assert_eq!(counter(&object, "forwarded"), 0);
    });
}

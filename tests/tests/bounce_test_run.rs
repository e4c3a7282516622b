//! BPF_PROG_TEST_RUN fixtures for bounce mode: its XDP and TC programs, loaded into the
//! kernel, run on crafted frames inside a namespace whose routes and neighbours the
//! fixture sets, so that the route lookup the programs make is deterministic. Every
//! case compares the whole output frame byte for byte (MAC addresses, translated
//! addresses and ports, checksums) and the verdict.
//!
//! A test run only returns the verdict of a redirect; the frame goes nowhere.

use std::net::IpAddr;

use rewrite_common::{
    pinned::{PROG_TC_BOUNCE, PROG_XDP_BOUNCE},
    ports::PortRange,
};
use rewrite_tests::{
    bounce::{
        BOUNCER_CLIENT_SIDE_MAC, BOUNCER_TARGET_SIDE_MAC, CLIENT, CLIENT_MAC, CLIENT_V6, LISTEN, LISTEN_V6, SOURCE,
        SOURCE_V6, TARGET, TARGET_MAC, TARGET_V6,
    },
    netns::Netns,
    packet::Transport,
    packet::{IpSpec, hex, verify_checksums},
    programs::LoadedObject,
};
use rewrite_user::bounce::{BounceStats, BounceTable, ServiceSpec};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
/// TC_ACT_UNSPEC (-1): "pass, and let the next tcx program run".
const TC_NEXT: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_SHOT: u32 = 2;
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
        let spec =
            ServiceSpec::new(&listen, &target, None, Some(PortRange::single(BOUNCE_PORT))).expect("a valid service");
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
            // Forwarded as a router forwards: one hop less to live.
            let bounced = request.with_addresses(ip(source), ip(target)).with_ports(BOUNCE_PORT, 53).with_ttl(63);
            expect_run(
                &object,
                program,
                &request.frame(),
                redirect,
                &frame_between(&bounced, TARGET_MAC, BOUNCER_TARGET_SIDE_MAC),
                &format!("{program}: {client} -> {listen}"),
            );
            let answer = IpSpec::udp(ip(target), ip(source)).with_ports(53, BOUNCE_PORT);
            let answered = answer.with_addresses(ip(listen), ip(client)).with_ports(5353, 40000).with_ttl(63);
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
        let bounced = request.with_addresses(ip(SOURCE), ip(TARGET)).with_ports(BOUNCE_PORT, 53).with_ttl(63);
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

/// A packet whose TTL (hop limit) would expire at the bouncer is not forwarded: it
/// passes to the host's stack unchanged, opens no flow, and is counted.
#[test]
fn a_packet_that_would_expire_here_is_left_to_the_stack() {
    bouncer(true).run(|| {
        let object = bounce_object();
        for (client, listen) in [(CLIENT, LISTEN), (CLIENT_V6, LISTEN_V6)] {
            let frame = IpSpec::udp(ip(client), ip(listen)).with_ports(40000, 5353).with_ttl(1).frame();
            expect_run(&object, PROG_XDP_BOUNCE, &frame, XDP_PASS, &frame, "XDP: TTL 1");
            expect_run(&object, PROG_TC_BOUNCE, &frame, TC_NEXT, &frame, "TC: TTL 1");
        }
        assert_eq!(counter(&object, "ttl_expired"), 4);
        assert_eq!(counter(&object, "connects"), 0, "no flow for a packet that is not forwarded");
    });
}

/// A flow the target never answered gives its source port back after the short
/// timeout: with a service of one port, a second client gets it once the first
/// client's lone datagram went unanswered for that long (not the UDP idle timeout).
#[test]
fn an_unanswered_flow_gives_its_port_back_after_the_short_timeout() {
    bouncer(true).run(|| {
        let object = bounce_object();
        let mut table = BounceTable::open(&object.layout).expect("open the bounce maps");
        table.set_timeouts(None, None, Some(std::time::Duration::from_secs(1))).expect("set the unreplied timeout");
        let first = IpSpec::udp(ip(CLIENT), ip(LISTEN)).with_ports(40000, 5353).frame();
        let second = IpSpec::udp(ip(CLIENT), ip(LISTEN)).with_ports(40001, 5353).frame();
        let run = |frame: &[u8]| object.test_run(PROG_TC_BOUNCE, frame, 1).expect("test run").0.verdict;
        assert_eq!(run(&first), TC_ACT_REDIRECT, "the first client's flow takes the only port");
        assert_eq!(run(&second), TC_NEXT, "no port while the first flow is young");
        assert_eq!(counter(&object, "port_exhausted"), 1);
        std::thread::sleep(std::time::Duration::from_millis(1300));
        assert_eq!(run(&second), TC_ACT_REDIRECT, "the unanswered flow gave the port back");
        assert_eq!(counter(&object, "connects"), 2);
        assert_eq!(counter(&object, "closed_idle"), 1);
    });
}

/// TCP through the bouncer: a reset closes the flow only if its sequence number lies
/// in its sender's window; a blind one is dropped and counted, and the flow goes on.
#[test]
fn only_a_reset_within_its_senders_window_closes_a_flow() {
    bouncer(true).run(|| {
        let object = bounce_object();
        let mut table = BounceTable::open(&object.layout).expect("open the bounce maps");
        let spec = ServiceSpec::new(
            &format!("{LISTEN}:8080/tcp"),
            &format!("{TARGET}:80"),
            None,
            Some(PortRange::single(BOUNCE_PORT)),
        )
        .expect("a valid service");
        table.add(&spec.resolve().expect("resolves in the fixture's namespace")).expect("add the TCP service");
        let segment = |src: &str, dst: &str, ports: (u16, u16), seq: u32, ack: u32, flags: u8| {
            IpSpec::new(
                ip(src),
                ip(dst),
                Transport::TcpSegment { src_port: ports.0, dst_port: ports.1, seq, ack, flags, payload: Vec::new() },
            )
            .frame()
        };
        let run = |frame: &[u8]| object.test_run(PROG_TC_BOUNCE, frame, 1).expect("test run").0.verdict;
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        const RST: u8 = 0x04;
        // The client's SYN, the target's SYN-ACK: the flow is established.
        assert_eq!(run(&segment(CLIENT, LISTEN, (40000, 8080), 1000, 0, SYN)), TC_ACT_REDIRECT);
        assert_eq!(run(&segment(TARGET, SOURCE, (80, BOUNCE_PORT), 5000, 1001, SYN | ACK)), TC_ACT_REDIRECT);
        // A reset far from the target's sequence number: dropped, counted, the flow stays.
        let blind = segment(TARGET, SOURCE, (80, BOUNCE_PORT), 5001 + 0x4000_0000, 0, RST);
        assert_eq!(run(&blind), TC_ACT_SHOT);
        assert_eq!((counter(&object, "rst_ignored"), counter(&object, "closed_rst")), (1, 0));
        assert_eq!(run(&segment(CLIENT, LISTEN, (40000, 8080), 1001, 5001, ACK)), TC_ACT_REDIRECT, "the flow goes on");
        // The target's own reset, at its next sequence number: forwarded, the flow ends.
        assert_eq!(run(&segment(TARGET, SOURCE, (80, BOUNCE_PORT), 5001, 0, RST)), TC_ACT_REDIRECT);
        assert_eq!(counter(&object, "closed_rst"), 1);
        assert_eq!(counter(&object, "errors"), 0);
    });
}

/// A half whose partner was evicted from a full table must not splice into the flow
/// that took its port over: the first client's next datagram ends its leftover half
/// (`closed_evicted`) instead of leaving with the port the second client's flow holds,
/// and the target's answers on that port still reach the second client only.
#[test]
fn a_half_left_by_eviction_does_not_splice_into_the_flow_that_reused_its_port() {
    use aya::maps::{HashMap, Map, MapData};
    use rewrite_common::bounce::{FROM_TARGET, FlowEntry, FlowTuple, MAP_BOUNCE_FLOWS};

    bouncer(true).run(|| {
        let object = bounce_object();
        let first = IpSpec::udp(ip(CLIENT), ip(LISTEN)).with_ports(40000, 5353);
        let second = IpSpec::udp(ip(CLIENT), ip(LISTEN)).with_ports(40001, 5353);
        let run = |frame: &[u8]| object.test_run(PROG_TC_BOUNCE, frame, 1).expect("test run").0;
        assert_eq!(run(&first.frame()).verdict, TC_ACT_REDIRECT, "the first client's flow takes the only port");

        // The LRU evicts the first flow's target half (here: removed by hand).
        let pin = object.layout.map(MAP_BOUNCE_FLOWS);
        let data = MapData::from_pin(&pin).expect("open the pinned flow map");
        let mut flows: HashMap<MapData, FlowTuple, FlowEntry> =
            HashMap::try_from(Map::from_map_data(data).expect("a map")).expect("the flow map");
        let target_halves: Vec<FlowTuple> = flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, entry)| entry.side == FROM_TARGET)
            .map(|(key, _)| key)
            .collect();
        assert_eq!(target_halves.len(), 1, "one flow, one target half");
        flows.remove(&target_halves[0]).expect("evict the target half");

        // The port is free again: the second client's flow takes it.
        let bounced = second.with_addresses(ip(SOURCE), ip(TARGET)).with_ports(BOUNCE_PORT, 53).with_ttl(63);
        expect_run(
            &object,
            PROG_TC_BOUNCE,
            &second.frame(),
            TC_ACT_REDIRECT,
            &frame_between(&bounced, TARGET_MAC, BOUNCER_TARGET_SIDE_MAC),
            "the second client's flow",
        );
        // The first client again: its leftover half ends, and with the only port held
        // it gets no flow; nothing leaves on the second client's port.
        let again = run(&first.frame());
        assert_eq!(again.verdict, TC_NEXT, "the leftover half must not forward");
        assert_eq!(hex(&again.output), hex(&first.frame()), "passed unchanged");
        assert_eq!(counter(&object, "closed_evicted"), 1);
        // The target's answer on the port reaches the second client.
        let answer = IpSpec::udp(ip(TARGET), ip(SOURCE)).with_ports(53, BOUNCE_PORT);
        let answered = answer.with_addresses(ip(LISTEN), ip(CLIENT)).with_ports(5353, 40001).with_ttl(63);
        expect_run(
            &object,
            PROG_TC_BOUNCE,
            &answer.frame(),
            TC_ACT_REDIRECT,
            &frame_between(&answered, CLIENT_MAC, BOUNCER_CLIENT_SIDE_MAC),
            "the answer goes to the second client",
        );
    });
}

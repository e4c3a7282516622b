//! Tracing never touches a packet or a counter: with no reader (trace off), with one
//! that selects every packet, and with one whose filter selects none, each frame comes
//! back byte for byte as the other fixtures expect it and exactly its outcome counter
//! moves. Records appear only while a reader holds the lease, one per selected packet,
//! with the flow before and after and the outcome (the reason of a malformed one).

use rewrite_common::{
    bounce::FlowTuple,
    maps::IPPROTO_TCP,
    trace::{
        AddressTerm, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP, MATCHED_ADDRESS, MATCHED_NONE,
        REASON_BAD_TCP_DATA_OFFSET, REASON_NONE, SIDE_EITHER, TraceFilter,
    },
};
use std::net::IpAddr;

use rewrite_tests::programs::TraceMaps;

use super::*;

/// One case: the hook, the input, what must come out, the outcome counted.
struct Case {
    hook: Hook,
    input: Vec<u8>,
    expected: Vec<u8>,
    outcome: u32,
}

fn cases() -> Vec<Case> {
    let rewrite = |hook, input: IpSpec, expected: IpSpec| Case {
        hook,
        input: input.frame(),
        expected: expected.frame(),
        outcome: REWRITTEN,
    };
    let unchanged = |hook, input: Vec<u8>, outcome| Case { hook, expected: input.clone(), input, outcome };
    let mut malformed = IpSpec::tcp(peer_real(), local()).frame();
    let l4 = IpSpec::tcp(peer_real(), local()).l4_offset();
    malformed[l4 + 12] = 0x30;
    vec![
        rewrite(Hook::TcEgress, IpSpec::tcp(local(), peer_virtual()), IpSpec::tcp(local(), peer_real())),
        rewrite(Hook::XdpIngress, IpSpec::tcp(peer_real(), local()), IpSpec::tcp(peer_virtual(), local())),
        unchanged(Hook::TcIngress, IpSpec::udp(ip("192.0.2.9"), local()).frame(), NO_MATCH),
        unchanged(Hook::XdpIngress, malformed, MALFORMED),
    ]
}

fn run_every_case(fixture: &Fixture) {
    for case in cases() {
        fixture.expect(case.hook, &case.input, &case.expected, case.outcome);
    }
}

fn tuple(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> FlowTuple {
    FlowTuple {
        src: Addr::from(src),
        dst: Addr::from(dst),
        src_port: src_port.to_be_bytes(),
        dst_port: dst_port.to_be_bytes(),
        protocol: IPPROTO_TCP,
        reserved: [0; 3],
    }
}

#[test]
fn tracing_leaves_packets_and_counters_byte_identical_and_records_only_while_on() {
    let fixture = Fixture::load();
    let mut trace = TraceMaps::open(&fixture.object);
    assert_eq!(trace.lease(), 0, "trace starts off");

    run_every_case(&fixture);
    assert!(trace.records().is_empty(), "no reader: no record");

    trace.turn_on(TraceFilter::default(), 1_000);
    run_every_case(&fixture);
    let records = trace.records();
    assert_eq!(records.len(), 4, "one record per packet: {records:#?}");
    let [egress, xdp, no_match, malformed] = [records[0], records[1], records[2], records[3]];
    assert_eq!((egress.hook, egress.outcome, egress.reason, egress.has_tuple), (HOOK_TC_EGRESS, 0, REASON_NONE, 1));
    assert_eq!(egress.before, tuple(local(), 40000, peer_virtual(), 9300), "{egress:#?}");
    assert_eq!(egress.after, tuple(local(), 40000, peer_real(), 9300), "{egress:#?}");
    assert_eq!(egress.matched, [MATCHED_NONE, MATCHED_ADDRESS], "{egress:#?}");
    assert_eq!((xdp.hook, u32::from(xdp.outcome)), (HOOK_XDP, REWRITTEN), "{xdp:#?}");
    assert_eq!(xdp.before, tuple(peer_real(), 40000, local(), 9300), "{xdp:#?}");
    assert_eq!(xdp.after, tuple(peer_virtual(), 40000, local(), 9300), "{xdp:#?}");
    assert_eq!(xdp.matched, [MATCHED_ADDRESS, MATCHED_NONE], "{xdp:#?}");
    assert_eq!((no_match.hook, u32::from(no_match.outcome)), (HOOK_TC_INGRESS, NO_MATCH), "{no_match:#?}");
    assert_eq!(no_match.before, no_match.after, "{no_match:#?}");
    assert_eq!((u32::from(malformed.outcome), malformed.reason), (MALFORMED, REASON_BAD_TCP_DATA_OFFSET));
    assert_eq!(malformed.before, tuple(peer_real(), 40000, local(), 9300), "{malformed:#?}");
    assert!(records.iter().all(|record| record.len > 0 && record.time_ns > 0), "{records:#?}");

    // A filter that selects none of them: the same packets and counters, no record.
    let mut nobody = TraceFilter::default();
    nobody.addresses[0] = AddressTerm {
        value: Addr::from(ip("192.0.2.200")),
        mask: Addr { octets: [0xff; 16] },
        side: SIDE_EITHER,
        reserved: [0; 3],
    };
    trace.turn_on(nobody, 1_000);
    run_every_case(&fixture);
    assert!(trace.records().is_empty(), "filtered out: no record");

    // A reader that died without giving its lease up: no record, and the first packet
    // puts the lease back to "off", so that the next ones pay one read again.
    trace.turn_on(TraceFilter::default(), 1_000);
    trace.set_lease(1);
    run_every_case(&fixture);
    assert!(trace.records().is_empty(), "an expired lease: no record");
    assert_eq!(trace.lease(), 0, "the programs turn an expired lease off");
}

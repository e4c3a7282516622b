//! BPF_PROG_TEST_RUN fixtures: the real programs, loaded into the kernel, run on
//! crafted frames. Every case compares the whole output frame byte for byte with the
//! expected one, checks its checksums by full recomputation, and checks that exactly
//! the expected outcome counter moved.

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData};
use rewrite_common::{
    counters::{self, EGRESS, FRAGMENT_UNMATCHED, INGRESS, MALFORMED, NO_MATCH, REWRITTEN, UNSUPPORTED},
    mapping::PrefixMapping,
    maps::{Addr, AddressEntry, MAP_ADDR_FORWARD, MappingStats},
    spec::MappingSpec,
};
use rewrite_tests::{
    packet::{
        ETH_LEN, IPV6_DESTINATION_OPTIONS, IPV6_HOP_BY_HOP, IPV6_ROUTING, IpSpec, Transport, hex, unhex,
        verify_checksums,
    },
    programs::LoadedObject,
};
use rewrite_user::{
    Error,
    loader::{PROG_TC_EGRESS, PROG_TC_ICMP_ERRORS, PROG_TC_INGRESS, PROG_XDP_INGRESS},
    maps::{Mapping, MappingTable, Removed},
    stats::{Counters, MappingCounters},
};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1): "pass, and let the next tcx program or clsact filter run".
const TC_NEXT: u32 = u32::MAX;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

/// This host (unmapped), a peer's VIRTUAL and REAL, and this host's own VIRTUAL/REAL.
fn local() -> IpAddr {
    ip("10.100.0.1")
}
fn peer_virtual() -> IpAddr {
    ip("10.200.0.2")
}
fn peer_real() -> IpAddr {
    ip("10.100.0.2")
}
fn own_virtual() -> IpAddr {
    ip("10.200.0.9")
}
fn own_real() -> IpAddr {
    ip("10.100.0.9")
}

/// The same roles in IPv6.
fn local6() -> IpAddr {
    ip("2001:db8::1")
}
fn peer6_virtual() -> IpAddr {
    ip("fd00::2")
}
fn peer6_real() -> IpAddr {
    ip("2001:db8::2")
}
fn own6_virtual() -> IpAddr {
    ip("fd00::9")
}
fn own6_real() -> IpAddr {
    ip("2001:db8::9")
}

/// Port-scoped mappings: one TCP service on a host that also has an address mapping
/// (so the rest of that host moves elsewhere), a UDP range on a host with no address
/// mapping, and an IPv6 service.
const PORT_MAPPINGS: [(&str, &str); 3] = [
    ("10.200.0.2:9200/tcp", "10.100.0.30:9400/tcp"),
    ("10.200.0.3:5000-5009/udp", "10.100.0.31:6000-6009/udp"),
    ("[fd00::2]:443/tcp", "[2001:db8::30]:8443/tcp"),
];

/// Prefix mappings: a subnet in each family.
const PREFIX_MAPPINGS: [(&str, &str); 2] = [("10.201.0.0/16", "172.20.0.0/16"), ("fd01::/64", "2001:db8:1::/64")];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    XdpIngress,
    TcIngress,
    TcEgress,
    /// The TC program beside XDP that handles ICMP errors only.
    TcIcmpErrors,
}

impl Hook {
    const INGRESS: [Self; 2] = [Self::XdpIngress, Self::TcIngress];
    const ALL: [Self; 3] = [Self::XdpIngress, Self::TcIngress, Self::TcEgress];

    fn direction(self) -> u32 {
        if self == Self::TcEgress { EGRESS } else { INGRESS }
    }

    fn program(self) -> &'static str {
        match self {
            Self::XdpIngress => PROG_XDP_INGRESS,
            Self::TcIngress => PROG_TC_INGRESS,
            Self::TcEgress => PROG_TC_EGRESS,
            Self::TcIcmpErrors => PROG_TC_ICMP_ERRORS,
        }
    }
}

/// The object loaded with its maps pinned in a private bpffs directory, the three
/// programs loaded into the kernel, and the table holding two mappings.
struct Fixture {
    object: LoadedObject,
}

impl Fixture {
    fn new() -> Self {
        Self::with_capacity(None)
    }

    fn with_capacity(max_mappings: Option<u32>) -> Self {
        let programs = [PROG_XDP_INGRESS, PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_TC_ICMP_ERRORS];
        let object = LoadedObject::new("fixture", max_mappings, &programs);
        let mut table = object.table();
        table.add(peer_virtual(), peer_real()).expect("add peer mapping");
        table.add(own_virtual(), own_real()).expect("add own mapping");
        table.add(peer6_virtual(), peer6_real()).expect("add IPv6 peer mapping");
        table.add(own6_virtual(), own6_real()).expect("add IPv6 own mapping");
        for (virtual_side, real_side) in PORT_MAPPINGS.into_iter().chain(PREFIX_MAPPINGS) {
            match MappingSpec::parse(virtual_side, real_side).expect("valid form") {
                MappingSpec::Ports(mapping) => table.add_ports(&mapping).map(drop),
                MappingSpec::Prefix(mapping) => table.add_prefix(&mapping).map(drop),
                MappingSpec::Address { .. } => panic!("{virtual_side}: address mappings are added above"),
            }
            .unwrap_or_else(|error| panic!("add {virtual_side} -> {real_side}: {error}"));
        }
        Self { object }
    }

    fn table(&self) -> MappingTable {
        self.object.table()
    }

    /// Runs `hook` on `input`; returns the output frame after checking the verdict.
    fn run(&self, hook: Hook, input: &[u8]) -> Vec<u8> {
        let pass = if hook == Hook::XdpIngress { XDP_PASS } else { TC_NEXT };
        let (result, _) = self
            .object
            .test_run(hook.program(), input, 1)
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of {hook:?} failed: {error:?}"));
        assert_eq!(result.verdict, pass, "{hook:?} must let every packet pass");
        result.output
    }

    fn counters(&self) -> Counters {
        Counters::read(&self.object.layout).expect("read counters")
    }

    /// Runs `input` through `hook`, expects exactly `expected` back and exactly one
    /// increment of `outcome` in the hook's direction.
    fn expect(&self, hook: Hook, input: &[u8], expected: &[u8], outcome: u32) {
        let before = self.counters();
        let output = self.run(hook, input);
        assert!(
            output == expected,
            "{hook:?} output differs from the expected frame\ninput:\n{}\noutput:\n{}\nexpected:\n{}",
            hex(input),
            hex(&output),
            hex(expected)
        );
        let after = self.counters();
        for direction in [INGRESS, EGRESS] {
            for slot in 0..counters::OUTCOMES {
                let delta = after.get(direction, slot) - before.get(direction, slot);
                let wanted = u64::from(direction == hook.direction() && slot == outcome);
                assert_eq!(
                    delta,
                    wanted,
                    "{hook:?}: counter {}/{} moved by {delta}, expected {wanted}",
                    counters::DIRECTION_NAMES[direction as usize],
                    counters::OUTCOME_NAMES[slot as usize]
                );
            }
        }
    }

    /// A valid packet is rewritten to `expected`, whose checksums must verify.
    fn expect_rewrite(&self, hook: Hook, input: &IpSpec, expected: &IpSpec) {
        let expected = expected.frame();
        verify_checksums(&expected).expect("the expected frame is valid");
        self.expect(hook, &input.frame(), &expected, REWRITTEN);
    }

    /// `input` comes back byte-identical, counted as `outcome`.
    fn expect_unchanged(&self, hook: Hook, input: &[u8], outcome: u32) {
        self.expect(hook, input, input, outcome);
    }
}

fn all_transports(src: IpAddr, dst: IpAddr) -> [IpSpec; 3] {
    [IpSpec::tcp(src, dst), IpSpec::udp(src, dst), IpSpec::icmp(src, dst)]
}

#[test]
fn egress_sends_virtual_destination_to_real() {
    let fixture = Fixture::new();
    for spec in all_transports(local(), peer_virtual()) {
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local(), peer_real()));
    }
}

#[test]
fn egress_sends_own_virtual_source_as_real_and_both_at_once() {
    let fixture = Fixture::new();
    for spec in all_transports(own_virtual(), ip("10.100.0.77")) {
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(own_real(), ip("10.100.0.77")));
    }
    for spec in all_transports(own_virtual(), peer_virtual()) {
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(own_real(), peer_real()));
    }
}

#[test]
fn ingress_restores_virtual_source_and_own_virtual_destination() {
    let fixture = Fixture::new();
    for hook in Hook::INGRESS {
        for spec in all_transports(peer_real(), local()) {
            fixture.expect_rewrite(hook, &spec, &spec.with_addresses(peer_virtual(), local()));
        }
        for spec in all_transports(peer_real(), own_real()) {
            fixture.expect_rewrite(hook, &spec, &spec.with_addresses(peer_virtual(), own_virtual()));
        }
    }
}

#[test]
fn packets_matching_no_mapping_pass_byte_identical() {
    let fixture = Fixture::new();
    let stranger = ip("192.0.2.50");
    for hook in Hook::ALL {
        for spec in all_transports(local(), stranger) {
            fixture.expect_unchanged(hook, &spec.frame(), NO_MATCH);
        }
    }
    // Each direction looks only at its own side of the table: egress never matches a
    // REAL, ingress never matches a VIRTUAL.
    fixture.expect_unchanged(Hook::TcEgress, &IpSpec::tcp(local(), peer_real()).frame(), NO_MATCH);
    for hook in Hook::INGRESS {
        fixture.expect_unchanged(hook, &IpSpec::tcp(peer_virtual(), local()).frame(), NO_MATCH);
    }
}

#[test]
fn independent_reference_vectors() {
    // Computed by a separate implementation (Python, struct + a textbook checksum),
    // so a bug shared by the programs and this crate's checksum code cannot pass.
    let tcp_in = unhex(
        "02000000000202000000000108004500003cbeef00004006a69e0a6400010ac800029c402454010203040a0b0c0d5018faf0fc72
         0000474554202f5f636c75737465722f6865616c7468",
    );
    let tcp_out = unhex(
        "02000000000202000000000108004500003cbeef00004006a7020a6400010a6400029c402454010203040a0b0c0d5018faf0fcd6
         0000474554202f5f636c75737465722f6865616c7468",
    );
    let udp_in = unhex(
        "02000000000202000000000108004500002ebeef00004011a7050a6400020a64000114e95dc7001ae9bc676c757374657220706565722070726f6265",
    );
    let udp_out = unhex(
        "02000000000202000000000108004500002ebeef00004011a6a10ac800020a64000114e95dc7001ae958676c757374657220706565722070726f6265",
    );
    let fixture = Fixture::new();
    fixture.expect(Hook::TcEgress, &tcp_in, &tcp_out, REWRITTEN);
    for hook in Hook::INGRESS {
        fixture.expect(hook, &udp_in, &udp_out, REWRITTEN);
    }
}

#[test]
fn ipv4_options_move_the_transport_header() {
    let fixture = Fixture::new();
    // Record-route-like option bytes (type 7) padded with end-of-options, 8 and 40 bytes.
    for options in [vec![7, 7, 4, 0, 0, 0, 0, 0], vec![1; 40]] {
        for spec in all_transports(local(), peer_virtual()) {
            let spec = IpSpec { options: options.clone(), ..spec };
            fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local(), peer_real()));
        }
        for hook in Hook::INGRESS {
            for spec in all_transports(peer_real(), local()) {
                let spec = IpSpec { options: options.clone(), ..spec };
                fixture.expect_rewrite(hook, &spec, &spec.with_addresses(peer_virtual(), local()));
            }
        }
    }
}

#[test]
fn zero_udp_checksum_stays_zero_and_computed_zero_is_sent_as_ffff() {
    let fixture = Fixture::new();
    let zero = IpSpec::new(
        peer_real(),
        local(),
        Transport::Udp { src_port: 53, dst_port: 5353, payload: b"no checksum".to_vec(), zero_checksum: true },
    );
    for hook in Hook::INGRESS {
        fixture.expect_rewrite(hook, &zero, &zero.with_addresses(peer_virtual(), local()));
    }
    let egress_zero = zero.with_addresses(local(), peer_virtual());
    fixture.expect_rewrite(Hook::TcEgress, &egress_zero, &egress_zero.with_addresses(local(), peer_real()));

    // Find a payload whose checksum after the rewrite computes to zero, which must go on
    // the wire as 0xffff (a zero would mean "no checksum").
    let udp_check = ETH_LEN + 20 + 6;
    let spec = (0..=u16::MAX)
        .map(|tweak| {
            let payload = [b"edge".as_slice(), &tweak.to_be_bytes()].concat();
            IpSpec::new(
                peer_real(),
                local(),
                Transport::Udp { src_port: 7, dst_port: 7, payload, zero_checksum: false },
            )
        })
        .find(|spec| spec.with_addresses(peer_virtual(), local()).frame()[udp_check..udp_check + 2] == [0xff, 0xff])
        .expect("some 2-byte tweak makes the rewritten checksum 0xffff");
    for hook in Hook::INGRESS {
        fixture.expect_rewrite(hook, &spec, &spec.with_addresses(peer_virtual(), local()));
    }
}

#[test]
fn non_first_fragments_get_addresses_rewritten_and_payload_untouched() {
    let fixture = Fixture::new();
    // A middle fragment of a UDP datagram: its first bytes look like a UDP header but
    // are payload, and must not be "fixed".
    let fragment = IpSpec {
        fragment_offset: 185,
        more_fragments: true,
        ..IpSpec::new(peer_real(), local(), Transport::Raw { protocol: 17, bytes: (0..64).collect() })
    };
    for hook in Hook::INGRESS {
        fixture.expect_rewrite(hook, &fragment, &fragment.with_addresses(peer_virtual(), local()));
    }
}

#[test]
fn unsupported_packets_pass_byte_identical() {
    let fixture = Fixture::new();
    // ARP request.
    let arp = unhex("ffffffffffff020000000001080600010800060400010200000000010a6400010000000000000a640002");
    // GRE (47) to a mapped address: other protocols may carry pseudo-header checksums.
    let gre =
        IpSpec::new(local(), peer_virtual(), Transport::Raw { protocol: 47, bytes: vec![0, 0, 0x08, 0, 1, 2, 3, 4] });
    let gre_in =
        IpSpec::new(peer_real(), local(), Transport::Raw { protocol: 47, bytes: vec![0, 0, 0x08, 0, 1, 2, 3, 4] });
    for hook in Hook::ALL {
        fixture.expect_unchanged(hook, &arp, UNSUPPORTED);
    }
    fixture.expect_unchanged(Hook::TcEgress, &gre.frame(), UNSUPPORTED);
    for hook in Hook::INGRESS {
        fixture.expect_unchanged(hook, &gre_in.frame(), UNSUPPORTED);
    }
}

#[test]
fn truncated_and_inconsistent_packets_pass_byte_identical() {
    let fixture = Fixture::new();
    for (hook, spec) in [
        (Hook::TcEgress, IpSpec::tcp(local(), peer_virtual())),
        (Hook::TcEgress, IpSpec::udp(local(), peer_virtual())),
        (Hook::XdpIngress, IpSpec::tcp(peer_real(), local())),
        (Hook::XdpIngress, IpSpec::udp(peer_real(), local())),
        (Hook::TcIngress, IpSpec::icmp(peer_real(), local())),
    ] {
        let frame = spec.frame();
        // Every cut up to one byte short: the IPv4 total length then claims more than
        // the frame holds. The kernel's test runner refuses frames shorter than an
        // Ethernet header, and for skb programs also IPv4 frames shorter than an IPv4
        // header, so XDP covers the shortest cuts.
        let shortest = if hook == Hook::XdpIngress { ETH_LEN } else { ETH_LEN + 20 };
        for len in shortest..frame.len() {
            fixture.expect_unchanged(hook, &frame[..len], MALFORMED);
        }
    }
    for hook in Hook::ALL {
        // A TCP packet that this hook would rewrite, were it well-formed.
        let base = if hook == Hook::TcEgress {
            IpSpec::tcp(local(), peer_virtual())
        } else {
            IpSpec::tcp(peer_real(), local())
        };
        let base = base.frame();
        let mut bad = Vec::new();
        let mut frame = base.clone();
        frame[ETH_LEN] = 0x44;
        bad.push(("IHL 4", frame));
        let mut frame = base.clone();
        frame[ETH_LEN] = 0x65;
        bad.push(("version 6 in an IPv4 ethertype", frame));
        let mut frame = base.clone();
        frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&16u16.to_be_bytes());
        bad.push(("total length below the header", frame));
        // The frame is longer (as if padded), but the datagram ends inside TCP.
        let mut frame = base.clone();
        frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&28u16.to_be_bytes());
        bad.push(("total length ends inside TCP", frame));
        let mut frame = base.clone();
        frame[ETH_LEN + 20 + 12] = 0x40;
        bad.push(("TCP data offset 4", frame));
        let mut frame = base.clone();
        frame[ETH_LEN + 20 + 12] = 0xf0;
        bad.push(("TCP data offset beyond the datagram", frame));
        for (what, frame) in bad {
            let before = fixture.counters().get(hook.direction(), MALFORMED);
            let output = fixture.run(hook, &frame);
            assert_eq!(output, frame, "{hook:?}, {what}: a malformed packet must pass unchanged");
            let after = fixture.counters().get(hook.direction(), MALFORMED);
            assert_eq!(after, before + 1, "{hook:?}, {what}: must count as malformed");
        }
    }
}

#[test]
fn ethernet_padding_after_the_datagram_is_kept_and_ignored() {
    let fixture = Fixture::new();
    for hook in Hook::ALL {
        let (input, output) = if hook == Hook::TcEgress {
            ((local(), peer_virtual()), (local(), peer_real()))
        } else {
            ((peer_real(), local()), (peer_virtual(), local()))
        };
        let payload = Transport::Udp { src_port: 1, dst_port: 2, payload: vec![], zero_checksum: false };
        let spec = IpSpec::new(input.0, input.1, payload);
        let mut input_frame = spec.frame();
        let mut expected = spec.with_addresses(output.0, output.1).frame();
        // Short frames are padded to 60 bytes on the wire; the padding is not IP payload
        // and must not enter the checksum.
        input_frame.resize(60, 0xa5);
        expected.resize(60, 0xa5);
        fixture.expect(hook, &input_frame, &expected, REWRITTEN);
    }
}

#[test]
fn a_full_table_is_an_error_and_the_table_stays_as_it_was() {
    // Every map gets this capacity: room for the fixture's 12 mapped ports, and so for
    // 12 address mappings, of which the fixture adds 4.
    let fixture = Fixture::with_capacity(Some(12));
    let mut table = fixture.table();
    for index in 0..8 {
        table.add(ip(&format!("10.200.1.{index}")), ip(&format!("10.100.1.{index}"))).expect("room left");
    }
    let before = table.list().expect("list");
    let error = table.add(ip("10.200.0.50"), ip("10.100.0.50")).expect_err("a 13th mapping must not fit");
    assert!(matches!(error, Error::TableFull { capacity: 12 }), "expected TableFull, got {error:?}");
    assert!(error.to_string().contains("full (12 mappings)"), "unclear message: {error}");
    assert_eq!(table.list().expect("list"), before, "a failed add must leave the table as it was");
    // Retargeting an existing mapping needs the old REAL freed first; at capacity it
    // is refused rather than half-applied.
    let retarget = table.add(peer_virtual(), ip("10.100.0.51"));
    assert!(matches!(retarget, Err(Error::TableFull { .. })), "retarget at capacity: {retarget:?}");
    assert_eq!(table.list().expect("list"), before, "a failed retarget must leave the table as it was");
    // The dataplane still rewrites with the table it has.
    let spec = IpSpec::tcp(local(), peer_virtual());
    fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local(), peer_real()));

    // The port maps hold the fixture's 12 ports. Free one slot, then add a range of
    // two: the first port's reverse entry fits, the second does not, and the add must
    // take the first one out again.
    table.remove_ports(rewrite_common::maps::IPPROTO_TCP, ip("fd00::2"), 443, 443).expect("free one port slot");
    let before = table.list().expect("list");
    let MappingSpec::Ports(range) = MappingSpec::parse("10.200.0.4:80-81/tcp", "10.100.0.40:80-81/tcp").expect("valid")
    else {
        panic!("a port-scoped form");
    };
    let error = table.add_ports(&range).expect_err("two ports must not fit in one free slot");
    assert!(matches!(error, Error::TableFull { .. }), "expected TableFull, got {error:?}");
    assert_eq!(table.list().expect("list"), before, "a failed port add must leave the table as it was");
    // No reverse entry was left behind: a reply from the first REAL port is untouched.
    let reply = tcp_ports(ip("10.100.0.40"), 80, local(), 40000).frame();
    fixture.expect_unchanged(Hook::TcIngress, &reply, NO_MATCH);
}

#[test]
fn half_applied_entries_are_listed_and_repaired() {
    let fixture = Fixture::new();
    // Simulate a `map del` killed between its two writes: the forward entry is gone,
    // the reverse one is left.
    let path = fixture.object.layout.map(MAP_ADDR_FORWARD);
    let mut forward: HashMap<MapData, Addr, AddressEntry> =
        HashMap::try_from(Map::from_map_data(MapData::from_pin(&path).expect("open pin")).expect("map"))
            .expect("hash map");
    forward.remove(&Addr::from(peer_virtual())).expect("remove forward entry");

    let mut table = fixture.table();
    let listing = table.list().expect("list");
    let orphan = Mapping { virtual_addr: peer_virtual(), real_addr: peer_real() };
    assert_eq!(listing.orphans, vec![orphan], "the reverse-only entry must be reported");
    assert!(!listing.mappings.contains(&orphan));
    // The orphan does not block a new owner of REAL, which replaces it.
    let newcomer = ip("10.200.0.60");
    table.add(newcomer, peer_real()).expect("REAL held only by an orphan is free");
    assert_eq!(table.list().expect("list").orphans, vec![], "the add must clear the orphan");
    let spec = IpSpec::tcp(peer_real(), local());
    fixture.expect_rewrite(Hook::TcIngress, &spec, &spec.with_addresses(newcomer, local()));

    // And `del` of an orphan's VIRTUAL removes it.
    forward.remove(&Addr::from(newcomer)).expect("remove forward entry");
    assert_eq!(table.remove_mapping(newcomer).expect("del orphan"), Removed::Orphan(peer_real()));
    assert_eq!(table.list().expect("list").orphans, vec![]);
    fixture.expect_unchanged(Hook::TcIngress, &spec.frame(), NO_MATCH);
    assert!(matches!(table.remove_mapping(newcomer), Err(Error::NoSuchMapping { .. })));
}

#[test]
fn ipv6_tcp_udp_and_icmpv6_are_rewritten_in_both_directions() {
    let fixture = Fixture::new();
    for spec in all_transports(local6(), peer6_virtual()) {
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local6(), peer6_real()));
    }
    for spec in all_transports(own6_virtual(), peer6_virtual()) {
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(own6_real(), peer6_real()));
    }
    for hook in Hook::INGRESS {
        for spec in all_transports(peer6_real(), local6()) {
            fixture.expect_rewrite(hook, &spec, &spec.with_addresses(peer6_virtual(), local6()));
        }
        for spec in all_transports(peer6_real(), own6_real()) {
            fixture.expect_rewrite(hook, &spec, &spec.with_addresses(peer6_virtual(), own6_virtual()));
        }
        for spec in all_transports(local6(), ip("2001:db8::77")) {
            fixture.expect_unchanged(hook, &spec.frame(), NO_MATCH);
        }
    }
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let fixture = Fixture::new();
    // Hop-by-hop (a PadN option) and destination options, 8 and 16 bytes.
    let extensions = vec![
        (IPV6_HOP_BY_HOP, vec![1, 4, 0, 0, 0, 0]),
        (IPV6_DESTINATION_OPTIONS, vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ];
    for hook in Hook::ALL {
        let (src, dst, new_src, new_dst) = if hook == Hook::TcEgress {
            (local6(), peer6_virtual(), local6(), peer6_real())
        } else {
            (peer6_real(), local6(), peer6_virtual(), local6())
        };
        for spec in all_transports(src, dst) {
            let spec = IpSpec { extension_headers: extensions.clone(), ..spec };
            fixture.expect_rewrite(hook, &spec, &spec.with_addresses(new_src, new_dst));
        }
        // A routing header makes the destination an intermediate hop: left alone.
        let routed =
            IpSpec { extension_headers: vec![(IPV6_ROUTING, vec![0, 0, 0, 0, 0, 0])], ..IpSpec::tcp(src, dst) };
        fixture.expect_unchanged(hook, &routed.frame(), UNSUPPORTED);
        // The first fragment carries the UDP header and gets its checksum fixed; a
        // later one gets only its addresses rewritten.
        let first = IpSpec { more_fragments: true, ..IpSpec::udp(src, dst) };
        fixture.expect_rewrite(hook, &first, &first.with_addresses(new_src, new_dst));
        let later = IpSpec {
            fragment_offset: 100,
            ..IpSpec::new(src, dst, Transport::Raw { protocol: 17, bytes: (0..48).collect() })
        };
        fixture.expect_rewrite(hook, &later, &later.with_addresses(new_src, new_dst));
        // A later fragment of a datagram whose first fragment carried destination
        // options after the fragment header: what follows is payload, not a header.
        let after_options = IpSpec {
            fragment_offset: 100,
            ..IpSpec::new(src, dst, Transport::Raw { protocol: IPV6_DESTINATION_OPTIONS, bytes: vec![0xff; 48] })
        };
        fixture.expect_rewrite(hook, &after_options, &after_options.with_addresses(new_src, new_dst));
    }
}

#[test]
fn neighbour_discovery_is_never_rewritten() {
    let fixture = Fixture::new();
    for kind in 133u8..=137 {
        // An ND message between mapped addresses (as if someone mapped them).
        let mut body = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let spec = IpSpec::new(peer6_real(), local6(), Transport::Raw { protocol: 58, bytes: body });
        for hook in Hook::INGRESS {
            fixture.expect_unchanged(hook, &spec.frame(), UNSUPPORTED);
        }
    }
}

#[test]
fn one_vlan_tag_is_parsed_and_kept() {
    let fixture = Fixture::new();
    for (src, dst, new_dst) in [(local(), peer_virtual(), peer_real()), (local6(), peer6_virtual(), peer6_real())] {
        for spec in all_transports(src, dst) {
            let spec = IpSpec { vlan: Some(42), ..spec };
            fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(src, new_dst));
        }
    }
    for spec in all_transports(peer_real(), local()) {
        let spec = IpSpec { vlan: Some(4094), ..spec };
        fixture.expect_rewrite(Hook::XdpIngress, &spec, &spec.with_addresses(peer_virtual(), local()));
    }
    // Two tags (802.1ad outer) are not parsed: the frame passes as it is.
    let mut qinq = IpSpec { vlan: Some(7), ..IpSpec::tcp(peer_real(), local()) }.frame();
    qinq[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
    for hook in Hook::INGRESS {
        fixture.expect_unchanged(hook, &qinq, UNSUPPORTED);
    }
}

#[test]
fn truncated_and_inconsistent_ipv6_packets_pass_byte_identical() {
    let fixture = Fixture::new();
    for (hook, spec) in [
        (Hook::TcEgress, IpSpec::tcp(local6(), peer6_virtual())),
        (Hook::XdpIngress, IpSpec::udp(peer6_real(), local6())),
        (Hook::TcIngress, IpSpec::icmp(peer6_real(), local6())),
    ] {
        let frame = spec.frame();
        let shortest = if hook == Hook::XdpIngress { ETH_LEN } else { ETH_LEN + 40 };
        for len in shortest..frame.len() {
            fixture.expect_unchanged(hook, &frame[..len], MALFORMED);
        }
        // A payload length beyond the frame.
        let mut long = frame.clone();
        long[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&1000u16.to_be_bytes());
        fixture.expect_unchanged(hook, &long, MALFORMED);
        // Version 4 in an IPv6 ethertype.
        let mut wrong_version = frame.clone();
        wrong_version[ETH_LEN] = 0x40;
        fixture.expect_unchanged(hook, &wrong_version, MALFORMED);
    }
    // A zero UDP checksum is left zero in IPv6 too (it is invalid there, and stays so).
    let zero = IpSpec::new(
        peer6_real(),
        local6(),
        Transport::Udp { src_port: 1, dst_port: 2, payload: b"zero".to_vec(), zero_checksum: true },
    );
    for hook in Hook::INGRESS {
        fixture.expect_rewrite(hook, &zero, &zero.with_addresses(peer6_virtual(), local6()));
    }
}

fn tcp_ports(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> IpSpec {
    IpSpec::tcp(src, dst).with_ports(src_port, dst_port)
}

fn udp_ports(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> IpSpec {
    IpSpec::udp(src, dst).with_ports(src_port, dst_port)
}

/// The per-mapping counters of the mapping written `written` (`VIRTUAL -> REAL`).
fn mapping_stats(fixture: &Fixture, written: &str) -> MappingStats {
    let table = fixture.table();
    let listing = table.list().expect("list");
    let all = MappingCounters::read(&table, &listing).expect("read per-mapping counters");
    all.iter()
        .find(|counted| counted.mapping == written)
        .unwrap_or_else(|| panic!("no counters for {written}; have {all:?}"))
        .stats
}

#[test]
fn per_mapping_counters_count_packets_and_bytes_by_direction() {
    let fixture = Fixture::new();
    let idle = MappingStats::default();
    // Every mapping starts at zero.
    for written in ["10.200.0.2 -> 10.100.0.2", "10.200.0.2:9200/tcp -> 10.100.0.30:9400/tcp"] {
        assert_eq!(mapping_stats(&fixture, written), idle, "{written} before any packet");
    }
    let service_real = ip("10.100.0.30");
    // Address mapping: two packets out, one in through each ingress hook.
    let out = IpSpec::tcp(local(), peer_virtual());
    let back = IpSpec::udp(peer_real(), local());
    fixture.expect_rewrite(Hook::TcEgress, &out, &out.with_addresses(local(), peer_real()));
    fixture.expect_rewrite(Hook::TcEgress, &out, &out.with_addresses(local(), peer_real()));
    for hook in Hook::INGRESS {
        fixture.expect_rewrite(hook, &back, &back.with_addresses(peer_virtual(), local()));
    }
    let (out_len, back_len) = (out.frame().len() as u64, back.frame().len() as u64);
    assert_eq!(
        mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.2"),
        MappingStats { packets: [2, 2], bytes: [2 * back_len, 2 * out_len] },
        "address mapping: [ingress, egress]"
    );
    // The port-scoped service on the same VIRTUAL counts apart from the address mapping.
    let request = tcp_ports(local(), 40000, peer_virtual(), 9200);
    fixture.expect_rewrite(Hook::TcEgress, &request, &tcp_ports(local(), 40000, service_real, 9400));
    let request_len = request.frame().len() as u64;
    assert_eq!(
        mapping_stats(&fixture, "10.200.0.2:9200/tcp -> 10.100.0.30:9400/tcp"),
        MappingStats { packets: [0, 1], bytes: [0, request_len] }
    );
    assert_eq!(mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.2").packets, [2, 2], "the service is not the host");
    // A range sums its ports: one packet to the first port, one from the last.
    let (range_virtual, range_real) = (ip("10.200.0.3"), ip("10.100.0.31"));
    let to_first = udp_ports(local(), 33000, range_virtual, 5000);
    fixture.expect_rewrite(Hook::TcEgress, &to_first, &udp_ports(local(), 33000, range_real, 6000));
    let from_last = udp_ports(range_real, 6009, local(), 33000);
    fixture.expect_rewrite(Hook::TcIngress, &from_last, &udp_ports(range_virtual, 5009, local(), 33000));
    let udp_len = to_first.frame().len() as u64;
    assert_eq!(
        mapping_stats(&fixture, "10.200.0.3:5000-5009/udp -> 10.100.0.31:6000-6009/udp"),
        MappingStats { packets: [1, 1], bytes: [udp_len, udp_len] }
    );
    // Prefix mappings count under the subnet, whichever host of it the packet is for.
    for host in ["10.201.3.7", "10.201.200.1"] {
        let spec = IpSpec::icmp(local(), ip(host));
        let real = host.replacen("10.201", "172.20", 1);
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local(), ip(&real)));
        let reply = spec.with_addresses(ip(&real), local());
        fixture.expect_rewrite(Hook::XdpIngress, &reply, &reply.with_addresses(ip(host), local()));
    }
    let icmp_len = IpSpec::icmp(local(), ip("10.201.3.7")).frame().len() as u64;
    assert_eq!(
        mapping_stats(&fixture, "10.201.0.0/16 -> 172.20.0.0/16"),
        MappingStats { packets: [2, 2], bytes: [2 * icmp_len, 2 * icmp_len] }
    );
    // A packet that matches two mappings (one per side) counts once for each; IPv6 too.
    let both = IpSpec::udp(own6_virtual(), peer6_virtual());
    fixture.expect_rewrite(Hook::TcEgress, &both, &both.with_addresses(own6_real(), peer6_real()));
    for written in ["fd00::9 -> 2001:db8::9", "fd00::2 -> 2001:db8::2"] {
        assert_eq!(mapping_stats(&fixture, written).packets, [0, 1], "{written}");
    }
    // Packets that match nothing count for no mapping.
    let mut table = fixture.table();
    let before = MappingCounters::read(&table, &table.list().expect("list")).expect("read");
    fixture.expect_unchanged(Hook::TcEgress, &IpSpec::tcp(local(), ip("10.100.0.77")).frame(), NO_MATCH);
    let after = MappingCounters::read(&table, &table.list().expect("list")).expect("read");
    assert_eq!(before, after, "an unmatched packet moved a mapping's counters");
    // A retargeted mapping keeps its counts, and counts on at its new REAL.
    let counted = mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.2");
    table.add(peer_virtual(), ip("10.100.0.3")).expect("retarget");
    assert_eq!(mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.3"), counted, "retargeting lost the counts");
    let moved = IpSpec::udp(ip("10.100.0.3"), local());
    fixture.expect_rewrite(Hook::TcIngress, &moved, &moved.with_addresses(peer_virtual(), local()));
    assert_eq!(
        mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.3").packets,
        [counted.packets[0] + 1, counted.packets[1]]
    );
    // Deleting a mapping deletes its counters; the same VIRTUAL added again starts at zero.
    table.remove_mapping(peer_virtual()).expect("delete the address mapping");
    table.add(peer_virtual(), peer_real()).expect("add it again");
    assert_eq!(mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.2"), idle, "a re-added mapping starts at zero");
    table.remove_prefix(ip("10.201.0.0"), 16).expect("delete the prefix mapping");
    table
        .add_prefix(&PrefixMapping { virtual_net: ip("10.201.0.0"), real_net: ip("172.20.0.0"), len: 16 })
        .expect("re-add");
    assert_eq!(mapping_stats(&fixture, "10.201.0.0/16 -> 172.20.0.0/16"), idle, "a re-added prefix starts at zero");
}

#[test]
fn port_scoped_mappings_win_over_address_mappings_and_leave_other_ports_alone() {
    let fixture = Fixture::new();
    let service_real = ip("10.100.0.30");
    // Egress to the service goes to its new host and port...
    let request = tcp_ports(local(), 40000, peer_virtual(), 9200);
    fixture.expect_rewrite(Hook::TcEgress, &request, &tcp_ports(local(), 40000, service_real, 9400));
    // ... while other ports of the same VIRTUAL follow the address mapping.
    let ssh = tcp_ports(local(), 40001, peer_virtual(), 22);
    fixture.expect_rewrite(Hook::TcEgress, &ssh, &tcp_ports(local(), 40001, peer_real(), 22));
    // The same port over UDP is not the TCP service.
    let udp = udp_ports(local(), 40002, peer_virtual(), 9200);
    fixture.expect_rewrite(Hook::TcEgress, &udp, &udp_ports(local(), 40002, peer_real(), 9200));
    for hook in Hook::INGRESS {
        // Replies from the service come back as the VIRTUAL endpoint.
        let reply = tcp_ports(service_real, 9400, local(), 40000);
        fixture.expect_rewrite(hook, &reply, &tcp_ports(peer_virtual(), 9200, local(), 40000));
        // Other services of the REAL host (ssh to it, say) are left alone.
        fixture.expect_unchanged(hook, &tcp_ports(service_real, 22, local(), 40003).frame(), NO_MATCH);
    }
}

#[test]
fn port_ranges_map_port_by_port_in_both_families() {
    let fixture = Fixture::new();
    let (range_virtual, range_real) = (ip("10.200.0.3"), ip("10.100.0.31"));
    for offset in [0u16, 1, 9] {
        let request = udp_ports(local(), 33000, range_virtual, 5000 + offset);
        fixture.expect_rewrite(Hook::TcEgress, &request, &udp_ports(local(), 33000, range_real, 6000 + offset));
        for hook in Hook::INGRESS {
            let reply = udp_ports(range_real, 6000 + offset, local(), 33000);
            fixture.expect_rewrite(hook, &reply, &udp_ports(range_virtual, 5000 + offset, local(), 33000));
        }
    }
    // Just outside the range, and a host with no address mapping: nothing to do.
    fixture.expect_unchanged(Hook::TcEgress, &udp_ports(local(), 33000, range_virtual, 5010).frame(), NO_MATCH);
    // A zero UDP checksum stays zero when the port changes too.
    let zero = IpSpec::new(
        local(),
        range_virtual,
        Transport::Udp { src_port: 33000, dst_port: 5004, payload: b"no sum".to_vec(), zero_checksum: true },
    );
    fixture.expect_rewrite(Hook::TcEgress, &zero, &zero.with_addresses(local(), range_real).with_ports(33000, 6004));
    let zero_reply = IpSpec::new(
        range_real,
        local(),
        Transport::Udp { src_port: 6004, dst_port: 33000, payload: b"no sum".to_vec(), zero_checksum: true },
    );
    for hook in Hook::INGRESS {
        let expected = zero_reply.with_addresses(range_virtual, local()).with_ports(5004, 33000);
        fixture.expect_rewrite(hook, &zero_reply, &expected);
    }
    // IPv6.
    let request = tcp_ports(local6(), 50000, peer6_virtual(), 443);
    fixture.expect_rewrite(Hook::TcEgress, &request, &tcp_ports(local6(), 50000, ip("2001:db8::30"), 8443));
    for hook in Hook::INGRESS {
        let reply = tcp_ports(ip("2001:db8::30"), 8443, local6(), 50000);
        fixture.expect_rewrite(hook, &reply, &tcp_ports(peer6_virtual(), 443, local6(), 50000));
    }
}

#[test]
fn later_fragments_cannot_match_port_scoped_mappings_and_are_counted() {
    let fixture = Fixture::new();
    // 10.200.0.3 has only a port-scoped mapping: a later fragment to it has no ports.
    let later = IpSpec {
        fragment_offset: 64,
        ..IpSpec::new(local(), ip("10.200.0.3"), Transport::Raw { protocol: 17, bytes: (0..40).collect() })
    };
    fixture.expect_unchanged(Hook::TcEgress, &later.frame(), FRAGMENT_UNMATCHED);
    // To a host with an address mapping, a later fragment is rewritten as usual.
    let mapped = later.with_addresses(local(), peer_virtual());
    fixture.expect_rewrite(Hook::TcEgress, &mapped, &mapped.with_addresses(local(), peer_real()));
}

#[test]
fn prefix_mappings_move_subnets_and_keep_host_bits() {
    let fixture = Fixture::new();
    for (virtual_host, real_host, local_host) in
        [("10.201.3.7", "172.20.3.7", local()), ("fd01::3:7", "2001:db8:1::3:7", local6())]
    {
        let (virtual_host, real_host) = (ip(virtual_host), ip(real_host));
        for spec in all_transports(local_host, virtual_host) {
            fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local_host, real_host));
        }
        for hook in Hook::INGRESS {
            for spec in all_transports(real_host, local_host) {
                fixture.expect_rewrite(hook, &spec, &spec.with_addresses(virtual_host, local_host));
            }
        }
    }
    // Just outside the prefix: nothing.
    fixture.expect_unchanged(Hook::TcEgress, &IpSpec::tcp(local(), ip("10.202.0.1")).frame(), NO_MATCH);
}

/// An ICMP (or ICMPv6) error from `src` to `dst` quoting `quoted` (an IP packet), with
/// its checksum computed in full.
fn icmp_error(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&rest);
    message.extend_from_slice(quoted);
    let check = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => rewrite_common::checksum::full::icmp(&message),
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            rewrite_common::checksum::full::ipv6_l4(src.octets(), dst.octets(), 58, &message, 2)
        }
        _ => unreachable!("one family"),
    };
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let protocol = if src.is_ipv4() { 1 } else { 58 };
    IpSpec::new(src, dst, Transport::Raw { protocol, bytes: message }).frame()
}

/// `quoted` (an IP packet) with new addresses and ports and, for IPv4, its header
/// checksum recomputed: what the programs make of a quote. The quote's transport
/// checksum is left as it was, as the programs leave it.
fn requote(quoted: &[u8], src: IpAddr, dst: IpAddr, ports: Option<(u16, u16)>) -> Vec<u8> {
    let mut out = quoted.to_vec();
    let l4 = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out[12..16].copy_from_slice(&src.octets());
            out[16..20].copy_from_slice(&dst.octets());
            let header_len = usize::from(out[0] & 0x0f) * 4;
            let check = rewrite_common::checksum::full::ipv4_header(&out[..header_len]);
            out[10..12].copy_from_slice(&check.to_be_bytes());
            header_len
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out[8..24].copy_from_slice(&src.octets());
            out[24..40].copy_from_slice(&dst.octets());
            40
        }
        _ => unreachable!("one family"),
    };
    if let Some((src_port, dst_port)) = ports {
        out[l4..l4 + 2].copy_from_slice(&src_port.to_be_bytes());
        out[l4 + 2..l4 + 4].copy_from_slice(&dst_port.to_be_bytes());
    }
    out
}

#[test]
fn icmp_errors_have_their_quoted_packet_rewritten_too() {
    let fixture = Fixture::new();
    let router = ip("10.100.0.254");
    let router6 = ip("2001:db8::fe");
    let mtu = [0, 0, 0x05, 0x00]; // next-hop MTU 1280 (frag-needed), or IPv6's MTU field
    let mtu6 = [0, 0, 0x05, 0x00];
    let ingress = [Hook::TcIngress, Hook::TcIcmpErrors];

    // A router says "fragmentation needed" about a packet this host sent to REAL; the
    // socket is connected to VIRTUAL, so the quote must say VIRTUAL.
    let sent = IpSpec::tcp(local(), peer_real()).frame()[ETH_LEN..].to_vec();
    let input = icmp_error(router, local(), 3, 4, mtu, &sent);
    let expected = icmp_error(router, local(), 3, 4, mtu, &requote(&sent, local(), peer_virtual(), None));
    for hook in ingress {
        fixture.expect(hook, &input, &expected, REWRITTEN);
    }
    // A port-scoped service: address and port of the quote.
    let sent = tcp_ports(local(), 40000, ip("10.100.0.30"), 9400).frame()[ETH_LEN..].to_vec();
    let input = icmp_error(router, local(), 11, 0, [0; 4], &sent);
    let quote = requote(&sent, local(), peer_virtual(), Some((40000, 9200)));
    let expected = icmp_error(router, local(), 11, 0, [0; 4], &quote);
    for hook in ingress {
        fixture.expect(hook, &input, &expected, REWRITTEN);
    }
    // IPv6 packet too big.
    let sent = IpSpec::tcp(local6(), peer6_real()).frame()[ETH_LEN..].to_vec();
    let input = icmp_error(router6, local6(), 2, 0, mtu6, &sent);
    let expected = icmp_error(router6, local6(), 2, 0, mtu6, &requote(&sent, local6(), peer6_virtual(), None));
    for hook in ingress {
        fixture.expect(hook, &input, &expected, REWRITTEN);
    }
    // The error comes from REAL itself (port unreachable): outer and quote both.
    let sent = IpSpec::udp(local(), peer_real()).frame()[ETH_LEN..].to_vec();
    let input = icmp_error(peer_real(), local(), 3, 3, [0; 4], &sent);
    let quote = requote(&sent, local(), peer_virtual(), None);
    let expected = icmp_error(peer_virtual(), local(), 3, 3, [0; 4], &quote);
    for hook in ingress {
        fixture.expect(hook, &input, &expected, REWRITTEN);
    }
    // Egress: this host reports an error about a packet it received from VIRTUAL.
    let received = IpSpec::udp(peer_virtual(), local()).frame()[ETH_LEN..].to_vec();
    let input = icmp_error(local(), peer_virtual(), 3, 3, [0; 4], &received);
    let quote = requote(&received, peer_real(), local(), None);
    let expected = icmp_error(local(), peer_real(), 3, 3, [0; 4], &quote);
    fixture.expect(Hook::TcEgress, &input, &expected, REWRITTEN);

    // XDP leaves ICMP errors to the TC program beside it: unchanged, and not counted.
    let sent = IpSpec::tcp(local(), peer_real()).frame()[ETH_LEN..].to_vec();
    let input = icmp_error(router, local(), 3, 4, mtu, &sent);
    let before = fixture.counters();
    assert_eq!(fixture.run(Hook::XdpIngress, &input), input, "XDP must pass ICMP errors unchanged");
    assert_eq!(fixture.counters(), before, "XDP must not count the ICMP errors it leaves to TC");
    // And the TC program beside XDP leaves everything else alone, uncounted.
    let other = IpSpec::tcp(peer_real(), local()).frame();
    assert_eq!(fixture.run(Hook::TcIcmpErrors, &other), other, "only ICMP errors are its business");
    assert_eq!(fixture.counters(), before, "and it counts nothing else");
}

/// Regression (found by the differential test): the quote of an ICMP error must lie
/// inside the error's datagram. The programs used to bound it by the frame, so with
/// Ethernet padding after a short datagram they rewrote bytes past its end and folded
/// the change into an ICMP checksum that does not cover them.
#[test]
fn an_icmp_error_quote_is_read_only_inside_the_datagram() {
    let fixture = Fixture::new();
    let router = ip("10.100.0.254");
    let mtu = [0, 0, 0x05, 0x00];
    let padded = |quoted: &[u8], inside: usize| {
        let mut frame = icmp_error(router, local(), 3, 4, mtu, &quoted[..inside]);
        frame.extend_from_slice(&quoted[inside..]);
        frame
    };
    // The quoted IP header is cut after 17 bytes: its destination (REAL, mapped) lies
    // past the datagram's end.
    let sent = IpSpec::tcp(local(), peer_real()).frame()[ETH_LEN..].to_vec();
    for hook in [Hook::TcIngress, Hook::TcIcmpErrors] {
        fixture.expect_unchanged(hook, &padded(&sent, 17), NO_MATCH);
    }
    // The quoted header is whole, its ports are cut: the port-scoped mapping that the
    // ports past the end would match must not apply, and nothing else matches.
    let sent = tcp_ports(local(), 40000, ip("10.100.0.30"), 9400).frame()[ETH_LEN..].to_vec();
    for hook in [Hook::TcIngress, Hook::TcIcmpErrors] {
        fixture.expect_unchanged(hook, &padded(&sent, 22), NO_MATCH);
    }
    // The header is whole and its address mapped: the addresses are rewritten, the
    // ICMP checksum covers the datagram only, and the padding is kept as it was.
    let sent = IpSpec::tcp(local(), peer_real()).frame()[ETH_LEN..].to_vec();
    let mut expected = icmp_error(router, local(), 3, 4, mtu, &requote(&sent[..22], local(), peer_virtual(), None));
    expected.extend_from_slice(&sent[22..]);
    for hook in [Hook::TcIngress, Hook::TcIcmpErrors] {
        fixture.expect(hook, &padded(&sent, 22), &expected, REWRITTEN);
    }
}

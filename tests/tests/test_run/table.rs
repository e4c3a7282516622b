//! The table under the programs: a full table refuses, a half-applied entry is listed
//! and repaired, and each mapping counts its packets and bytes.

use super::*;

#[test]
fn a_full_table_is_an_error_and_the_table_stays_as_it_was() {
    // Every map gets this capacity: room for the fixture's 12 mapped ports, and so for
    // 12 address mappings, of which the fixture adds 4.
    let fixture = Fixture::with_capacity(Some(12));
    let mut table = fixture.table();
    for index in 0..8 {
        table.add(&address(ip(&format!("10.200.1.{index}")), ip(&format!("10.100.1.{index}")))).expect("room left");
    }
    let before = table.list().expect("list");
    let error = table.add(&address(ip("10.200.0.50"), ip("10.100.0.50"))).expect_err("a 13th mapping must not fit");
    assert!(matches!(error, Error::TableFull { capacity: 12 }), "expected TableFull, got {error:?}");
    assert!(error.to_string().contains("full (12 mappings)"), "unclear message: {error}");
    assert_eq!(table.list().expect("list"), before, "a failed add must leave the table as it was");
    // Retargeting an existing mapping needs the old REAL freed first; at capacity it
    // is refused rather than half-applied.
    let retarget = table.add(&address(peer_virtual(), ip("10.100.0.51")));
    assert!(matches!(retarget, Err(Error::TableFull { .. })), "retarget at capacity: {retarget:?}");
    assert_eq!(table.list().expect("list"), before, "a failed retarget must leave the table as it was");
    // The dataplane still rewrites with the table it has.
    let spec = IpSpec::tcp(local(), peer_virtual());
    fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local(), peer_real()));

    // The port maps hold the fixture's 12 ports. Free one slot, then add a range of
    // two: the first port's reverse entry fits, the second does not, and the add must
    // take the first one out again.
    let port_443 = rewrite_common::ports::PortRange::single(443);
    table.remove_ports(rewrite_common::protocol::Protocol::Tcp, ip("fd00::2"), port_443).expect("free one port slot");
    let before = table.list().expect("list");
    let range = MappingSpec::parse("10.200.0.4:80-81/tcp", "10.100.0.40:80-81/tcp").expect("valid");
    let error = table.add(&range).expect_err("two ports must not fit in one free slot");
    assert!(matches!(error, Error::TableFull { .. }), "expected TableFull, got {error:?}");
    assert_eq!(table.list().expect("list"), before, "a failed port add must leave the table as it was");
    // No reverse entry was left behind: a reply from the first REAL port is untouched.
    let reply = tcp_ports(ip("10.100.0.40"), 80, local(), 40000).frame();
    fixture.expect_unchanged(Hook::TcIngress, &reply, NO_MATCH);
}

#[test]
fn half_applied_entries_are_listed_and_repaired() {
    let fixture = Fixture::load();
    // Simulate a `map del` killed between its two writes: the forward entry is gone,
    // the reverse one is left.
    let path = fixture.object.layout.map(MAP_ADDR_FORWARD);
    let mut forward: HashMap<MapData, Addr, AddressEntry> =
        HashMap::try_from(Map::from_map_data(MapData::from_pin(&path).expect("open pin")).expect("map"))
            .expect("hash map");
    forward.remove(&Addr::from(peer_virtual())).expect("remove forward entry");

    let mut table = fixture.table();
    let listing = table.list().expect("list");
    let orphan = AddressMapping { virtual_addr: peer_virtual(), real_addr: peer_real() };
    assert_eq!(listing.orphans, vec![orphan], "the reverse-only entry must be reported");
    assert!(!listing.mappings.contains(&orphan));
    // The orphan does not block a new owner of REAL, which replaces it.
    let newcomer = ip("10.200.0.60");
    table.add(&address(newcomer, peer_real())).expect("REAL held only by an orphan is free");
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
fn per_mapping_counters_count_packets_and_bytes_by_direction() {
    let fixture = Fixture::load();
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
    table.add(&address(peer_virtual(), ip("10.100.0.3"))).expect("retarget");
    assert_eq!(mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.3"), counted, "retargeting lost the counts");
    let moved = IpSpec::udp(ip("10.100.0.3"), local());
    fixture.expect_rewrite(Hook::TcIngress, &moved, &moved.with_addresses(peer_virtual(), local()));
    assert_eq!(
        mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.3").packets,
        [counted.packets[0] + 1, counted.packets[1]]
    );
    // Deleting a mapping deletes its counters; the same VIRTUAL added again starts at zero.
    table.remove_mapping(peer_virtual()).expect("delete the address mapping");
    table.add(&address(peer_virtual(), peer_real())).expect("add it again");
    assert_eq!(mapping_stats(&fixture, "10.200.0.2 -> 10.100.0.2"), idle, "a re-added mapping starts at zero");
    table.remove_prefix(ip("10.201.0.0"), 16).expect("delete the prefix mapping");
    table
        .add(&MappingSpec::Prefix(PrefixMapping { virtual_net: ip("10.201.0.0"), real_net: ip("172.20.0.0"), len: 16 }))
        .expect("re-add");
    assert_eq!(mapping_stats(&fixture, "10.201.0.0/16 -> 172.20.0.0/16"), idle, "a re-added prefix starts at zero");
}

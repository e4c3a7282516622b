//! The address filter under the programs: a clear bit makes them skip the address and
//! port lookups (an entry written behind the filter's back, as a writer of an older
//! build would, is not seen), a rebuild from the maps (what `upgrade` does) makes it
//! seen, and a filter map created beside a table that had none is built from that table
//! before any program reads it.

use std::net::IpAddr;

use rewrite_common::{
    counters,
    filter::{ADDRESS_KEYS, MAP_ADDR_FILTER, PORT_KEYS},
    maps::Counts,
};
use rewrite_user::{
    dataplane::{
        filter::{AddressFilter, BuildFilter},
        objects,
    },
    table::live::COMPACT_FILTER_AFTER,
};

use super::*;

#[test]
fn an_entry_written_behind_the_filters_back_is_skipped_until_a_rebuild() {
    let fixture = Fixture::load();
    let (virtual_addr, real_addr) = (ip("10.200.7.1"), ip("10.100.7.1"));
    let path = fixture.object.layout.map(MAP_ADDR_FORWARD);
    let mut forward: HashMap<MapData, Addr, AddressEntry> =
        HashMap::try_from(Map::from_map_data(MapData::from_pin(&path).expect("open pin")).expect("map"))
            .expect("hash map");
    let entry = AddressEntry { addr: Addr::from(real_addr), counts: Counts::default() };
    forward.insert(Addr::from(virtual_addr), entry, 0).expect("insert behind the filter's back");
    let filter = AddressFilter::of(&fixture.object.ebpf).expect("map the filter");
    assert!(filter.is_built(), "the load built the filter");
    assert!(
        !filter.may_hold(counters::EGRESS, ADDRESS_KEYS, &Addr::from(virtual_addr)),
        "nothing set this entry's bit"
    );

    let spec = IpSpec::tcp(local(), virtual_addr);
    fixture.expect_unchanged(Hook::TcEgress, &spec.frame(), NO_MATCH);
    fixture.expect_unchanged(Hook::XdpIngress, &IpSpec::tcp(virtual_addr, local()).frame(), NO_MATCH);

    AddressFilter::build_from(&fixture.object.ebpf, BuildFilter::Always).expect("rebuild the filter from the maps");
    assert!(
        filter.may_hold(counters::EGRESS, ADDRESS_KEYS, &Addr::from(virtual_addr)),
        "the rebuild set the entry's bit"
    );
    fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local(), real_addr));
    // Every mapping the fixture wrote through the table still rewrites after the
    // rebuild (it kept their bits).
    let peer = IpSpec::tcp(local(), peer_virtual());
    fixture.expect_rewrite(Hook::TcEgress, &peer, &peer.with_addresses(local(), peer_real()));
    let reply = IpSpec::tcp(peer_real(), local());
    fixture.expect_rewrite(Hook::XdpIngress, &reply, &reply.with_addresses(peer_virtual(), local()));
}

#[test]
fn a_table_without_a_filter_gets_one_built_from_its_maps_on_load() {
    let fixture = Fixture::load();
    let layout = &fixture.object.layout;
    // The maps of a build that had no filter: every table, no filter map.
    std::fs::remove_file(layout.map(MAP_ADDR_FILTER)).expect("unpin the filter");
    assert!(
        fixture.table().list().expect("the table without a filter lists").mappings.len() >= 4,
        "the fixture's mappings are there"
    );
    let reloaded = objects::load(&layout.maps_dir(), None).expect("load beside the older table");
    let filter = AddressFilter::from_pin(&layout.map(MAP_ADDR_FILTER)).expect("the load pinned a new filter");
    assert!(filter.is_built(), "the load built the new filter from the table");
    let held = |direction, kind, addr: IpAddr| filter.may_hold(direction, kind, &Addr::from(addr));
    for (virtual_addr, real_addr) in
        [(peer_virtual(), peer_real()), (own_virtual(), own_real()), (peer6_virtual(), peer6_real())]
    {
        assert!(held(counters::EGRESS, ADDRESS_KEYS, virtual_addr), "VIRTUAL {virtual_addr} of an address mapping");
        assert!(held(counters::INGRESS, ADDRESS_KEYS, real_addr), "REAL {real_addr} of an address mapping");
    }
    // Port mappings: the VIRTUAL of the first and third also has an address mapping
    // (see the fixture); 10.200.0.3 has only its port range.
    for (virtual_addr, real_addr) in
        [("10.200.0.2", "10.100.0.30"), ("10.200.0.3", "10.100.0.31"), ("fd00::2", "2001:db8::30")]
    {
        assert!(held(counters::EGRESS, PORT_KEYS, ip(virtual_addr)), "VIRTUAL {virtual_addr} of a port mapping");
        assert!(held(counters::INGRESS, PORT_KEYS, ip(real_addr)), "REAL {real_addr} of a port mapping");
    }
    // The kinds are apart: an address with only an address mapping has no port bit,
    // and the other way round.
    assert!(!held(counters::EGRESS, PORT_KEYS, own_virtual()), "{} has no port mapping", own_virtual());
    assert!(!held(counters::EGRESS, ADDRESS_KEYS, ip("10.200.0.3")), "10.200.0.3 has no address mapping");
    // Prefixes (10.201.0.0/16 -> 172.20.0.0/16, fd01::/64 -> 2001:db8:1::/64).
    for (direction, addr) in [
        (counters::EGRESS, "10.201.7.7"),
        (counters::INGRESS, "172.20.7.7"),
        (counters::EGRESS, "fd01::7"),
        (counters::INGRESS, "2001:db8:1::7"),
    ] {
        assert!(
            filter.may_cover(direction, &Addr::from(ip(addr))),
            "{addr} is inside a prefix of direction {direction}"
        );
    }
    assert!(!filter.may_cover(counters::EGRESS, &Addr::from(local())), "no prefix covers {}", local());
    assert!(!filter.may_cover(counters::INGRESS, &Addr::from(ip("10.201.7.7"))), "a VIRTUAL prefix is egress only");
    for kind in [ADDRESS_KEYS, PORT_KEYS] {
        assert!(!held(counters::EGRESS, kind, local()), "an unmapped address has no bit");
        assert!(!held(counters::INGRESS, kind, peer_virtual()), "a VIRTUAL is not in a key of the reverse maps");
    }
    drop(reloaded);
}

#[test]
fn a_large_removal_clears_the_bits_it_leaves_and_a_small_one_does_not_rebuild() {
    let fixture = Fixture::load();
    let mut table = fixture.table();
    let count = u32::try_from(COMPACT_FILTER_AFTER + 1).expect("a small count");
    let batch: Vec<AddressMapping> = (0..count)
        .map(|host| AddressMapping {
            virtual_addr: IpAddr::from(std::net::Ipv4Addr::from(0x0ad2_0000 + host)),
            real_addr: IpAddr::from(std::net::Ipv4Addr::from(0x0a6e_0000 + host)),
        })
        .collect();
    table.insert_new_many(&batch).expect("insert the batch");
    let filter = AddressFilter::of(&fixture.object.ebpf).expect("map the filter");
    let held = |direction, addr: IpAddr| filter.may_hold(direction, ADDRESS_KEYS, &Addr::from(addr));
    for mapping in &batch {
        assert!(held(counters::EGRESS, mapping.virtual_addr), "the insert set {}", mapping.virtual_addr);
        assert!(held(counters::INGRESS, mapping.real_addr), "the insert set {}", mapping.real_addr);
    }

    // A small removal (what an agent applies for one fleet change) does not read the
    // whole table again: its bits stay, and its packets still pass unchanged.
    let (first, rest) = batch.split_first().expect("a batch");
    table.remove_batch(std::slice::from_ref(first)).expect("remove one mapping");
    assert!(held(counters::EGRESS, first.virtual_addr), "one removal rebuilt the filter");
    let gone = IpSpec::tcp(local(), first.virtual_addr);
    fixture.expect_unchanged(Hook::TcEgress, &gone.frame(), NO_MATCH);

    // A large one rebuilds it: the bits of everything removed are clear (a few may be
    // shared with the fixture's own mappings), the fixture's are kept.
    table.remove_batch(rest).expect("remove the rest");
    let left = batch
        .iter()
        .filter(|mapping| held(counters::EGRESS, mapping.virtual_addr) || held(counters::INGRESS, mapping.real_addr))
        .count();
    assert!(left <= 2, "{left} of {count} removed mappings kept a bit after the rebuild");
    assert!(held(counters::EGRESS, peer_virtual()) && held(counters::INGRESS, peer_real()), "kept the fixture's");
    let peer = IpSpec::tcp(local(), peer_virtual());
    fixture.expect_rewrite(Hook::TcEgress, &peer, &peer.with_addresses(local(), peer_real()));
    fixture.expect_unchanged(Hook::TcEgress, &IpSpec::tcp(local(), rest[7].virtual_addr).frame(), NO_MATCH);
}

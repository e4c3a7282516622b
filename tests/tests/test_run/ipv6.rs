//! IPv6: TCP, UDP and ICMPv6 in both directions, extension headers, neighbour discovery
//! left alone, and one VLAN tag.

use super::*;

#[test]
fn ipv6_tcp_udp_and_icmpv6_are_rewritten_in_both_directions() {
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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

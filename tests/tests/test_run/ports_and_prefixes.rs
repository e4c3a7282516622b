//! Port-scoped mappings (single ports and ranges) and prefix mappings: which one wins,
//! what later fragments can match.

use super::*;

#[test]
fn port_scoped_mappings_win_over_address_mappings_and_leave_other_ports_alone() {
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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

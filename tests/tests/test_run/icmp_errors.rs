//! ICMP errors: the quoted packet is rewritten with the outer one, and read only inside
//! the datagram.

use super::*;

#[test]
fn icmp_errors_have_their_quoted_packet_rewritten_too() {
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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

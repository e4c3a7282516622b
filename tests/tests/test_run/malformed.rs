//! Packets the programs do not rewrite (unsupported, truncated, inconsistent) pass byte
//! for byte, counted as what they are.

use super::*;

#[test]
fn unsupported_packets_pass_byte_identical() {
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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
fn truncated_and_inconsistent_ipv6_packets_pass_byte_identical() {
    let fixture = Fixture::load();
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

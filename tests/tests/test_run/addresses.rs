//! Address mappings on valid packets: what each direction rewrites, what it leaves, and
//! the checksum and header details that must survive.

use super::*;

#[test]
fn egress_sends_virtual_destination_to_real() {
    let fixture = Fixture::load();
    for spec in all_transports(local(), peer_virtual()) {
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(local(), peer_real()));
    }
}

#[test]
fn egress_sends_own_virtual_source_as_real_and_both_at_once() {
    let fixture = Fixture::load();
    for spec in all_transports(own_virtual(), ip("10.100.0.77")) {
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(own_real(), ip("10.100.0.77")));
    }
    for spec in all_transports(own_virtual(), peer_virtual()) {
        fixture.expect_rewrite(Hook::TcEgress, &spec, &spec.with_addresses(own_real(), peer_real()));
    }
}

#[test]
fn ingress_restores_virtual_source_and_own_virtual_destination() {
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
    fixture.expect(Hook::TcEgress, &tcp_in, &tcp_out, REWRITTEN);
    for hook in Hook::INGRESS {
        fixture.expect(hook, &udp_in, &udp_out, REWRITTEN);
    }
}

#[test]
fn ipv4_options_move_the_transport_header() {
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
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
fn ethernet_padding_after_the_datagram_is_kept_and_ignored() {
    let fixture = Fixture::load();
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

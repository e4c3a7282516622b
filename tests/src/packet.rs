//! Building Ethernet/IPv4/IPv6 test frames with correct checksums, and checking the
//! checksums of frames the programs return. Checksums here are always computed in
//! full (`rewrite_common::checksum::full`), never incrementally as the programs do.

use std::net::IpAddr;

use rewrite_common::{
    checksum::full,
    maps::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// IPv6 extension header numbers used by the tests.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DESTINATION_OPTIONS: u8 = 60;

/// The transport part of a test packet.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        payload: Vec<u8>,
    },
    /// `zero_checksum` sends the UDP checksum as 0 ("none").
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: Vec<u8>,
        zero_checksum: bool,
    },
    /// An ICMP (IPv4) or ICMPv6 echo request.
    IcmpEcho {
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
    /// An ICMP (IPv4) or ICMPv6 message of any type: its 4 bytes after the checksum
    /// are zero, then `body` (for an error, the quoted packet from its IP header on).
    Icmp {
        kind: u8,
        code: u8,
        body: Vec<u8>,
    },
    /// A TCP segment with the sequence and acknowledgement numbers and the flags given
    /// (the `Tcp` variant is a data segment with fixed ones).
    TcpSegment {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    /// Bytes after the IP headers, taken as they are (non-first fragments, other
    /// protocols).
    Raw {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct IpSpec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    /// An 802.1Q tag (VLAN id) between Ethernet and IP.
    pub vlan: Option<u16>,
    /// IPv4 options, a multiple of 4 bytes (at most 40).
    pub options: Vec<u8>,
    /// IPv6 extension headers before the transport, as (type, body after the two
    /// header bytes). Hop-by-hop and destination options bodies must make the whole
    /// header a multiple of 8 bytes; a fragment header is added by the fields below.
    pub extension_headers: Vec<(u8, Vec<u8>)>,
    /// Fragment offset in 8-byte units, and the more-fragments flag. For IPv6 either
    /// adds a fragment header after `extension_headers`.
    pub fragment_offset: u16,
    pub more_fragments: bool,
    /// The TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
}

impl IpSpec {
    pub fn new(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, transport: Transport) -> Self {
        let (src, dst) = (src.into(), dst.into());
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "a test packet has one address family");
        Self {
            src,
            dst,
            transport,
            vlan: None,
            options: Vec::new(),
            extension_headers: Vec::new(),
            fragment_offset: 0,
            more_fragments: false,
            ttl: 64,
        }
    }

    pub fn tcp(src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Self {
        Self::new(
            src,
            dst,
            Transport::Tcp { src_port: 40000, dst_port: 9300, payload: b"GET /_cluster/health".to_vec() },
        )
    }

    pub fn udp(src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Self {
        let payload = b"gluster peer probe".to_vec();
        Self::new(src, dst, Transport::Udp { src_port: 5353, dst_port: 24007, payload, zero_checksum: false })
    }

    pub fn icmp(src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Self {
        Self::new(src, dst, Transport::IcmpEcho { id: 0x1234, seq: 7, payload: b"abcdefgh01234567".to_vec() })
    }

    /// The same packet with other addresses.
    pub fn with_addresses(&self, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Self {
        Self { src: src.into(), dst: dst.into(), ..self.clone() }
    }

    /// The same packet with another TTL (hop limit).
    pub fn with_ttl(&self, ttl: u8) -> Self {
        Self { ttl, ..self.clone() }
    }

    /// The same packet with other TCP or UDP ports.
    pub fn with_ports(&self, src: u16, dst: u16) -> Self {
        let transport = match self.transport.clone() {
            Transport::Tcp { payload, .. } => Transport::Tcp { src_port: src, dst_port: dst, payload },
            Transport::Udp { payload, zero_checksum, .. } => {
                Transport::Udp { src_port: src, dst_port: dst, payload, zero_checksum }
            }
            Transport::TcpSegment { seq, ack, flags, payload, .. } => {
                Transport::TcpSegment { src_port: src, dst_port: dst, seq, ack, flags, payload }
            }
            other => panic!("{other:?} has no ports"),
        };
        Self { transport, ..self.clone() }
    }

    /// Where the IP header starts in the frame.
    pub fn l3_offset(&self) -> usize {
        ETH_LEN + if self.vlan.is_some() { VLAN_LEN } else { 0 }
    }

    /// Where the transport header starts in the frame.
    pub fn l4_offset(&self) -> usize {
        let ip_header = if self.src.is_ipv4() {
            20 + self.options.len()
        } else {
            let fragment = if self.fragment_offset != 0 || self.more_fragments { 8 } else { 0 };
            40 + self.extension_headers.iter().map(|(_, body)| body.len() + 2).sum::<usize>() + fragment
        };
        self.l3_offset() + ip_header
    }

    /// The IP packet alone (from its IP header on), as an ICMP error quotes it.
    pub fn ip_packet(&self) -> Vec<u8> {
        self.frame().split_off(self.l3_offset())
    }

    /// The whole Ethernet frame, with every checksum computed in full.
    pub fn frame(&self) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&DST_MAC);
        frame.extend_from_slice(&SRC_MAC);
        if let Some(vlan) = self.vlan {
            frame.extend_from_slice(&0x8100u16.to_be_bytes());
            frame.extend_from_slice(&vlan.to_be_bytes());
        }
        let ether_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        frame.extend_from_slice(&ether_type.to_be_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.ipv4(&mut frame, src.octets(), dst.octets()),
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.ipv6(&mut frame, src.octets(), dst.octets()),
            _ => unreachable!("checked in new"),
        }
        frame
    }

    fn ipv4(&self, frame: &mut Vec<u8>, src: [u8; 4], dst: [u8; 4]) {
        assert!(
            self.options.len().is_multiple_of(4) && self.options.len() <= 40,
            "IPv4 options: 4-byte words, ≤ 40 bytes"
        );
        let (protocol, segment) =
            self.segment(|protocol, segment, offset| full::ipv4_l4(src, dst, protocol, segment, offset), IPPROTO_ICMP);
        let header_len = 20 + self.options.len();
        let total_len = u16::try_from(header_len + segment.len()).expect("test packets are smaller than 64 KiB");
        let mut ip = Vec::with_capacity(header_len);
        ip.push(0x40 | u8::try_from(header_len / 4).expect("IHL fits in 4 bits"));
        ip.push(0); // DSCP/ECN
        ip.extend_from_slice(&total_len.to_be_bytes());
        ip.extend_from_slice(&0xbeefu16.to_be_bytes()); // identification
        let flags_offset = (u16::from(self.more_fragments) << 13) | self.fragment_offset;
        ip.extend_from_slice(&flags_offset.to_be_bytes());
        ip.push(self.ttl);
        ip.push(protocol);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&self.options);
        let check = full::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&segment);
    }

    fn ipv6(&self, frame: &mut Vec<u8>, src: [u8; 16], dst: [u8; 16]) {
        let (protocol, segment) = self
            .segment(|protocol, segment, offset| full::ipv6_l4(src, dst, protocol, segment, offset), IPPROTO_ICMPV6);
        let mut headers = self.extension_headers.clone();
        if self.fragment_offset != 0 || self.more_fragments {
            let offset_flags = (self.fragment_offset << 3) | u16::from(self.more_fragments);
            let mut body = offset_flags.to_be_bytes().to_vec();
            body.extend_from_slice(&0xdead_beefu32.to_be_bytes()); // identification
            headers.push((IPV6_FRAGMENT, body));
        }
        // Each header names the next one; the last names the transport.
        let mut chain = Vec::new();
        for (index, (_, body)) in headers.iter().enumerate() {
            let next = headers.get(index + 1).map_or(protocol, |(kind, _)| *kind);
            let kind = headers[index].0;
            let length_field = if kind == IPV6_FRAGMENT {
                0
            } else {
                assert!((body.len() + 2).is_multiple_of(8), "extension header of type {kind} must be 8-byte aligned");
                u8::try_from((body.len() + 2) / 8 - 1).expect("short header")
            };
            chain.push(next);
            chain.push(length_field);
            chain.extend_from_slice(body);
        }
        let first = headers.first().map_or(protocol, |(kind, _)| *kind);
        let payload_len = u16::try_from(chain.len() + segment.len()).expect("test packets are small");
        frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class, flow label
        frame.extend_from_slice(&payload_len.to_be_bytes());
        frame.push(first);
        frame.push(self.ttl); // hop limit
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&chain);
        frame.extend_from_slice(&segment);
    }

    /// The transport protocol number and bytes, with the checksum computed by `l4`.
    fn segment(&self, l4: impl Fn(u8, &[u8], usize) -> u16, icmp_protocol: u8) -> (u8, Vec<u8>) {
        match &self.transport {
            Transport::Tcp { src_port, dst_port, payload } => {
                let mut tcp = Vec::new();
                tcp.extend_from_slice(&src_port.to_be_bytes());
                tcp.extend_from_slice(&dst_port.to_be_bytes());
                tcp.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // sequence
                tcp.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes()); // acknowledgement
                tcp.push(5 << 4); // data offset: 5 words
                tcp.push(0x18); // PSH, ACK
                tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
                tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                tcp.extend_from_slice(payload);
                let check = l4(IPPROTO_TCP, &tcp, 16);
                tcp[16..18].copy_from_slice(&check.to_be_bytes());
                (IPPROTO_TCP, tcp)
            }
            Transport::TcpSegment { src_port, dst_port, seq, ack, flags, payload } => {
                let mut tcp = Vec::new();
                tcp.extend_from_slice(&src_port.to_be_bytes());
                tcp.extend_from_slice(&dst_port.to_be_bytes());
                tcp.extend_from_slice(&seq.to_be_bytes());
                tcp.extend_from_slice(&ack.to_be_bytes());
                tcp.push(5 << 4); // data offset: 5 words
                tcp.push(*flags);
                tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
                tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                tcp.extend_from_slice(payload);
                let check = l4(IPPROTO_TCP, &tcp, 16);
                tcp[16..18].copy_from_slice(&check.to_be_bytes());
                (IPPROTO_TCP, tcp)
            }
            Transport::Udp { src_port, dst_port, payload, zero_checksum } => {
                let mut udp = Vec::new();
                udp.extend_from_slice(&src_port.to_be_bytes());
                udp.extend_from_slice(&dst_port.to_be_bytes());
                let len = u16::try_from(8 + payload.len()).expect("test datagrams are small");
                udp.extend_from_slice(&len.to_be_bytes());
                udp.extend_from_slice(&[0, 0]);
                udp.extend_from_slice(payload);
                if !zero_checksum {
                    let check = l4(IPPROTO_UDP, &udp, 6);
                    udp[6..8].copy_from_slice(&check.to_be_bytes());
                }
                (IPPROTO_UDP, udp)
            }
            Transport::IcmpEcho { id, seq, payload } => {
                let echo_request = if icmp_protocol == IPPROTO_ICMP { 8 } else { 128 };
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&seq.to_be_bytes());
                body.extend_from_slice(payload);
                Self::icmp_message(echo_request, 0, &[], &body, &l4, icmp_protocol)
            }
            Transport::Icmp { kind, code, body } => Self::icmp_message(*kind, *code, &[0; 4], body, &l4, icmp_protocol),
            Transport::Raw { protocol, bytes } => (*protocol, bytes.clone()),
        }
    }

    /// An ICMP or ICMPv6 message: type, code, checksum, then `rest` and `body`.
    fn icmp_message(
        kind: u8,
        code: u8,
        rest: &[u8],
        body: &[u8],
        l4: impl Fn(u8, &[u8], usize) -> u16,
        icmp_protocol: u8,
    ) -> (u8, Vec<u8>) {
        let mut icmp = vec![kind, code, 0, 0];
        icmp.extend_from_slice(rest);
        icmp.extend_from_slice(body);
        // ICMP over IPv4 has no pseudo-header; ICMPv6 has one.
        let check = if icmp_protocol == IPPROTO_ICMP { full::icmp(&icmp) } else { l4(IPPROTO_ICMPV6, &icmp, 2) };
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        (icmp_protocol, icmp)
    }
}

/// Checks every checksum of an Ethernet frame by full recomputation: the IPv4 header,
/// and for an unfragmented datagram the TCP, UDP (zero allowed), ICMP or ICMPv6 one.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let mut l3 = ETH_LEN;
    let mut ether_type = u16::from_be_bytes([frame.get(12).copied().ok_or("short frame")?, frame[13]]);
    if ether_type == 0x8100 {
        ether_type =
            u16::from_be_bytes([*frame.get(16).ok_or("short VLAN tag")?, *frame.get(17).ok_or("short VLAN tag")?]);
        l3 += VLAN_LEN;
    }
    let ip = frame.get(l3..).ok_or("frame shorter than its link header")?;
    match ether_type {
        0x0800 => verify_ipv4(ip),
        0x86dd => verify_ipv6(ip),
        _ => Ok(()),
    }
}

fn verify_ipv4(ip: &[u8]) -> Result<(), String> {
    let header_len = usize::from(ip.first().ok_or("no IPv4 header")? & 0x0f) * 4;
    let header = ip.get(..header_len).ok_or("truncated IPv4 header")?;
    let found = u16::from_be_bytes([header[10], header[11]]);
    let expected = full::ipv4_header(header);
    if found != expected {
        return Err(format!("IPv4 header checksum {found:#06x}, expected {expected:#06x}"));
    }
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    if flags_offset & 0x3fff != 0 {
        return Ok(()); // a fragment: the transport checksum covers the whole datagram
    }
    let segment = ip.get(header_len..total_len).ok_or("truncated IPv4 payload")?;
    let src: [u8; 4] = header[12..16].try_into().expect("4 bytes");
    let dst: [u8; 4] = header[16..20].try_into().expect("4 bytes");
    let l4 = |protocol, offset| full::ipv4_l4(src, dst, protocol, segment, offset);
    verify_l4(header[9], segment, l4, IPPROTO_ICMP)
}

fn verify_ipv6(ip: &[u8]) -> Result<(), String> {
    let header = ip.get(..40).ok_or("truncated IPv6 header")?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let payload = ip.get(40..40 + payload_len).ok_or("truncated IPv6 payload")?;
    let (mut next, mut offset) = (header[6], 0);
    while [IPV6_HOP_BY_HOP, IPV6_DESTINATION_OPTIONS, IPV6_ROUTING, IPV6_FRAGMENT].contains(&next) {
        let ext = payload.get(offset..offset + 8).ok_or("truncated extension header")?;
        if next == IPV6_FRAGMENT {
            return Ok(()); // a fragment: the transport checksum covers the whole datagram
        }
        next = ext[0];
        offset += (usize::from(ext[1]) + 1) * 8;
    }
    let segment = payload.get(offset..).ok_or("truncated IPv6 transport")?;
    let src: [u8; 16] = header[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = header[24..40].try_into().expect("16 bytes");
    let l4 = |protocol, check_offset| full::ipv6_l4(src, dst, protocol, segment, check_offset);
    verify_l4(next, segment, l4, IPPROTO_ICMPV6)
}

fn verify_l4(protocol: u8, segment: &[u8], l4: impl Fn(u8, usize) -> u16, icmp_protocol: u8) -> Result<(), String> {
    let (name, offset, expected) = match protocol {
        IPPROTO_TCP => ("TCP", 16, l4(IPPROTO_TCP, 16)),
        IPPROTO_UDP => {
            if segment.get(6..8) == Some(&[0, 0]) {
                return Ok(());
            }
            ("UDP", 6, l4(IPPROTO_UDP, 6))
        }
        IPPROTO_ICMP if icmp_protocol == IPPROTO_ICMP => {
            verify_quoted_ipv4_header(segment)?;
            ("ICMP", 2, full::icmp(segment))
        }
        IPPROTO_ICMPV6 if icmp_protocol == IPPROTO_ICMPV6 => ("ICMPv6", 2, l4(IPPROTO_ICMPV6, 2)),
        _ => return Ok(()),
    };
    let found = u16::from_be_bytes([segment[offset], segment[offset + 1]]);
    if found == expected { Ok(()) } else { Err(format!("{name} checksum {found:#06x}, expected {expected:#06x}")) }
}

/// The IPv4 header quoted by an ICMP error (types 3, 11, 12), when it is there whole:
/// the programs keep its checksum right when they rewrite its addresses.
fn verify_quoted_ipv4_header(message: &[u8]) -> Result<(), String> {
    if message.len() < 8 || ![3, 11, 12].contains(&message[0]) {
        return Ok(());
    }
    let quote = &message[8..];
    let Some(&first) = quote.first() else { return Ok(()) };
    let header_len = usize::from(first & 0x0f) * 4;
    let Some(header) = quote.get(..header_len).filter(|_| first >> 4 == 4 && header_len >= 20) else {
        return Ok(());
    };
    let (found, expected) = (u16::from_be_bytes([header[10], header[11]]), full::ipv4_header(header));
    if found == expected {
        Ok(())
    } else {
        Err(format!("quoted IPv4 header checksum {found:#06x}, expected {expected:#06x}"))
    }
}

/// Hex dump for assertion messages: 16 bytes a line, with offsets.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(line, chunk)| {
            let cells: Vec<String> = chunk.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("{:04x}  {}", line * 16, cells.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Decodes a hex string, ignoring whitespace.
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|byte| !byte.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex digits"))
        .collect()
}

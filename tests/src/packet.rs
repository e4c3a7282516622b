//! Building Ethernet/IPv4 test frames with correct checksums, and checking the
//! checksums of frames the programs return. Checksums here are always computed in
//! full (`rewrite_common::checksum::full`), never incrementally as the programs do.

use std::net::Ipv4Addr;

use rewrite_common::{
    checksum::full,
    maps::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

pub const ETH_LEN: usize = 14;
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

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
    /// An ICMP echo request.
    IcmpEcho {
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
    /// Bytes after the IPv4 header, taken as they are (non-first fragments, other
    /// protocols).
    Raw {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Ipv4Spec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub transport: Transport,
    /// IPv4 options, a multiple of 4 bytes (at most 40).
    pub options: Vec<u8>,
    /// Fragment offset in 8-byte units, and the more-fragments flag.
    pub fragment_offset: u16,
    pub more_fragments: bool,
}

impl Ipv4Spec {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, transport: Transport) -> Self {
        Self { src, dst, transport, options: Vec::new(), fragment_offset: 0, more_fragments: false }
    }

    pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self::new(
            src,
            dst,
            Transport::Tcp { src_port: 40000, dst_port: 9300, payload: b"GET /_cluster/health".to_vec() },
        )
    }

    pub fn udp(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self::new(
            src,
            dst,
            Transport::Udp {
                src_port: 5353,
                dst_port: 24007,
                payload: b"gluster peer probe".to_vec(),
                zero_checksum: false,
            },
        )
    }

    pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self::new(src, dst, Transport::IcmpEcho { id: 0x1234, seq: 7, payload: b"abcdefgh01234567".to_vec() })
    }

    /// The same packet with other addresses.
    pub fn with_addresses(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self { src, dst, ..self.clone() }
    }

    /// The whole Ethernet frame, with every checksum computed in full.
    pub fn frame(&self) -> Vec<u8> {
        assert!(
            self.options.len().is_multiple_of(4) && self.options.len() <= 40,
            "IPv4 options must be 4-byte words, at most 40 bytes"
        );
        let (protocol, segment) = self.segment();
        let header_len = 20 + self.options.len();
        let total_len = u16::try_from(header_len + segment.len()).expect("test packets are smaller than 64 KiB");
        let mut ip = Vec::with_capacity(header_len);
        ip.push(0x40 | u8::try_from(header_len / 4).expect("IHL fits in 4 bits"));
        ip.push(0); // DSCP/ECN
        ip.extend_from_slice(&total_len.to_be_bytes());
        ip.extend_from_slice(&0xbeefu16.to_be_bytes()); // identification
        let flags_offset = (u16::from(self.more_fragments) << 13) | self.fragment_offset;
        ip.extend_from_slice(&flags_offset.to_be_bytes());
        ip.push(64); // TTL
        ip.push(protocol);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let check = full::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_LEN + ip.len() + segment.len());
        frame.extend_from_slice(&DST_MAC);
        frame.extend_from_slice(&SRC_MAC);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&segment);
        frame
    }

    fn segment(&self) -> (u8, Vec<u8>) {
        let (src, dst) = (self.src.octets(), self.dst.octets());
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
                let check = full::ipv4_l4(src, dst, IPPROTO_TCP, &tcp, 16);
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
                    let check = full::ipv4_l4(src, dst, IPPROTO_UDP, &udp, 6);
                    udp[6..8].copy_from_slice(&check.to_be_bytes());
                }
                (IPPROTO_UDP, udp)
            }
            Transport::IcmpEcho { id, seq, payload } => {
                let mut icmp = vec![8, 0, 0, 0];
                icmp.extend_from_slice(&id.to_be_bytes());
                icmp.extend_from_slice(&seq.to_be_bytes());
                icmp.extend_from_slice(payload);
                let check = full::icmp(&icmp);
                icmp[2..4].copy_from_slice(&check.to_be_bytes());
                (IPPROTO_ICMP, icmp)
            }
            Transport::Raw { protocol, bytes } => (*protocol, bytes.clone()),
        }
    }
}

/// Checks every checksum of an Ethernet/IPv4 frame by full recomputation: the IPv4
/// header, and for an unfragmented datagram the TCP, UDP (zero allowed) or ICMP one.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let ip = frame.get(ETH_LEN..).ok_or("frame shorter than Ethernet")?;
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
    let (name, offset, expected) = match header[9] {
        IPPROTO_TCP => ("TCP", 16, full::ipv4_l4(src, dst, IPPROTO_TCP, segment, 16)),
        IPPROTO_UDP => {
            if segment[6..8] == [0, 0] {
                return Ok(());
            }
            ("UDP", 6, full::ipv4_l4(src, dst, IPPROTO_UDP, segment, 6))
        }
        IPPROTO_ICMP => ("ICMP", 2, full::icmp(segment)),
        _ => return Ok(()),
    };
    let found = u16::from_be_bytes([segment[offset], segment[offset + 1]]);
    if found == expected { Ok(()) } else { Err(format!("{name} checksum {found:#06x}, expected {expected:#06x}")) }
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

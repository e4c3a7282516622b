//! A byte-level reference model of the dataplane programs: what each program does to
//! an Ethernet frame, given a mapping table. The differential test runs the real
//! programs (BPF_PROG_TEST_RUN) and this model on the same frames and compares the
//! output byte for byte, and the outcome counted.
//!
//! It is written from the design, not translated from the eBPF code, and it shares no
//! checksum code with it: the programs patch checksums incrementally (RFC 1624 in XDP,
//! the kernel's helpers in TC), while the model recomputes every checksum it changes
//! from scratch over the field's whole coverage (see [`carry_over`]). The only shared
//! logic is the lookup order of `mapping::plan_rewrite`, through [`ModelTable`].
//!
//! The rules it states:
//! * Ethernet, with at most one 802.1Q tag, carrying IPv4 (with options, IHL honoured)
//!   or IPv6 (hop-by-hop, destination options and fragment headers walked, at most 4).
//! * A frame whose headers are cut short or contradict each other is *malformed*; one
//!   the rewrite does not handle (other EtherTypes and protocols, IPv6 routing and
//!   authentication headers, neighbour discovery, transport headers past 512 bytes) is
//!   *unsupported*. Both pass unchanged. Bytes after the datagram (Ethernet padding)
//!   are allowed and never touched.
//! * A non-first fragment has no transport header: only its addresses are rewritten.
//! * An ICMP error (v4 3, 11, 12; v6 1 to 4) quotes the packet that caused it: that
//!   packet is rewritten too, side by side, by the TC programs. XDP leaves ICMP errors
//!   to the TC program beside it. The quote must lie inside the error's datagram.
//! * A UDP checksum of zero ("none") stays zero; a computed zero is sent as 0xffff.
//! * A wrong checksum stays wrong by the same amount: the receiver must still see it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    counters::{FRAGMENT_UNMATCHED, MALFORMED, NO_MATCH, REWRITTEN, UNSUPPORTED},
    mapping::{Direction, Target},
    maps::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    model::ModelTable,
};

/// The programs of the object, by what they do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// Ingress at XDP: everything but ICMP errors.
    XdpIngress,
    /// Ingress at TC: everything.
    TcIngress,
    /// Egress at TC: everything.
    TcEgress,
    /// Ingress at TC beside the XDP program: only ICMP errors.
    TcIcmpErrors,
}

impl Program {
    pub const ALL: [Self; 4] = [Self::XdpIngress, Self::TcIngress, Self::TcEgress, Self::TcIcmpErrors];

    pub const fn direction(self) -> Direction {
        match self {
            Self::TcEgress => Direction::Egress,
            _ => Direction::Ingress,
        }
    }
}

/// What a program does to a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The frame as the program lets it pass (every program always passes).
    pub frame: Vec<u8>,
    /// The outcome counter (`counters::REWRITTEN`, …) it increments in its direction,
    /// or `None` when it leaves the frame to the other program of the pair uncounted.
    pub outcome: Option<u32>,
}

/// Why a frame is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unsupported,
}

impl Refusal {
    pub const fn outcome(self) -> u32 {
        match self {
            Self::Malformed => MALFORMED,
            Self::Unsupported => UNSUPPORTED,
        }
    }
}

/// Where the fields the rewrite touches sit in the frame, for the packet's own headers
/// or for a packet quoted inside an ICMP error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpFields {
    pub ipv6: bool,
    /// Where the IP header starts.
    pub l3: usize,
    /// The IPv4 header's length (IHL × 4); 40 for IPv6, which has no header checksum.
    pub header_len: usize,
    /// Where the datagram ends (for a quote: where the enclosing datagram ends).
    pub end: usize,
    /// TCP or UDP ports: the protocol, and where the source port sits (the destination
    /// port follows it).
    pub ports: Option<(u8, usize)>,
}

impl IpFields {
    const fn address_len(&self) -> usize {
        if self.ipv6 { 16 } else { 4 }
    }
    const fn src_at(&self) -> usize {
        self.l3 + if self.ipv6 { 8 } else { 12 }
    }
    const fn dst_at(&self) -> usize {
        self.src_at() + self.address_len()
    }
    fn address(&self, frame: &[u8], at: usize) -> IpAddr {
        let bytes = &frame[at..at + self.address_len()];
        match <[u8; 4]>::try_from(bytes) {
            Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
            Err(_) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 address bytes"))),
        }
    }
    /// The byte ranges a rewrite of these headers may change.
    fn rewritable(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let addresses = self.src_at()..self.dst_at() + self.address_len();
        std::iter::once(addresses).chain(self.ports.map(|(_, at)| at..at + 4))
    }
}

/// A transport checksum that covers the addresses through the pseudo-header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PseudoChecksum {
    /// Where the field sits in the frame.
    pub at: usize,
    pub protocol: u8,
}

/// A parsed frame: the outer headers, and what the rewrite needs to know about them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub ip: IpFields,
    /// Where the transport header starts.
    pub l4: usize,
    /// TCP, UDP or ICMPv6 (absent for ICMP over IPv4 and for later fragments).
    pub pseudo_checksum: Option<PseudoChecksum>,
    /// A fragment other than the first.
    pub later_fragment: bool,
    /// For an ICMP error, where the quoted packet's IP header starts.
    pub quote: Option<usize>,
}

/// Offsets and limits of the design.
const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const ICMP_HEADER: usize = 8;
/// Transport headers further in than this are not looked at.
const MAX_L4_OFFSET: usize = 512;
/// IPv6 extension headers walked before giving up.
const MAX_EXTENSION_HEADERS: usize = 4;

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// Whether `frame` holds `len` bytes from `at`.
fn holds(frame: &[u8], at: usize, len: usize) -> bool {
    at + len <= frame.len()
}

/// The length an IP header claims for its datagram from `l3`: `claimed` (already
/// including the fixed header for IPv6), or the rest of the frame when a BIG TCP
/// super-packet over 64 KiB claims 0.
fn datagram_len(frame: &[u8], l3: usize, length_field: u16, claimed: usize) -> usize {
    let available = frame.len() - l3;
    if length_field == 0 && available > usize::from(u16::MAX) { available } else { claimed }
}

/// Parses a frame as the programs must, or says why it is left alone.
pub fn parse(frame: &[u8]) -> Result<Datagram, Refusal> {
    let mut ether_type = be16(frame, 12).ok_or(Refusal::Malformed)?;
    let mut l3 = ETH_LEN;
    if ether_type == ETH_P_8021Q {
        ether_type = be16(frame, ETH_LEN + 2).ok_or(Refusal::Malformed)?;
        l3 += VLAN_LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(frame, l3),
        ETH_P_IPV6 => parse_ipv6(frame, l3),
        _ => Err(Refusal::Unsupported),
    }
}

fn parse_ipv4(frame: &[u8], l3: usize) -> Result<Datagram, Refusal> {
    if !holds(frame, l3, IPV4_MIN_HEADER) || frame[l3] >> 4 != 4 {
        return Err(Refusal::Malformed);
    }
    let header_len = usize::from(frame[l3] & 0x0f) * 4;
    let length_field = be16(frame, l3 + 2).ok_or(Refusal::Malformed)?;
    let total_len = datagram_len(frame, l3, length_field, usize::from(length_field));
    if header_len < IPV4_MIN_HEADER || total_len < header_len || l3 + total_len > frame.len() {
        return Err(Refusal::Malformed);
    }
    let first_fragment = be16(frame, l3 + 6).ok_or(Refusal::Malformed)? & 0x1fff == 0;
    let ip = IpFields { ipv6: false, l3, header_len, end: l3 + total_len, ports: None };
    transport(frame, ip, frame[l3 + 9], l3 + header_len, first_fragment)
}

fn parse_ipv6(frame: &[u8], l3: usize) -> Result<Datagram, Refusal> {
    if !holds(frame, l3, IPV6_HEADER) || frame[l3] >> 4 != 6 {
        return Err(Refusal::Malformed);
    }
    let length_field = be16(frame, l3 + 4).ok_or(Refusal::Malformed)?;
    let end = l3 + datagram_len(frame, l3, length_field, IPV6_HEADER + usize::from(length_field));
    if end > frame.len() {
        return Err(Refusal::Malformed);
    }
    let (mut next_header, mut offset, mut first_fragment) = (frame[l3 + 6], l3 + IPV6_HEADER, true);
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next_header {
            0 | 60 => {
                if !holds(frame, offset, 2) {
                    return Err(Refusal::Malformed);
                }
                next_header = frame[offset];
                offset += (usize::from(frame[offset + 1]) + 1) * 8;
            }
            44 => {
                if !holds(frame, offset, 8) {
                    return Err(Refusal::Malformed);
                }
                next_header = frame[offset];
                first_fragment = be16(frame, offset + 2).ok_or(Refusal::Malformed)? & 0xfff8 == 0;
                offset += 8;
            }
            // Routing: the destination is an intermediate hop. Authentication: covers
            // the addresses. Rewriting either breaks the packet.
            43 | 51 => return Err(Refusal::Unsupported),
            _ => break,
        }
        if offset > end {
            return Err(Refusal::Malformed);
        }
        if offset > MAX_L4_OFFSET {
            return Err(Refusal::Unsupported);
        }
        if !first_fragment {
            break;
        }
    }
    let ip = IpFields { ipv6: true, l3, header_len: IPV6_HEADER, end, ports: None };
    transport(frame, ip, next_header, offset, first_fragment)
}

fn transport(
    frame: &[u8],
    mut ip: IpFields,
    protocol: u8,
    l4: usize,
    first_fragment: bool,
) -> Result<Datagram, Refusal> {
    if l4 > MAX_L4_OFFSET {
        return Err(Refusal::Unsupported);
    }
    let segment_len = ip.end - l4;
    let mut datagram = Datagram { ip, l4, pseudo_checksum: None, later_fragment: !first_fragment, quote: None };
    let icmp_type = |frame: &[u8]| -> Result<u8, Refusal> {
        if !holds(frame, l4, 4) || segment_len < ICMP_HEADER {
            return Err(Refusal::Malformed);
        }
        Ok(frame[l4])
    };
    match protocol {
        // Addresses only: no transport header in a later fragment (in IPv6, options
        // headers may still follow the fragment header there).
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 if !first_fragment => {}
        0 | 60 if ip.ipv6 && !first_fragment => {}
        IPPROTO_TCP => {
            if !holds(frame, l4, 20) {
                return Err(Refusal::Malformed);
            }
            let data_offset = usize::from(frame[l4 + 12] >> 4) * 4;
            if data_offset < 20 || data_offset > segment_len {
                return Err(Refusal::Malformed);
            }
            ip.ports = Some((protocol, l4));
            datagram.pseudo_checksum = Some(PseudoChecksum { at: l4 + 16, protocol });
        }
        IPPROTO_UDP => {
            if !holds(frame, l4, 8) || segment_len < 8 || be16(frame, l4 + 4).unwrap_or(0) < 8 {
                return Err(Refusal::Malformed);
            }
            ip.ports = Some((protocol, l4));
            datagram.pseudo_checksum = Some(PseudoChecksum { at: l4 + 6, protocol });
        }
        IPPROTO_ICMP if !ip.ipv6 => {
            let kind = icmp_type(frame)?;
            datagram.quote = [3, 11, 12].contains(&kind).then_some(l4 + ICMP_HEADER);
        }
        IPPROTO_ICMPV6 if ip.ipv6 => {
            let kind = icmp_type(frame)?;
            // Neighbour discovery carries link-local business, addresses inside too.
            if (133..=137).contains(&kind) {
                return Err(Refusal::Unsupported);
            }
            datagram.quote = (1..=4).contains(&kind).then_some(l4 + ICMP_HEADER);
            datagram.pseudo_checksum = Some(PseudoChecksum { at: l4 + 2, protocol });
        }
        // Other protocols may have checksums over the addresses that the rewrite does
        // not know.
        _ => return Err(Refusal::Unsupported),
    }
    datagram.ip = ip;
    Ok(datagram)
}

/// The packet quoted by an ICMP error at `l3`, if its headers are there: the fixed IP
/// header inside the error's datagram (which ends at `end`), and the ports if it is a
/// first fragment of TCP or UDP and they are there too.
pub fn parse_quote(frame: &[u8], l3: usize, ipv6: bool, end: usize) -> Option<IpFields> {
    let (header_len, protocol, l4, first_fragment) = if ipv6 {
        if l3 + IPV6_HEADER > end || frame[l3] >> 4 != 6 {
            return None;
        }
        (IPV6_HEADER, frame[l3 + 6], l3 + IPV6_HEADER, true)
    } else {
        if l3 + IPV4_MIN_HEADER > end || frame[l3] >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(frame[l3] & 0x0f) * 4;
        if header_len < IPV4_MIN_HEADER {
            return None;
        }
        (header_len, frame[l3 + 9], l3 + header_len, be16(frame, l3 + 6)? & 0x1fff == 0)
    };
    if l4 > MAX_L4_OFFSET {
        return None;
    }
    let has_ports = matches!(protocol, IPPROTO_TCP | IPPROTO_UDP) && first_fragment && l4 + 4 <= end;
    Some(IpFields { ipv6, l3, header_len, end, ports: has_ports.then_some((protocol, l4)) })
}

/// What `program` does to `frame` with `table`'s mappings.
pub fn run(table: &ModelTable, program: Program, frame: &[u8]) -> Run {
    let unchanged = |outcome| Run { frame: frame.to_vec(), outcome };
    let datagram = match parse(frame) {
        Ok(datagram) => datagram,
        Err(_) if program == Program::TcIcmpErrors => return unchanged(None),
        Err(refusal) => return unchanged(Some(refusal.outcome())),
    };
    match (program, datagram.quote) {
        (Program::XdpIngress, Some(_)) | (Program::TcIcmpErrors, None) => return unchanged(None),
        _ => {}
    }
    let direction = program.direction();
    let mut output = frame.to_vec();
    let mut matched = rewrite_headers(table, direction, &datagram.ip, &mut output);
    let quote = datagram.quote.and_then(|l3| parse_quote(frame, l3, datagram.ip.ipv6, datagram.ip.end));
    if let Some(quote) = &quote {
        matched |= rewrite_headers(table, direction, quote, &mut output);
    }
    fix_checksums(frame, &mut output, &datagram, quote.as_ref());
    let outcome = match (matched, datagram.later_fragment) {
        (true, _) => REWRITTEN,
        (false, true) => FRAGMENT_UNMATCHED,
        (false, false) => NO_MATCH,
    };
    Run { frame: output, outcome: Some(outcome) }
}

/// Looks the headers' two sides up and writes what they become. Returns whether either
/// matched a mapping (even one that leaves the bytes as they were).
fn rewrite_headers(table: &ModelTable, direction: Direction, ip: &IpFields, frame: &mut [u8]) -> bool {
    let (src, dst) = (ip.address(frame, ip.src_at()), ip.address(frame, ip.dst_at()));
    let ports = ip.ports.map(|(protocol, at)| {
        (protocol, be16(frame, at).expect("ports parsed"), be16(frame, at + 2).expect("ports parsed"))
    });
    let rewrite = table.rewrite(direction, src, dst, ports);
    let mut write = |target: Option<Target>, address_at: usize, port_at: Option<usize>| {
        let Some(target) = target else { return };
        let address = if ip.ipv6 { &target.addr.octets[..] } else { &target.addr.octets[12..] };
        frame[address_at..address_at + address.len()].copy_from_slice(address);
        if let (Some(port), Some(at)) = (target.port, port_at) {
            frame[at..at + 2].copy_from_slice(&port);
        }
    };
    let source_port = ip.ports.map(|(_, at)| at);
    write(rewrite.src, ip.src_at(), source_port);
    write(rewrite.dst, ip.dst_at(), source_port.map(|at| at + 2));
    !rewrite.is_empty()
}

/// Recomputes every checksum that covers a changed byte. Inner checksums first: the
/// quoted IPv4 header's checksum is data to the ICMP checksum around it. The quoted
/// packet's own transport checksum is never updated: nobody verifies a quote's.
fn fix_checksums(input: &[u8], output: &mut [u8], datagram: &Datagram, quote: Option<&IpFields>) {
    let changed = |ip: &IpFields| ip.rewritable().any(|range| input[range.clone()] != output[range]);
    let addresses_changed = |ip: &IpFields| {
        let range = ip.src_at()..ip.dst_at() + ip.address_len();
        input[range.clone()] != output[range]
    };
    let quote_changed = quote.is_some_and(changed);
    let quote_addresses_changed = quote.is_some_and(addresses_changed);
    let outer_changed = changed(&datagram.ip);
    let outer_addresses_changed = addresses_changed(&datagram.ip);
    if let Some(quote) = quote
        && !quote.ipv6
        && quote_addresses_changed
    {
        let coverage = quote.l3..(quote.l3 + quote.header_len).min(quote.end);
        carry_over(input, output, quote.l3 + 10, |frame| sum::bytes(frame, coverage.clone(), quote.l3 + 10), false);
    }
    let ip = &datagram.ip;
    if !ip.ipv6 && outer_addresses_changed {
        let coverage = ip.l3..ip.l3 + ip.header_len;
        carry_over(input, output, ip.l3 + 10, |frame| sum::bytes(frame, coverage.clone(), ip.l3 + 10), false);
    }
    if let Some(check) = datagram.pseudo_checksum
        && (outer_changed || quote_changed)
    {
        let segment = datagram.l4..ip.end;
        let coverage = |frame: &[u8]| {
            let pseudo = sum::pseudo_header(frame, ip, check.protocol, segment.len());
            sum::add(pseudo, sum::bytes(frame, segment.clone(), check.at))
        };
        carry_over(input, output, check.at, coverage, check.protocol == IPPROTO_UDP);
    } else if datagram.pseudo_checksum.is_none() && quote_changed {
        // ICMP over IPv4: no pseudo-header, the message only.
        let at = datagram.l4 + 2;
        let segment = datagram.l4..ip.end;
        carry_over(input, output, at, |frame| sum::bytes(frame, segment.clone(), at), false);
    }
}

/// Sets the checksum field at `at` in `output` so that the field's verification sum
/// (the one's complement sum over its coverage, the field included) is what it was in
/// `input`. `coverage` sums a frame's covered bytes without the field, from scratch.
///
/// For a correct input checksum that is the ordinary checksum of the output. For a
/// wrong one the output is wrong by the same amount, as an incremental update leaves
/// it, so a corrupted packet is still dropped by its receiver. The result is never
/// 0xffff (one's complement has two zeros; an update produces the one a computation
/// does), except that a UDP checksum that computes to zero is sent as 0xffff, and a
/// UDP checksum of zero means "none" and stays.
pub fn carry_over(input: &[u8], output: &mut [u8], at: usize, coverage: impl Fn(&[u8]) -> u16, udp: bool) {
    let field_in = be16(input, at).expect("a checksum field inside the frame");
    if udp && field_in == 0 {
        return;
    }
    let verification = sum::add(coverage(input), field_in);
    let mut field_out = !sum::add(coverage(output), !verification);
    if udp && field_out == 0 {
        field_out = 0xffff;
    }
    output[at..at + 2].copy_from_slice(&field_out.to_be_bytes());
}

/// One's complement arithmetic, written for the model alone.
pub mod sum {
    use super::IpFields;

    /// One's complement addition of two 16-bit numbers. It never returns 0 unless both
    /// are 0, so a sum of nonzero data is in 1..=0xffff.
    pub fn add(a: u16, b: u16) -> u16 {
        let total = u32::from(a) + u32::from(b);
        let folded = (total & 0xffff) + (total >> 16);
        u16::try_from(folded).expect("one carry folds into 16 bits")
    }

    /// The sum of `frame[range]` as big-endian words aligned at the range's start (an
    /// odd last byte padded with zero), with the two bytes at `skip` counted as zero.
    pub fn bytes(frame: &[u8], range: std::ops::Range<usize>, skip: usize) -> u16 {
        let end = range.end;
        let byte = |index: usize| {
            if index >= end || index == skip || index == skip + 1 { 0 } else { frame.get(index).copied().unwrap_or(0) }
        };
        range.step_by(2).fold(0, |total, at| add(total, u16::from_be_bytes([byte(at), byte(at + 1)])))
    }

    /// The pseudo-header's sum: the addresses, the protocol and the transport length.
    pub fn pseudo_header(frame: &[u8], ip: &IpFields, protocol: u8, transport_len: usize) -> u16 {
        let addresses = bytes(frame, ip.src_at()..ip.dst_at() + ip.address_len(), usize::MAX - 1);
        let length = u32::try_from(transport_len).expect("a datagram is shorter than 4 GiB");
        let [high_0, high_1, low_0, low_1] = length.to_be_bytes();
        [u16::from(protocol), u16::from_be_bytes([high_0, high_1]), u16::from_be_bytes([low_0, low_1])]
            .into_iter()
            .fold(addresses, add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame from 10.100.0.2:1000 to 10.0.0.1:53 with two
    /// payload bytes and correct checksums (computed with this module's sums).
    fn udp_frame() -> Vec<u8> {
        let mut frame = vec![0; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[0x45, 0, 0, 30, 0, 0, 0, 0, 64, 17, 0, 0, 10, 100, 0, 2, 10, 0, 0, 1]);
        frame.extend_from_slice(&[0x03, 0xe8, 0, 53, 0, 10, 0, 0, 0xab, 0xcd]);
        let ip = parse(&frame).expect("a valid frame").ip;
        let header_check = !sum::bytes(&frame, 14..34, 24);
        frame[24..26].copy_from_slice(&header_check.to_be_bytes());
        let udp_check = !sum::add(sum::pseudo_header(&frame, &ip, 17, 10), sum::bytes(&frame, 34..44, 40));
        frame[40..42].copy_from_slice(&udp_check.to_be_bytes());
        frame
    }

    fn table() -> ModelTable {
        let mut table = ModelTable::default();
        table.add("10.200.0.2".parse().expect("address"), "10.100.0.2".parse().expect("address")).expect("add");
        table
    }

    fn verifies(frame: &[u8]) -> bool {
        let ip = parse(frame).expect("a valid frame").ip;
        let header = sum::bytes(frame, 14..34, usize::MAX - 1);
        let udp = sum::add(sum::pseudo_header(frame, &ip, 17, 10), sum::bytes(frame, 34..44, usize::MAX - 1));
        header == 0xffff && udp == 0xffff
    }

    #[test]
    fn a_rewritten_frame_has_ordinary_checksums_and_the_outcome_is_counted() {
        let input = udp_frame();
        assert!(verifies(&input), "the fixture itself must verify");
        let run = run(&table(), Program::TcIngress, &input);
        assert_eq!(run.outcome, Some(REWRITTEN));
        assert_eq!(run.frame[26..30], [10, 200, 0, 2], "REAL source restored to VIRTUAL");
        assert!(verifies(&run.frame), "checksums must verify after the rewrite");
        // Egress does not know 10.100.0.2 as a VIRTUAL: nothing changes.
        let run = super::run(&table(), Program::TcEgress, &input);
        assert_eq!((run.frame, run.outcome), (input, Some(NO_MATCH)));
    }

    #[test]
    fn a_wrong_checksum_stays_wrong_by_the_same_amount() {
        let mut input = udp_frame();
        let correct = u16::from_be_bytes([input[40], input[41]]);
        input[40..42].copy_from_slice(&correct.wrapping_add(5).to_be_bytes());
        let output = run(&table(), Program::TcIngress, &input).frame;
        let mut repaired = output.clone();
        let wrong_out = u16::from_be_bytes([output[40], output[41]]);
        repaired[40..42].copy_from_slice(&wrong_out.wrapping_sub(5).to_be_bytes());
        assert!(verifies(&repaired), "taking the input's error off the output must leave a correct checksum");
    }

    #[test]
    fn a_udp_checksum_of_zero_stays_zero() {
        let mut input = udp_frame();
        input[40..42].copy_from_slice(&[0, 0]);
        let output = run(&table(), Program::TcIngress, &input).frame;
        assert_eq!(output[40..42], [0, 0]);
        assert_ne!(output, input, "the address is still rewritten");
    }

    #[test]
    fn malformed_and_unsupported_frames_pass_unchanged_with_their_reason() {
        let input = udp_frame();
        let mut arp = input.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut long = input.clone();
        long[16..18].copy_from_slice(&31u16.to_be_bytes());
        let mut ihl_4 = input.clone();
        ihl_4[14] = 0x44;
        let cases = [(arp, UNSUPPORTED), (long, MALFORMED), (ihl_4, MALFORMED), (input[..13].to_vec(), MALFORMED)];
        for (frame, outcome) in cases {
            for program in [Program::XdpIngress, Program::TcIngress, Program::TcEgress] {
                let run = run(&table(), program, &frame);
                assert_eq!((&run.frame, run.outcome), (&frame, Some(outcome)), "{program:?} on {frame:02x?}");
            }
            let run = run(&table(), Program::TcIcmpErrors, &frame);
            assert_eq!(run.outcome, None, "the ICMP error program counts only ICMP errors");
        }
    }

    #[test]
    fn a_quote_must_lie_inside_the_datagram() {
        let mut frame = vec![0; 100];
        frame[42] = 0x45;
        assert!(parse_quote(&frame, 42, false, 62).is_some(), "a whole header, no ports");
        assert_eq!(parse_quote(&frame, 42, false, 62).and_then(|quote| quote.ports), None);
        assert!(parse_quote(&frame, 42, false, 61).is_none(), "a header cut by the datagram's end");
        frame[42 + 9] = 6;
        assert_eq!(parse_quote(&frame, 42, false, 66).and_then(|quote| quote.ports), Some((6, 62)));
        assert_eq!(parse_quote(&frame, 42, false, 65).and_then(|quote| quote.ports), None, "ports cut");
    }
}

//! Internet checksum arithmetic (RFC 1071) and its incremental update (RFC 1624).
//!
//! The XDP program cannot use the kernel's checksum helpers, so it patches checksums
//! with [`replace_u32`] and [`replace_udp_u32`]. All values here are numeric views of
//! big-endian wire fields: a checksum field `[hi, lo]` is `u16::from_be_bytes`, an
//! IPv4 address is `u32::from_be_bytes`. One's complement sums do not care which byte
//! order is used as long as it is used consistently; big-endian keeps the numbers
//! equal to what tcpdump and the RFCs print.

/// Adds the two 16-bit halves of `value` to a 32-bit one's complement accumulator.
#[inline(always)]
const fn add_u32(sum: u32, value: u32) -> u32 {
    // Each addend is at most 0xffff, and the callers add at most a handful of them,
    // so the u32 accumulator cannot overflow before `fold`.
    sum + (value >> 16) + (value & 0xffff)
}

/// Folds a 32-bit one's complement accumulator into 16 bits (end-around carry).
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "two folds leave at most 16 significant bits")]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    // After two folds the value fits in 16 bits.
    sum as u16
}

/// RFC 1624 equation 3: the checksum after one 32-bit word of the covered data changed
/// from `old` to `new`, given the checksum `check` before the change.
///
/// `HC' = ~(~HC + ~m + m')`. Unlike equation 2, this never produces 0xffff from a
/// valid checksum, so the result equals a full recomputation bit for bit.
#[inline(always)]
pub const fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = (!check) as u32;
    sum = add_u32(sum, !old);
    sum = add_u32(sum, new);
    !fold(sum)
}

/// Like [`replace_u32`] for a 16-bit word (a port).
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// [`replace_u32`] for a UDP checksum over IPv4, which has two special values: zero
/// means "no checksum" and must stay zero, and a computed zero is sent as 0xffff
/// (RFC 768).
#[inline(always)]
pub const fn replace_udp_u32(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace_u32(check, old, new) {
        0 => 0xffff,
        updated => updated,
    }
}

/// [`replace_u32`] for a 16-byte field (an IPv6 address), as four 32-bit words. Each
/// step leaves a valid checksum, so chaining them equals one combined update.
#[inline(always)]
pub fn replace_bytes16(check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut updated = check;
    let mut word = 0;
    while word < 4 {
        let at = word * 4;
        let old_word = u32::from_be_bytes([old[at], old[at + 1], old[at + 2], old[at + 3]]);
        let new_word = u32::from_be_bytes([new[at], new[at + 1], new[at + 2], new[at + 3]]);
        updated = replace_u32(updated, old_word, new_word);
        word += 1;
    }
    updated
}

/// [`replace_bytes16`] for a UDP checksum: zero stays zero, a computed zero is sent
/// as 0xffff.
#[inline(always)]
pub fn replace_udp_bytes16(check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace_bytes16(check, old, new) {
        0 => 0xffff,
        updated => updated,
    }
}

/// Full (non-incremental) computation, for verifying packets on the host. It shares
/// no code with the incremental update above on purpose: a bug in one cannot hide in
/// the other.
#[cfg(any(test, feature = "user"))]
pub mod full {
    /// The one's complement sum of `bytes` taken as big-endian 16-bit words (an odd
    /// trailing byte is padded with zero), not yet complemented.
    pub fn ones_complement_sum(bytes: &[u8], initial: u64) -> u16 {
        let mut sum = initial;
        let mut chunks = bytes.chunks_exact(2);
        for word in &mut chunks {
            sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        u16::try_from(sum).expect("folded sum fits in 16 bits")
    }

    /// The checksum of an IPv4 header whose checksum field (bytes 10..12) is treated as
    /// zero.
    pub fn ipv4_header(header: &[u8]) -> u16 {
        let mut copy = header.to_vec();
        copy[10] = 0;
        copy[11] = 0;
        !ones_complement_sum(&copy, 0)
    }

    /// The TCP or UDP checksum of `segment` (the L4 header and payload) over IPv4,
    /// with the checksum field at `check_offset` inside `segment` treated as zero.
    /// For UDP a computed zero is returned as 0xffff.
    pub fn ipv4_l4(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8], check_offset: usize) -> u16 {
        let mut copy = segment.to_vec();
        copy[check_offset] = 0;
        copy[check_offset + 1] = 0;
        let length = u16::try_from(segment.len()).expect("an IPv4 segment is shorter than 64 KiB");
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&src);
        pseudo[4..8].copy_from_slice(&dst);
        pseudo[9] = protocol;
        pseudo[10..12].copy_from_slice(&length.to_be_bytes());
        let pseudo_sum = u64::from(ones_complement_sum(&pseudo, 0));
        let check = !ones_complement_sum(&copy, pseudo_sum);
        if protocol == crate::maps::IPPROTO_UDP && check == 0 { 0xffff } else { check }
    }

    /// The TCP, UDP or ICMPv6 checksum of `segment` over IPv6 (RFC 8200 pseudo-header),
    /// with the checksum field at `check_offset` treated as zero. For UDP a computed
    /// zero is returned as 0xffff.
    pub fn ipv6_l4(src: [u8; 16], dst: [u8; 16], next_header: u8, segment: &[u8], check_offset: usize) -> u16 {
        let mut copy = segment.to_vec();
        copy[check_offset] = 0;
        copy[check_offset + 1] = 0;
        let length = u32::try_from(segment.len()).expect("segment length fits u32");
        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&length.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, next_header]);
        let pseudo_sum = u64::from(ones_complement_sum(&pseudo, 0));
        let check = !ones_complement_sum(&copy, pseudo_sum);
        if next_header == crate::maps::IPPROTO_UDP && check == 0 { 0xffff } else { check }
    }

    /// The ICMP checksum of `message` with its checksum field (bytes 2..4) as zero.
    pub fn icmp(message: &[u8]) -> u16 {
        let mut copy = message.to_vec();
        copy[2] = 0;
        copy[3] = 0;
        !ones_complement_sum(&copy, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random byte stream, so failures are reproducible.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                state.to_be_bytes()[0]
            })
            .collect()
    }

    /// Changes the 4 bytes at `at` in an IPv4 header and checks that the incremental
    /// update equals a full recomputation.
    fn check_ipv4_header_update(mut header: Vec<u8>, at: usize, new: [u8; 4]) {
        let check = full::ipv4_header(&header);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        let old = u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        header[at..at + 4].copy_from_slice(&new);
        let incremental = replace_u32(check, old, u32::from_be_bytes(new));
        assert_eq!(
            incremental,
            full::ipv4_header(&header),
            "incremental update of {old:#010x} -> {:#010x} in header {header:02x?}",
            u32::from_be_bytes(new)
        );
    }

    #[test]
    fn header_update_matches_full_recomputation_on_random_headers() {
        for seed in 0..20_000u64 {
            let mut header = bytes(seed, 20);
            header[0] = 0x45;
            let new = bytes(seed ^ 0xdead_beef, 4);
            let at = if seed % 2 == 0 { 12 } else { 16 };
            check_ipv4_header_update(header, at, new.try_into().expect("4 bytes"));
        }
    }

    #[test]
    fn header_update_handles_checksums_of_0000_and_ffff() {
        // Search for headers whose checksum before or after the change is at an edge.
        let mut saw_zero_before = false;
        let mut saw_zero_after = false;
        for seed in 0..2_000_000u64 {
            let mut header = bytes(seed, 20);
            header[0] = 0x45;
            let check = full::ipv4_header(&header);
            let new: [u8; 4] = bytes(seed.rotate_left(17), 4).try_into().expect("4 bytes");
            let mut changed = header.clone();
            changed[16..20].copy_from_slice(&new);
            let after = full::ipv4_header(&changed);
            if check == 0 || after == 0 {
                saw_zero_before |= check == 0;
                saw_zero_after |= after == 0;
                check_ipv4_header_update(header, 16, new);
            }
            if saw_zero_before && saw_zero_after {
                return;
            }
        }
        panic!("no header with checksum 0x0000 found (before: {saw_zero_before}, after: {saw_zero_after})");
    }

    #[test]
    fn full_checksum_of_valid_data_is_never_ffff() {
        // The one's complement sum of nonzero data is never +0, so the checksum is never
        // 0xffff; the incremental update must agree, which the cases below pin down.
        assert_eq!(replace_u32(0x0000, 0x0000_0001, 0x0000_0001), 0x0000);
        assert_eq!(replace_u32(0xffff, 0x0000_0000, 0x0000_0000), 0x0000);
        // Changing a word by +1 moves the checksum by -1, wrapping past zero to 0xfffe
        // rather than 0xffff (negative zero).
        assert_eq!(replace_u32(0x0001, 0x0000_0000, 0x0000_0001), 0x0000);
        assert_eq!(replace_u32(0x0000, 0x0000_0000, 0x0000_0001), 0xfffe);
    }

    fn udp_segment(seed: u64) -> ([u8; 4], [u8; 4], Vec<u8>) {
        let src: [u8; 4] = bytes(seed, 4).try_into().expect("4 bytes");
        let dst: [u8; 4] = bytes(seed + 1, 4).try_into().expect("4 bytes");
        let len: u16 = 8 + u16::try_from(seed % 40).expect("below 40");
        let mut segment = bytes(seed + 2, usize::from(len));
        segment[4..6].copy_from_slice(&len.to_be_bytes());
        (src, dst, segment)
    }

    #[test]
    fn udp_update_matches_full_recomputation_and_maps_zero_to_ffff() {
        let (mut saw_ffff_before, mut saw_ffff) = (false, false);
        for seed in 0..300_000u64 {
            let (src, dst, mut segment) = udp_segment(seed);
            let check = full::ipv4_l4(src, dst, 17, &segment, 6);
            segment[6..8].copy_from_slice(&check.to_be_bytes());
            let new_dst: [u8; 4] = bytes(seed ^ 0x5555, 4).try_into().expect("4 bytes");
            let updated = replace_udp_u32(check, u32::from_be_bytes(dst), u32::from_be_bytes(new_dst));
            let expected = full::ipv4_l4(src, new_dst, 17, &segment, 6);
            assert_eq!(updated, expected, "seed {seed}: UDP checksum after {dst:?} -> {new_dst:?}");
            saw_ffff |= expected == 0xffff;
            saw_ffff_before |= check == 0xffff;
        }
        assert!(saw_ffff, "no case produced a computed zero (sent as 0xffff); widen the search");
        assert!(saw_ffff_before, "no case started from a checksum of 0xffff; widen the search");
    }

    #[test]
    fn zero_udp_checksum_stays_zero() {
        assert_eq!(replace_udp_u32(0, 0x0a00_0001, 0xc000_0201), 0);
        assert_eq!(replace_udp_u32(0, 0, 0xffff_ffff), 0);
    }

    #[test]
    fn tcp_update_matches_full_recomputation() {
        for seed in 0..100_000u64 {
            let src: [u8; 4] = bytes(seed, 4).try_into().expect("4 bytes");
            let dst: [u8; 4] = bytes(seed + 7, 4).try_into().expect("4 bytes");
            let mut segment = bytes(seed + 3, 20 + usize::try_from(seed % 64).expect("below 64"));
            let check = full::ipv4_l4(src, dst, 6, &segment, 16);
            segment[16..18].copy_from_slice(&check.to_be_bytes());
            let new_src: [u8; 4] = bytes(seed ^ 0xaaaa, 4).try_into().expect("4 bytes");
            let new_port =
                seed.to_le_bytes()[0..2].iter().fold(0u16, |port, byte| port.wrapping_mul(31) ^ u16::from(*byte));
            let old_port = u16::from_be_bytes([segment[0], segment[1]]);
            let mut updated = replace_u32(check, u32::from_be_bytes(src), u32::from_be_bytes(new_src));
            updated = replace_u16(updated, old_port, new_port);
            segment[0..2].copy_from_slice(&new_port.to_be_bytes());
            assert_eq!(updated, full::ipv4_l4(new_src, dst, 6, &segment, 16), "seed {seed}");
        }
    }

    #[test]
    fn ipv6_address_update_matches_full_recomputation() {
        let (mut saw_udp_ffff, mut saw_zero) = (false, false);
        for seed in 0..200_000u64 {
            let src: [u8; 16] = bytes(seed, 16).try_into().expect("16 bytes");
            let dst: [u8; 16] = bytes(seed + 5, 16).try_into().expect("16 bytes");
            let new_dst: [u8; 16] = bytes(seed ^ 0x7777, 16).try_into().expect("16 bytes");
            let udp = seed % 2 == 0;
            let (protocol, check_offset) = if udp { (17, 6) } else { (6, 16) };
            let mut segment = bytes(seed + 9, 20 + usize::try_from(seed % 50).expect("below 50"));
            let check = full::ipv6_l4(src, dst, protocol, &segment, check_offset);
            segment[check_offset..check_offset + 2].copy_from_slice(&check.to_be_bytes());
            let updated =
                if udp { replace_udp_bytes16(check, &dst, &new_dst) } else { replace_bytes16(check, &dst, &new_dst) };
            let expected = full::ipv6_l4(src, new_dst, protocol, &segment, check_offset);
            assert_eq!(
                updated,
                expected,
                "seed {seed}: {} checksum after an IPv6 address change",
                if udp { "UDP" } else { "TCP" }
            );
            saw_udp_ffff |= udp && expected == 0xffff;
            saw_zero |= !udp && expected == 0;
        }
        assert!(saw_udp_ffff && saw_zero, "edge cases not reached (UDP 0xffff: {saw_udp_ffff}, TCP 0: {saw_zero})");
        assert_eq!(replace_udp_bytes16(0, &[1; 16], &[2; 16]), 0, "a zero UDP checksum stays zero");
    }
}

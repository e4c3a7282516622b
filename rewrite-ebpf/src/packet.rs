//! Two ways to reach a packet's bytes, behind one trait so that parsing and the
//! rewrite are written once.
//!
//! * XDP sees a flat buffer and must patch checksums itself (RFC 1624 arithmetic from
//!   `rewrite_common::checksum`). That is only correct for packets whose checksums are
//!   complete, which is why XDP is used on wire devices only.
//! * TC uses the kernel's `bpf_l4_csum_replace`, which also knows the skb's checksum
//!   state (CHECKSUM_PARTIAL from a local socket or a veth peer, CHECKSUM_COMPLETE from
//!   a NIC) and keeps it consistent. The IPv4 header checksum, which no offload
//!   concerns, is computed as XDP does and stored with the address it covers.

use aya_ebpf::{
    bindings::{BPF_F_INVALIDATE_HASH, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use rewrite_common::{checksum, maps::Addr};

use crate::parsed::IpPacket;

pub trait Packet {
    /// Length of the whole packet in bytes.
    fn len(&self) -> usize;

    /// The index of the interface the program runs on (for `trace`).
    #[allow(dead_code, reason = "the rewrite object uses it; the bounce object does not")]
    fn ifindex(&self) -> u32;

    /// Reads a `T` (a plain byte-array header) at `offset`, or `None` if the packet is
    /// shorter than `offset + size_of::<T>()`.
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;

    /// Reads the address at `offset` into the maps' form: 16 bytes for IPv6, 4 for
    /// IPv4 (made IPv4-mapped), or `None` if the packet is too short.
    fn read_addr(&self, offset: usize, ipv6: bool) -> Option<Addr>;

    /// Replaces the address at `offset` (a field of `parsed`) by `new`: its last 4
    /// bytes for IPv4, all 16 for IPv6. Updates the checksums `parsed` names: the IPv4
    /// header checksum, the transport checksum (through the pseudo-header), and, for a
    /// packet quoted in an ICMP error, the error's checksum, which covers the changed
    /// bytes as plain data.
    fn replace_address(&mut self, parsed: &IpPacket, offset: u16, old: &Addr, new: &Addr) -> Result<(), ()>;

    /// Replaces the TCP or UDP port at `offset` by `new` and updates the transport
    /// checksum (the port is in the covered data, not in the pseudo-header) and the
    /// ICMP error's checksum as above.
    fn replace_port(&mut self, parsed: &IpPacket, offset: u16, old: [u8; 2], new: [u8; 2]) -> Result<(), ()>;
}

/// No header the programs touch lies further into a frame than this.
const MAX_DIRECT_OFFSET: usize = 2048;
/// A mask that keeps every offset up to `MAX_DIRECT_OFFSET`.
const DIRECT_OFFSET_MASK: usize = 4095;
const _: () = assert!(MAX_DIRECT_OFFSET <= DIRECT_OFFSET_MASK);

/// `offset & DIRECT_OFFSET_MASK`, through an instruction the compiler cannot see into.
/// The verifier must know an offset's bounds where it is added to the packet pointer.
/// A comparison alone is not enough: the compiler keeps the checked value and the value
/// it adds in different registers, or reloads one from the stack, and older verifiers
/// (6.1 and before) do not carry the comparison's bounds over to the copy. The result
/// of this AND is bounded in whatever register or stack slot it travels.
#[inline(always)]
fn bounded(mut offset: usize) -> usize {
    // SAFETY: one ALU instruction on a register; no memory, no stack, no side effect.
    unsafe { core::arch::asm!("{0} &= 4095", inout(reg) offset, options(pure, nomem, nostack)) };
    offset
}

/// A pointer to `size_of::<T>()` bytes at `offset` of the packet data `start..end`
/// (XDP's buffer, or an skb's linear part), bounds-checked in the form the verifier
/// tracks (packet pointer plus bounded offset compared to data_end).
#[inline(always)]
fn checked_pointer<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    if offset > MAX_DIRECT_OFFSET {
        return None;
    }
    let offset = bounded(offset);
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Loads the 32-bit word at `pointer` as it lies in memory, with one BPF load. The
/// compiler splits a load it cannot prove aligned into four byte loads and shifts; the
/// kernel allows unaligned packet loads on the architectures this runs on (x86-64 and
/// arm64 have efficient unaligned access), and the verifier checks the bounds.
///
/// # Safety
/// `pointer..pointer + 4` must lie inside the packet, bounds-checked against data_end.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "a 32-bit load zero-extends into the register")]
unsafe fn load_word(pointer: *const u8) -> u32 {
    let value: u64;
    // SAFETY: one load from memory the caller has bounds-checked; no stack, no flags.
    unsafe {
        core::arch::asm!(
            "{0} = *(u32 *)({1} + 0)",
            lateout(reg) value,
            in(reg) pointer,
            options(pure, readonly, nostack, preserves_flags)
        );
    }
    value as u32
}

/// The address at `start + offset` of packet data `start..end` (see [`Packet::read_addr`]),
/// read a word at a time.
#[inline(always)]
fn direct_addr(start: usize, end: usize, offset: usize, ipv6: bool) -> Option<Addr> {
    if ipv6 {
        let pointer = checked_pointer::<[u8; 16]>(start, end, offset)?.cast::<u8>();
        // SAFETY: 16 bytes at `pointer` are inside the packet (checked above).
        return Some(unsafe {
            Addr::from_words([
                load_word(pointer),
                load_word(pointer.add(4)),
                load_word(pointer.add(8)),
                load_word(pointer.add(12)),
            ])
        });
    }
    let pointer = checked_pointer::<[u8; 4]>(start, end, offset)?.cast::<u8>();
    // SAFETY: 4 bytes at `pointer` are inside the packet (checked above).
    let word = unsafe { load_word(pointer) };
    Some(Addr::from_v4(word.to_ne_bytes()))
}

pub struct XdpPacket<'a> {
    ctx: &'a XdpContext,
}

impl<'a> XdpPacket<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        Self { ctx }
    }

    /// A pointer to `size_of::<T>()` bytes at `offset`, bounds-checked in the form the
    /// verifier tracks (packet pointer plus bounded offset compared to data_end).
    #[inline(always)]
    fn pointer<T>(&self, offset: usize) -> Option<*mut T> {
        checked_pointer(self.ctx.data(), self.ctx.data_end(), offset)
    }

    /// The program's context, for the helpers that are not about the packet's bytes
    /// (route lookup, redirect).
    #[allow(dead_code, reason = "the bounce object uses it; the rewrite object does not")]
    #[inline(always)]
    pub fn context(&self) -> &XdpContext {
        self.ctx
    }

    /// Writes a `T` (a plain byte array) at `offset`, if the packet is long enough.
    #[inline(always)]
    pub fn write<T: Copy>(&mut self, offset: usize, value: T) -> Result<(), ()> {
        let pointer = self.pointer::<T>(offset).ok_or(())?;
        // SAFETY: `pointer` was bounds-checked against data_end; the packet buffer is
        // writable in XDP and T is a byte array, so alignment does not matter.
        unsafe { pointer.write_unaligned(value) };
        Ok(())
    }

    /// The big-endian 16-bit field at `offset` (a checksum), as a pointer to it.
    #[inline(always)]
    fn field_u16(&self, offset: u16) -> Result<*mut [u8; 2], ()> {
        self.pointer::<[u8; 2]>(usize::from(offset)).ok_or(())
    }
}

/// Reads and writes a big-endian 16-bit field through a checked pointer.
///
/// # Safety
/// `field` must come from [`XdpPacket::pointer`].
#[inline(always)]
unsafe fn update_field(field: *mut [u8; 2], update: impl FnOnce(u16) -> u16) {
    // SAFETY: as the caller guarantees: inside the packet, writable, byte-aligned.
    unsafe {
        let old = u16::from_be_bytes(field.read_unaligned());
        field.write_unaligned(update(old).to_be_bytes());
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.data_end() - self.ctx.data()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the program's context, valid for its run.
        unsafe { (*self.ctx.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let pointer = self.pointer::<T>(offset)?;
        // SAFETY: bounds-checked above; T is a byte array, so any bits are valid.
        Some(unsafe { pointer.read_unaligned() })
    }

    #[inline(always)]
    fn read_addr(&self, offset: usize, ipv6: bool) -> Option<Addr> {
        direct_addr(self.ctx.data(), self.ctx.data_end(), offset, ipv6)
    }

    #[inline(always)]
    fn replace_address(&mut self, parsed: &IpPacket, offset: u16, old: &Addr, new: &Addr) -> Result<(), ()> {
        // XDP leaves ICMP errors to the TC program beside it (see `rewrite`), so it
        // never rewrites a quoted packet.
        if parsed.icmp_check != 0 {
            return Err(());
        }
        // Each field is updated in place, one after the other: holding all the new
        // values first would not fit the BPF stack. Parsing has bounds-checked every
        // field, so a failure here is a bug, counted as a helper error.
        let udp = parsed.l4_udp != 0;
        if parsed.is_ipv6() {
            if parsed.l4_check != 0 {
                let check = self.field_u16(parsed.l4_check)?;
                // SAFETY: from `pointer`.
                unsafe {
                    update_field(check, |sum| {
                        if udp {
                            checksum::replace_udp_bytes16(sum, &old.octets, &new.octets)
                        } else {
                            checksum::replace_bytes16(sum, &old.octets, &new.octets)
                        }
                    });
                }
            }
            return self.write(usize::from(offset), new.octets);
        }
        let (old_v4, new_v4) = (u32::from_be_bytes(old.v4()), u32::from_be_bytes(new.v4()));
        if parsed.l4_check != 0 {
            let check = self.field_u16(parsed.l4_check)?;
            // SAFETY: from `pointer`.
            unsafe {
                update_field(check, |sum| {
                    if udp {
                        checksum::replace_udp_u32(sum, old_v4, new_v4)
                    } else {
                        checksum::replace_u32(sum, old_v4, new_v4)
                    }
                });
            }
        }
        let header_check = self.field_u16(parsed.ipv4_check)?;
        // SAFETY: from `pointer`.
        unsafe { update_field(header_check, |sum| checksum::replace_u32(sum, old_v4, new_v4)) };
        self.write(usize::from(offset), new.v4())
    }

    #[inline(always)]
    fn replace_port(&mut self, parsed: &IpPacket, offset: u16, old: [u8; 2], new: [u8; 2]) -> Result<(), ()> {
        if parsed.icmp_check != 0 {
            return Err(());
        }
        let (old_port, new_port) = (u16::from_be_bytes(old), u16::from_be_bytes(new));
        if parsed.l4_check != 0 {
            let udp = parsed.l4_udp != 0;
            let check = self.field_u16(parsed.l4_check)?;
            // SAFETY: from `pointer`.
            unsafe {
                update_field(check, |sum| match checksum::replace_u16(sum, old_port, new_port) {
                    _ if udp && sum == 0 => 0,
                    0 if udp => 0xffff,
                    updated => updated,
                });
            }
        }
        self.write(usize::from(offset), new)
    }
}

pub struct TcPacket<'a> {
    ctx: &'a mut TcContext,
}

impl<'a> TcPacket<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a mut TcContext) -> Self {
        Self { ctx }
    }

    /// The program's context, for the helpers that are not about the packet's bytes
    /// (route lookup, redirect, tail calls).
    #[inline(always)]
    pub fn context(&mut self) -> &mut TcContext {
        self.ctx
    }

    /// The skb the program runs on, for fields aya does not wrap.
    #[allow(dead_code, reason = "the bounce object uses it; the rewrite object does not")]
    #[inline(always)]
    pub fn skb_pointer(&self) -> *const aya_ebpf::bindings::__sk_buff {
        self.ctx.skb.skb
    }

    /// Folds the change of one 32-bit word of the pseudo-header into the transport
    /// checksum at `parsed.l4_check`, if there is one, with the helper that also keeps
    /// CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs consistent.
    #[inline(always)]
    fn l4_word(&mut self, parsed: &IpPacket, old: [u8; 4], new: [u8; 4]) -> Result<(), ()> {
        if parsed.l4_check == 0 {
            return Ok(());
        }
        // The helpers take the old and new values as they sit in memory (__be32). The
        // low bits of the flags give the size of the changed field. MARK_MANGLED_0
        // leaves a zero (absent) UDP checksum alone and sends a computed zero as 0xffff.
        let (old_raw, new_raw) = (u64::from(u32::from_ne_bytes(old)), u64::from(u32::from_ne_bytes(new)));
        let udp = if parsed.l4_udp != 0 { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
        let flags = u64::from(BPF_F_PSEUDO_HDR) | 4 | udp;
        self.ctx.l4_csum_replace(usize::from(parsed.l4_check), old_raw, new_raw, flags).map_err(|_| ())
    }

    /// Writes the new IPv4 address at `offset` (the source or the destination) together
    /// with the header checksum, in one store: the checksum (at 10), the source (12) and
    /// the destination (16) lie side by side. The header checksum is a plain field on
    /// every skb (checksum offloads concern the transport checksum only), so the
    /// arithmetic XDP uses updates it, rather than a helper call of its own; and since
    /// the checksum cancels the address's change in the header's sum, a
    /// CHECKSUM_COMPLETE skb's sum stays right, as with `bpf_l3_csum_replace`.
    #[inline(always)]
    fn store_ipv4_address(&mut self, parsed: &IpPacket, offset: u16, old: &Addr, new: &Addr) -> Result<(), ()> {
        let check_at = usize::from(parsed.ipv4_check);
        let old_check: [u8; 2] = self.read(check_at).ok_or(())?;
        let check = checksum::replace_u32(
            u16::from_be_bytes(old_check),
            u32::from_be_bytes(old.v4()),
            u32::from_be_bytes(new.v4()),
        )
        .to_be_bytes();
        let new = new.v4();
        let store_flags = u64::from(BPF_F_INVALIDATE_HASH);
        if usize::from(offset) == check_at + IPV4_SRC_AFTER_CHECK {
            let bytes = [check[0], check[1], new[0], new[1], new[2], new[3]];
            return self.ctx.store(check_at, &bytes, store_flags).map_err(|_| ());
        }
        // The destination: the source between them is written back as it is now (the
        // source's own rewrite, if any, came first).
        let src: [u8; 4] = self.read(check_at + IPV4_SRC_AFTER_CHECK).ok_or(())?;
        let bytes = [check[0], check[1], src[0], src[1], src[2], src[3], new[0], new[1], new[2], new[3]];
        self.ctx.store(check_at, &bytes, store_flags).map_err(|_| ())
    }

    /// Folds a change of `SIZE` bytes (2 or 4) of plain covered data into the ICMP
    /// checksum over a quoted packet, if `parsed` is one.
    #[inline(always)]
    fn icmp_data(&mut self, parsed: &IpPacket, old: u64, new: u64, size: u64) -> Result<(), ()> {
        if parsed.icmp_check == 0 {
            return Ok(());
        }
        self.ctx.l4_csum_replace(usize::from(parsed.icmp_check), old, new, size).map_err(|_| ())
    }
}

/// Where an IPv4 header's source address lies after its checksum (checksum at 10,
/// source at 12, destination at 16).
const IPV4_SRC_AFTER_CHECK: usize = 2;

/// A 4-byte word of an address as the helpers take it (its bytes as they sit in memory).
#[inline(always)]
fn raw_word(word: [u8; 4]) -> u64 {
    u64::from(u32::from_ne_bytes(word))
}

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.len() as usize
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the program's context, valid for its run.
        unsafe { (*self.ctx.skb.skb).ifindex }
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        // Headers in the skb's linear part (nearly always all of them) are read in
        // place: a helper call per header was a third of a TC program's time. Those in
        // paged fragments are copied out by bpf_skb_load_bytes.
        if let Some(pointer) = checked_pointer::<T>(self.ctx.data(), self.ctx.data_end(), offset) {
            // SAFETY: inside the linear part, bounds-checked; T is a byte array.
            return Some(unsafe { pointer.read_unaligned() });
        }
        self.ctx.load::<T>(offset).ok()
    }

    #[inline(always)]
    fn read_addr(&self, offset: usize, ipv6: bool) -> Option<Addr> {
        if let Some(addr) = direct_addr(self.ctx.data(), self.ctx.data_end(), offset, ipv6) {
            return Some(addr);
        }
        if ipv6 {
            let words: [u32; 4] = self.ctx.load(offset).ok()?;
            return Some(Addr::from_words(words));
        }
        Some(Addr::from_v4(self.ctx.load(offset).ok()?))
    }

    #[inline(always)]
    fn replace_address(&mut self, parsed: &IpPacket, offset: u16, old: &Addr, new: &Addr) -> Result<(), ()> {
        // The skb's flow hash was computed from the old addresses; dropping it makes
        // RPS/XPS and anything else that steers by it see the rewritten flow.
        let store_flags = u64::from(BPF_F_INVALIDATE_HASH);
        if parsed.is_ipv6() {
            for word in 0..4 {
                let at = word * 4;
                let old_word = [old.octets[at], old.octets[at + 1], old.octets[at + 2], old.octets[at + 3]];
                let new_word = [new.octets[at], new.octets[at + 1], new.octets[at + 2], new.octets[at + 3]];
                self.l4_word(parsed, old_word, new_word)?;
                self.icmp_data(parsed, raw_word(old_word), raw_word(new_word), 4)?;
            }
            return self.ctx.store(usize::from(offset), &new.octets, store_flags).map_err(|_| ());
        }
        self.l4_word(parsed, old.v4(), new.v4())?;
        if parsed.icmp_check == 0 {
            return self.store_ipv4_address(parsed, offset, old, new);
        }
        // A quoted packet: its IPv4 header's checksum is part of the ICMP message, so
        // that checksum's change is folded into the error's checksum too.
        self.icmp_data(parsed, raw_word(old.v4()), raw_word(new.v4()), 4)?;
        let header_check = usize::from(parsed.ipv4_check);
        let before: [u8; 2] = self.read(header_check).ok_or(())?;
        self.ctx.l3_csum_replace(header_check, raw_word(old.v4()), raw_word(new.v4()), 4).map_err(|_| ())?;
        let after: [u8; 2] = self.read(header_check).ok_or(())?;
        let (from, to) = (u64::from(u16::from_ne_bytes(before)), u64::from(u16::from_ne_bytes(after)));
        self.icmp_data(parsed, from, to, 2)?;
        self.ctx.store(usize::from(offset), &new.v4(), store_flags).map_err(|_| ())
    }

    #[inline(always)]
    fn replace_port(&mut self, parsed: &IpPacket, offset: u16, old: [u8; 2], new: [u8; 2]) -> Result<(), ()> {
        let (old_raw, new_raw) = (u64::from(u16::from_ne_bytes(old)), u64::from(u16::from_ne_bytes(new)));
        // Size 2 and no pseudo-header flag: the port is ordinary covered data.
        if parsed.l4_check != 0 {
            let udp = if parsed.l4_udp != 0 { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
            self.ctx.l4_csum_replace(usize::from(parsed.l4_check), old_raw, new_raw, 2 | udp).map_err(|_| ())?;
        }
        self.icmp_data(parsed, old_raw, new_raw, 2)?;
        self.ctx.store(usize::from(offset), &new, u64::from(BPF_F_INVALIDATE_HASH)).map_err(|_| ())
    }
}

//! Two ways to reach a packet's bytes, behind one trait so that parsing and the
//! rewrite are written once.
//!
//! * XDP sees a flat buffer and must patch checksums itself (RFC 1624 arithmetic from
//!   `rewrite_common::checksum`). That is only correct for packets whose checksums are
//!   complete, which is why XDP is used on wire devices only.
//! * TC uses the kernel's `bpf_l3_csum_replace`/`bpf_l4_csum_replace`, which also know
//!   the skb's checksum state (CHECKSUM_PARTIAL from a local socket or a veth peer,
//!   CHECKSUM_COMPLETE from a NIC) and keep it consistent.

use aya_ebpf::{
    bindings::{BPF_F_INVALIDATE_HASH, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use rewrite_common::{checksum, maps::Addr};

/// Which transport checksum covers the addresses (through the pseudo-header).
#[derive(Clone, Copy)]
pub enum L4Checksum {
    /// ICMP over IPv4 (no pseudo-header), or a non-first fragment (no transport header).
    NotCovered,
    /// TCP or ICMPv6, with the checksum field at this offset from the packet's start.
    Covered(usize),
    /// UDP, likewise. Zero means "no checksum" and must stay zero.
    CoveredUdp(usize),
}

pub trait Packet {
    /// Length of the whole packet in bytes.
    fn len(&self) -> usize;

    /// Reads a `T` (a plain byte-array header) at `offset`, or `None` if the packet is
    /// shorter than `offset + size_of::<T>()`.
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;

    /// Replaces the address at `address_offset` by `new`: its last 4 bytes for IPv4
    /// (`ipv4_check` is the header checksum to update), all 16 for IPv6. Updates the
    /// transport checksum `l4` too, and, for a packet quoted in an ICMP error, the
    /// error's checksum `icmp_check`, which covers the changed bytes as plain data.
    fn replace_address(
        &mut self,
        address_offset: usize,
        ipv4_check: Option<usize>,
        l4: L4Checksum,
        icmp_check: Option<usize>,
        old: &Addr,
        new: &Addr,
    ) -> Result<(), ()>;

    /// Replaces the TCP or UDP port at `port_offset` by `new` and updates the transport
    /// checksum `l4` (the port is in the covered data, not in the pseudo-header) and
    /// `icmp_check` as above.
    fn replace_port(
        &mut self,
        port_offset: usize,
        l4: L4Checksum,
        icmp_check: Option<usize>,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), ()>;
}

/// No header the programs touch lies further into a frame than this.
const MAX_XDP_OFFSET: usize = 2048;

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
        // Offsets computed from headers may reach here through the stack, where the
        // verifier forgets their bounds; this comparison gives them back.
        if offset > MAX_XDP_OFFSET {
            return None;
        }
        let start = self.ctx.data();
        let end = self.ctx.data_end();
        if start + offset + core::mem::size_of::<T>() > end {
            return None;
        }
        Some((start + offset) as *mut T)
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

    #[inline(always)]
    fn read_u16(&self, offset: usize) -> Option<u16> {
        self.read::<[u8; 2]>(offset).map(u16::from_be_bytes)
    }

    /// Replaces the big-endian 16-bit field at `offset` (a checksum) by `update(old)`.
    #[inline(always)]
    fn update_u16(&mut self, offset: usize, update: impl Fn(u16) -> u16) -> Result<(), ()> {
        let old = self.read_u16(offset).ok_or(())?;
        self.write(offset, update(old).to_be_bytes())
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.data_end() - self.ctx.data()
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let pointer = self.pointer::<T>(offset)?;
        // SAFETY: bounds-checked above; T is a byte array, so any bits are valid.
        Some(unsafe { pointer.read_unaligned() })
    }

    #[inline(always)]
    fn replace_address(
        &mut self,
        address_offset: usize,
        ipv4_check: Option<usize>,
        l4: L4Checksum,
        icmp_check: Option<usize>,
        old: &Addr,
        new: &Addr,
    ) -> Result<(), ()> {
        // XDP leaves ICMP errors to the TC program beside it (see `rewrite`), so it
        // never rewrites a quoted packet.
        if icmp_check.is_some() {
            return Err(());
        }
        // Each field is updated in place, one after the other: holding all the new
        // values first would not fit the BPF stack. Parsing has bounds-checked every
        // field, so a failure here is a bug, counted as a helper error.
        let (old_v4, new_v4) = (u32::from_be_bytes(old.v4()), u32::from_be_bytes(new.v4()));
        match (l4, ipv4_check) {
            (L4Checksum::NotCovered, _) => {}
            (L4Checksum::Covered(offset), Some(_)) => {
                self.update_u16(offset, |check| checksum::replace_u32(check, old_v4, new_v4))?;
            }
            (L4Checksum::Covered(offset), None) => {
                self.update_u16(offset, |check| checksum::replace_bytes16(check, &old.octets, &new.octets))?;
            }
            (L4Checksum::CoveredUdp(offset), Some(_)) => {
                self.update_u16(offset, |check| checksum::replace_udp_u32(check, old_v4, new_v4))?;
            }
            (L4Checksum::CoveredUdp(offset), None) => {
                self.update_u16(offset, |check| checksum::replace_udp_bytes16(check, &old.octets, &new.octets))?;
            }
        }
        match ipv4_check {
            Some(offset) => {
                self.update_u16(offset, |check| checksum::replace_u32(check, old_v4, new_v4))?;
                self.write(address_offset, new.v4())
            }
            None => self.write(address_offset, new.octets),
        }
    }

    #[inline(always)]
    fn replace_port(
        &mut self,
        port_offset: usize,
        l4: L4Checksum,
        icmp_check: Option<usize>,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), ()> {
        if icmp_check.is_some() {
            return Err(());
        }
        let (old_port, new_port) = (u16::from_be_bytes(old), u16::from_be_bytes(new));
        let check_update = match l4 {
            L4Checksum::NotCovered => None,
            L4Checksum::Covered(offset) => {
                let check = self.read_u16(offset).ok_or(())?;
                Some((offset, checksum::replace_u16(check, old_port, new_port)))
            }
            L4Checksum::CoveredUdp(offset) => {
                let check = self.read_u16(offset).ok_or(())?;
                let updated = match checksum::replace_u16(check, old_port, new_port) {
                    _ if check == 0 => 0,
                    0 => 0xffff,
                    updated => updated,
                };
                Some((offset, updated))
            }
        };
        self.write(port_offset, new)?;
        if let Some((offset, check)) = check_update {
            self.write(offset, check.to_be_bytes())?;
        }
        Ok(())
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
    /// (route lookup, redirect).
    #[allow(dead_code, reason = "the bounce object uses it; the rewrite object does not")]
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
    /// checksum, with the helper that also keeps CHECKSUM_PARTIAL and
    /// CHECKSUM_COMPLETE skbs consistent.
    #[inline(always)]
    fn l4_word(&mut self, l4: L4Checksum, old: [u8; 4], new: [u8; 4]) -> Result<(), ()> {
        // The helpers take the old and new values as they sit in memory (__be32). The
        // low bits of the flags give the size of the changed field.
        let (old_raw, new_raw) = (u64::from(u32::from_ne_bytes(old)), u64::from(u32::from_ne_bytes(new)));
        let pseudo = u64::from(BPF_F_PSEUDO_HDR) | 4;
        match l4 {
            L4Checksum::NotCovered => Ok(()),
            L4Checksum::Covered(offset) => self.ctx.l4_csum_replace(offset, old_raw, new_raw, pseudo).map_err(|_| ()),
            // MARK_MANGLED_0 leaves a zero (absent) UDP checksum alone and sends a
            // computed zero as 0xffff.
            L4Checksum::CoveredUdp(offset) => self
                .ctx
                .l4_csum_replace(offset, old_raw, new_raw, pseudo | u64::from(BPF_F_MARK_MANGLED_0))
                .map_err(|_| ()),
        }
    }
}

impl TcPacket<'_> {
    /// Folds a change of 4 bytes of plain covered data into the checksum at `check`
    /// (the ICMP checksum over a quoted packet), if there is one.
    #[inline(always)]
    fn data_word(&mut self, check: Option<usize>, old: [u8; 4], new: [u8; 4]) -> Result<(), ()> {
        let Some(offset) = check else { return Ok(()) };
        let (old_raw, new_raw) = (u64::from(u32::from_ne_bytes(old)), u64::from(u32::from_ne_bytes(new)));
        self.ctx.l4_csum_replace(offset, old_raw, new_raw, 4).map_err(|_| ())
    }
}

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.len() as usize
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        // bpf_skb_load_bytes also reads headers that sit in paged fragments.
        self.ctx.load::<T>(offset).ok()
    }

    #[inline(always)]
    fn replace_address(
        &mut self,
        address_offset: usize,
        ipv4_check: Option<usize>,
        l4: L4Checksum,
        icmp_check: Option<usize>,
        old: &Addr,
        new: &Addr,
    ) -> Result<(), ()> {
        // The skb's flow hash was computed from the old addresses; dropping it makes
        // RPS/XPS and anything else that steers by it see the rewritten flow.
        let store_flags = u64::from(BPF_F_INVALIDATE_HASH);
        match ipv4_check {
            Some(check_offset) => {
                self.l4_word(l4, old.v4(), new.v4())?;
                self.data_word(icmp_check, old.v4(), new.v4())?;
                let (old_raw, new_raw) =
                    (u64::from(u32::from_ne_bytes(old.v4())), u64::from(u32::from_ne_bytes(new.v4())));
                let old_ip_check: [u8; 2] = self.read(check_offset).ok_or(())?;
                self.ctx.l3_csum_replace(check_offset, old_raw, new_raw, 4).map_err(|_| ())?;
                if let Some(icmp) = icmp_check {
                    // A quoted IPv4 header's checksum is part of the ICMP message.
                    let new_ip_check: [u8; 2] = self.read(check_offset).ok_or(())?;
                    let (from, to) =
                        (u64::from(u16::from_ne_bytes(old_ip_check)), u64::from(u16::from_ne_bytes(new_ip_check)));
                    self.ctx.l4_csum_replace(icmp, from, to, 2).map_err(|_| ())?;
                }
                self.ctx.store(address_offset, &new.v4(), store_flags).map_err(|_| ())
            }
            None => {
                for word in 0..4 {
                    let at = word * 4;
                    let old_word = [old.octets[at], old.octets[at + 1], old.octets[at + 2], old.octets[at + 3]];
                    let new_word = [new.octets[at], new.octets[at + 1], new.octets[at + 2], new.octets[at + 3]];
                    self.l4_word(l4, old_word, new_word)?;
                    self.data_word(icmp_check, old_word, new_word)?;
                }
                self.ctx.store(address_offset, &new.octets, store_flags).map_err(|_| ())
            }
        }
    }

    #[inline(always)]
    fn replace_port(
        &mut self,
        port_offset: usize,
        l4: L4Checksum,
        icmp_check: Option<usize>,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), ()> {
        let (old_raw, new_raw) = (u64::from(u16::from_ne_bytes(old)), u64::from(u16::from_ne_bytes(new)));
        // Size 2 and no pseudo-header flag: the port is ordinary covered data.
        match l4 {
            L4Checksum::NotCovered => {}
            L4Checksum::Covered(offset) => self.ctx.l4_csum_replace(offset, old_raw, new_raw, 2).map_err(|_| ())?,
            L4Checksum::CoveredUdp(offset) => self
                .ctx
                .l4_csum_replace(offset, old_raw, new_raw, 2 | u64::from(BPF_F_MARK_MANGLED_0))
                .map_err(|_| ())?,
        }
        if let Some(offset) = icmp_check {
            self.ctx.l4_csum_replace(offset, old_raw, new_raw, 2).map_err(|_| ())?;
        }
        self.ctx.store(port_offset, &new, u64::from(BPF_F_INVALIDATE_HASH)).map_err(|_| ())
    }
}

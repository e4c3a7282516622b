//! Bounce mode's datapath (see `rewrite_common::bounce` for the flow model): find the
//! packet's flow, or open one for a packet to a LISTEN endpoint; translate addresses
//! and ports; and forward the packet straight to the egress device the route lookup
//! names, past the host's own stack (which would see the translated source as one of
//! its own addresses and drop the packet as a martian).
//!
//! It runs at two hooks, written once over [`Forwarder`]:
//! * in XDP, tail-called by the rewrite program on devices attached with XDP: it
//!   forwards with `XDP_TX` or a redirect before any skb exists. It leaves to TC what
//!   it cannot do (a next hop whose MAC is not resolved yet), before touching any
//!   state, so the TC program behind it sees the packet as if XDP were not there;
//! * in TC, on every attached device: the checksum helpers keep partial checksums
//!   (veth, local senders) right, and `bpf_redirect_neigh` resolves next hops.
//!
//! Anything that is not a bounced flow passes unchanged and uncounted. A packet to a
//! LISTEN endpoint that cannot be bounced (no free port, no route) passes unchanged
//! too, and is counted: the host then answers it as it would without rewrite (a TCP
//! RST when nothing listens), so the client sees the failure at once.
//!
//! Why one file of about 640 lines: it is one state machine (a flow's opening, its
//! translation both ways, its forwarding and its end) written once over the two hooks'
//! [`Forwarder`]s; its parts mean nothing apart, and its flow model and tested rules
//! live in `rewrite_common::bounce`.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values live in the per-CPU scratch area; passed by value they would be copied onto the \
              512-byte stack"
)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh},
};
use rewrite_common::{
    bounce::{
        BOUNCE_CLOSED_EVICTED, BOUNCE_CLOSED_FIN, BOUNCE_CLOSED_IDLE, BOUNCE_CLOSED_RST, BOUNCE_CONNECTS,
        BOUNCE_ERRORS, BOUNCE_EVENTS_LOST, BOUNCE_FORWARDED, BOUNCE_NO_FLOW, BOUNCE_PORT_EXHAUSTED, BOUNCE_RST_IGNORED,
        BOUNCE_TTL_EXPIRED, BOUNCE_UNROUTABLE, BounceEvent, BounceSettings, EVENT_CONNECT, EVENT_DISCONNECT, FIN_SENT,
        FROM_CLIENT, FROM_TARGET, FlowEntry, FlowTuple, PORT_PROBES, REASON_EVICTED, REASON_IDLE, REASON_NONE,
        REASON_RST, TCP_RST, TcpStep, advances, candidate_port, is_idle, opens_flow, rst_acceptable, sequence_after,
        tcp_step,
    },
    checksum::replace_u16,
    maps::{Addr, Endpoint, IPPROTO_TCP},
};

use crate::{
    atomic::atomic_add,
    bounce_maps::{BounceScratch, EVENTS, FLOWS, SERVICES, SETTINGS, count, log_reader_present, parsed, scratch},
    packet::{Packet, TcPacket, XdpPacket},
    parse::{DST_PORT_AFTER_SRC, parse},
    parsed::IpPacket,
};

/// Where the data offset and the flags sit in the TCP header, and how much of it the
/// bouncer reads (ports, sequence and acknowledgement numbers, offset, flags).
const TCP_DATA_OFFSET: usize = 12;
const TCP_FLAGS: usize = 13;
const TCP_HEADER_READ: usize = 16;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The route lookup's parameter block, 64 bytes.
#[expect(clippy::cast_possible_truncation, reason = "64 fits an i32 (asserted below)")]
const FIB_PARAMS_LEN: i32 = core::mem::size_of::<bpf_fib_lookup>() as i32;
const _: () = assert!(core::mem::size_of::<bpf_fib_lookup>() == 64);
const FIB_PARAMS_WORDS: usize = 64 / 4;
const _: () = assert!(core::mem::align_of::<bpf_fib_lookup>() >= 4);

/// What becomes of a packet.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// On to the next program or the stack, as it is.
    Pass,
    /// Dropped: it may be half translated, and would arrive as garbage.
    Drop,
    /// Sent on by the hook's own means: the action the redirect helper returned, or
    /// `XDP_TX`.
    Sent(u32),
}

/// What bounce needs of a hook beyond the packet's bytes.
pub trait Forwarder: Packet {
    /// Whether the hook can send to a next hop whose MAC address is not known yet.
    const RESOLVES_NEIGHBOURS: bool;

    /// The index of the device the packet arrived on.
    fn arrival_ifindex(&self) -> u32;

    /// `bpf_fib_lookup` from this hook's context.
    fn lookup_route(&mut self, params: &mut bpf_fib_lookup) -> i64;

    /// Sends the translated packet out through `route`.
    fn send(&mut self, route: Route) -> Result<Verdict, ()>;

    /// Whether the packet's TTL (IPv4) or hop limit (IPv6) lets it be forwarded: a
    /// packet with 1 left dies here, and is left to the host's stack.
    fn hop_limit_left(&self, parsed: &IpPacket) -> Result<bool, ()> {
        let word: [u8; 2] = self.read(usize::from(hop_limit_offset(parsed))).ok_or(())?;
        Ok(word[0] > 1)
    }

    /// Takes one from the TTL (updating the IPv4 header checksum) or the hop limit, as
    /// every router on the path does.
    fn step_hop_limit(&mut self, parsed: &IpPacket) -> Result<(), ()>;
}

/// Where the TTL (IPv4, the byte before the protocol, which the header checksum covers
/// as one 16-bit word with it) or the hop limit (IPv6, the byte before the source
/// address) sits.
#[inline(always)]
fn hop_limit_offset(parsed: &IpPacket) -> u16 {
    if parsed.is_ipv6() { parsed.src_offset - 1 } else { parsed.ipv4_check - 2 }
}

/// The 16-bit word at the hop limit, with one taken from it.
#[inline(always)]
fn stepped(word: [u8; 2]) -> [u8; 2] {
    [word[0].wrapping_sub(1), word[1]]
}

impl Forwarder for TcPacket<'_> {
    const RESOLVES_NEIGHBOURS: bool = true;

    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        // SAFETY: reading the ingress device index of the skb the program runs on.
        unsafe { (*self.skb_pointer()).ifindex }
    }

    #[inline(always)]
    fn lookup_route(&mut self, params: &mut bpf_fib_lookup) -> i64 {
        // SAFETY: the helper reads and writes `params`, whose size it is given.
        unsafe { fib_lookup(self.context().as_ptr(), params, FIB_PARAMS_LEN, 0) }
    }

    #[inline(always)]
    fn send(&mut self, route: Route) -> Result<Verdict, ()> {
        let action = match route.macs {
            Some(macs) => {
                self.context().store(0, &macs, 0).map_err(|_| ())?;
                // SAFETY: a helper call with a plain device index.
                unsafe { bpf_redirect(route.ifindex, 0) }
            }
            // SAFETY: a null neighbour asks the kernel to resolve the packet's own
            // destination on that device.
            None => unsafe { bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0) },
        };
        // TC_ACT_REDIRECT, or TC_ACT_SHOT for a bad device index.
        Ok(Verdict::Sent(u32::try_from(action).unwrap_or(TC_ACT_SHOT)))
    }

    #[inline(always)]
    fn step_hop_limit(&mut self, parsed: &IpPacket) -> Result<(), ()> {
        let offset = usize::from(hop_limit_offset(parsed));
        let old: [u8; 2] = self.read(offset).ok_or(())?;
        let new = stepped(old);
        if !parsed.is_ipv6() {
            let (from, to) = (u64::from(u16::from_ne_bytes(old)), u64::from(u16::from_ne_bytes(new)));
            self.context().l3_csum_replace(usize::from(parsed.ipv4_check), from, to, 2).map_err(|_| ())?;
        }
        self.context().store(offset, &new, 0).map_err(|_| ())
    }
}

impl Forwarder for XdpPacket<'_> {
    const RESOLVES_NEIGHBOURS: bool = false;

    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        // The kernel's field is a u32; aya widens it.
        u32::try_from(self.context().ingress_ifindex()).unwrap_or(0)
    }

    #[inline(always)]
    fn lookup_route(&mut self, params: &mut bpf_fib_lookup) -> i64 {
        // SAFETY: as for TC.
        unsafe { fib_lookup(self.context().as_ptr(), params, FIB_PARAMS_LEN, 0) }
    }

    #[inline(always)]
    fn send(&mut self, route: Route) -> Result<Verdict, ()> {
        // Never `None` here: without neighbour resolution the route lookup defers.
        let macs = route.macs.ok_or(())?;
        self.write(0, macs)?;
        if route.ifindex == self.arrival_ifindex() {
            return Ok(Verdict::Sent(xdp_action::XDP_TX));
        }
        // SAFETY: a helper call with a plain device index.
        let action = unsafe { bpf_redirect(route.ifindex, 0) };
        // XDP_REDIRECT, or XDP_ABORTED for a bad device index.
        Ok(Verdict::Sent(u32::try_from(action).unwrap_or(xdp_action::XDP_ABORTED)))
    }

    #[inline(always)]
    fn step_hop_limit(&mut self, parsed: &IpPacket) -> Result<(), ()> {
        let offset = usize::from(hop_limit_offset(parsed));
        let old: [u8; 2] = self.read(offset).ok_or(())?;
        let new = stepped(old);
        if !parsed.is_ipv6() {
            let check_offset = usize::from(parsed.ipv4_check);
            let check: [u8; 2] = self.read(check_offset).ok_or(())?;
            let updated = replace_u16(u16::from_be_bytes(check), u16::from_be_bytes(old), u16::from_be_bytes(new));
            self.write(check_offset, updated.to_be_bytes())?;
        }
        self.write(offset, new)
    }
}

/// The TC action for a dropped packet (2), as the redirect helpers return it.
const TC_ACT_SHOT: u32 = aya_ebpf::bindings::TC_ACT_SHOT as u32;

/// Bounces the packet if it belongs to a flow or opens one.
#[inline(always)]
pub fn bounce<P: Forwarder>(packet: &mut P) -> Result<Verdict, ()> {
    let settings = match SETTINGS.get(0) {
        Some(settings) if settings.enabled != 0 => *settings,
        _ => return Ok(Verdict::Pass),
    };
    let work = scratch().ok_or(())?;
    // The parsed headers live in the per-CPU area, as in the rewrite programs.
    let parsed = parsed().ok_or(())?;
    if parse(packet, parsed).is_err() {
        return Ok(Verdict::Pass);
    }
    let parsed: &IpPacket = parsed;
    // Bounced flows are TCP and UDP; ICMP and fragments after the first carry no ports
    // and pass (ICMP errors about a bounced flow are not translated).
    if !parsed.has_ports() {
        return Ok(Verdict::Pass);
    }
    // Field by field, in place: a whole struct built on the stack first costs a copy
    // and a call to memset for the padding bytes, on every packet.
    let key = &mut work.key;
    key.src = parsed.src;
    key.dst = parsed.dst;
    key.src_port = parsed.src_port;
    key.dst_port = parsed.dst_port;
    key.protocol = parsed.protocol;
    key.reserved[0] = 0;
    key.reserved[1] = 0;
    key.reserved[2] = 0;
    let segment = &mut work.segment;
    if parsed.protocol == IPPROTO_TCP {
        let l4 = usize::from(parsed.ports_offset);
        let header = packet.read::<[u8; TCP_HEADER_READ]>(l4).ok_or(())?;
        segment.flags = header[TCP_FLAGS];
        segment.seq = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        segment.ack = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let header_len = usize::from(header[TCP_DATA_OFFSET] >> 4) * 4;
        let payload_len = usize::from(parsed.datagram_end).saturating_sub(l4 + header_len);
        segment.payload_len = u32::try_from(payload_len).unwrap_or(u32::MAX);
    } else {
        segment.flags = 0;
        segment.seq = 0;
        segment.ack = 0;
        segment.payload_len = 0;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    // A flow that ends here (an evicted half, or idle) gives way: a packet that may
    // open a new one goes on to do so.
    if let Some(entry) = FLOWS.get_ptr_mut(&work.key)
        && let Some(step) = existing_flow(work, entry, now, &settings)
    {
        return forward(packet, parsed, work, entry, step, now);
    }
    open_flow(packet, parsed, work, now)
}

/// Checks the flow of `entry` (found for `work.key`): its partner must still be there,
/// must be this entry's partner (not another flow's half that took over its port), and
/// the flow must not be idle. Returns what the packet does to a TCP flow, or `None` when
/// the flow is gone (its remains removed and reported).
#[inline(always)]
fn existing_flow(
    work: &mut BounceScratch,
    entry: *mut FlowEntry,
    now: u64,
    settings: &BounceSettings,
) -> Option<TcpStep> {
    // SAFETY: a live map value, valid for the program's run.
    let this = unsafe { &mut *entry };
    work.partner = this.out.reversed();
    let partner = FLOWS.get_ptr_mut(&work.partner);
    // SAFETY: as above.
    let paired = partner.is_some_and(|partner| unsafe { (*partner).out.reversed() } == work.key);
    let Some(partner) = partner.filter(|_| paired) else {
        // The other half was evicted from a full table, and maybe its port given to a
        // new flow: this half is useless, and would translate to a port another flow
        // may hold by now. Only this half goes; a new flow's entry stays.
        work.entries[0] = *this;
        let _ = FLOWS.remove(&work.key);
        count(BOUNCE_CLOSED_EVICTED);
        report(EVENT_DISCONNECT, REASON_EVICTED, &work.key, &work.entries[0], None);
        return None;
    };
    // SAFETY: as above.
    let other = unsafe { &mut *partner };
    let tcp = work.key.protocol == IPPROTO_TCP;
    let target_answered = if this.side == FROM_TARGET { this.packets } else { other.packets } > 0;
    let timeout_ns = settings.timeout_ns(tcp, target_answered);
    if is_idle(this.last_seen_ns, now, timeout_ns) && is_idle(other.last_seen_ns, now, timeout_ns) {
        close(work, this, other, REASON_IDLE);
        count(BOUNCE_CLOSED_IDLE);
        return None;
    }
    if !tcp {
        return Some(TcpStep::Keep);
    }
    let segment = &work.segment;
    if segment.flags & TCP_RST != 0 && !rst_acceptable(segment.flags, segment.seq, segment.ack, this, other) {
        return Some(TcpStep::Reject);
    }
    Some(tcp_step(segment.flags, this.fin, other.fin))
}

/// Opens a flow for a packet to a LISTEN endpoint, then forwards the packet on it.
#[inline(always)]
fn open_flow<P: Forwarder>(
    packet: &mut P,
    parsed: &IpPacket,
    work: &mut BounceScratch,
    now: u64,
) -> Result<Verdict, ()> {
    work.service_key = Endpoint::new(work.key.dst, work.key.dst_port, work.key.protocol);
    let Some(service) = SERVICES.get_ptr(&work.service_key) else { return Ok(Verdict::Pass) };
    // SAFETY: a live map value, copied at once (userspace may change it meanwhile).
    work.service = unsafe { *service };
    if work.key.protocol == IPPROTO_TCP && !opens_flow(work.segment.flags) {
        count(BOUNCE_NO_FLOW);
        return Ok(Verdict::Pass);
    }
    // A packet that would die here opens nothing: the host's stack has it.
    if !packet.hop_limit_left(parsed)? {
        count(BOUNCE_TTL_EXPIRED);
        return Ok(Verdict::Pass);
    }
    // Route first: a flow the bouncer cannot forward is not opened.
    let target_addr = work.service.target.addr;
    let Some(target_dev) = forwarding_route(packet, work, &target_addr, parsed) else { return Ok(Verdict::Pass) };
    // SAFETY: a helper without arguments. A random start spreads flows over the range,
    // so a new flow rarely probes far.
    let start = unsafe { bpf_get_prandom_u32() };
    for probe in 0..PORT_PROBES {
        let port = candidate_port(work.service.port_first, work.service.port_last, start, probe);
        let flow = &mut work.new_flow;
        flow.fill(&work.key, &work.service, port, now);
        // The target's half first, with NOEXIST: it is the one that claims the port.
        if FLOWS.insert(&flow.target_key, &flow.from_target, u64::from(BPF_NOEXIST)).is_err()
            && !take_over_idle(work, now)
        {
            continue;
        }
        work.partner = work.new_flow.target_key;
        if FLOWS.insert(&work.key, &work.new_flow.from_client, 0).is_err() {
            let _ = FLOWS.remove(&work.partner);
            count(BOUNCE_ERRORS);
            return Ok(Verdict::Pass);
        }
        count(BOUNCE_CONNECTS);
        report(EVENT_CONNECT, REASON_NONE, &work.key, &work.new_flow.from_client, None);
        let Some(entry) = FLOWS.get_ptr_mut(&work.key) else {
            count(BOUNCE_ERRORS);
            return Ok(Verdict::Pass);
        };
        return translate_and_redirect(packet, parsed, work, entry, target_dev, now);
    }
    count(BOUNCE_PORT_EXHAUSTED);
    Ok(Verdict::Pass)
}

/// When the port the new flow's target half claims is held by an entry idle past its
/// timeout (the short one when the target never answered it), replaces it, and removes
/// its partner if that still is its partner. Returns whether the port is now claimed.
#[inline(always)]
fn take_over_idle(work: &mut BounceScratch, now: u64) -> bool {
    let Some(settings) = SETTINGS.get(0) else { return false };
    let flow = &work.new_flow;
    let tcp = flow.target_key.protocol == IPPROTO_TCP;
    let Some(held) = FLOWS.get_ptr(&flow.target_key) else { return false };
    // SAFETY: a live map value, valid for the program's run.
    let held = unsafe { &*held };
    // The held entry is a target's half: its packets are the target's answers.
    let timeout_ns = settings.timeout_ns(tcp, held.packets > 0);
    if !is_idle(held.last_seen_ns, now, timeout_ns) {
        return false;
    }
    work.partner = held.out.reversed();
    if let Some(partner) = FLOWS.get_ptr(&work.partner) {
        // SAFETY: as above.
        let partner = unsafe { &*partner };
        if partner.out.reversed() == flow.target_key {
            if !is_idle(partner.last_seen_ns, now, timeout_ns) {
                return false;
            }
            let _ = FLOWS.remove(&work.partner);
        }
    }
    count(BOUNCE_CLOSED_IDLE);
    FLOWS.insert(&flow.target_key, &flow.from_target, 0).is_ok()
}

/// Forwards a packet of an existing flow and applies `step` to the flow.
#[inline(always)]
fn forward<P: Forwarder>(
    packet: &mut P,
    parsed: &IpPacket,
    work: &mut BounceScratch,
    entry: *mut FlowEntry,
    step: TcpStep,
    now: u64,
) -> Result<Verdict, ()> {
    if step == TcpStep::Reject {
        // A reset that does not belong to the flow: dropped, the flow stays.
        count(BOUNCE_RST_IGNORED);
        return Ok(Verdict::Drop);
    }
    if !packet.hop_limit_left(parsed)? {
        count(BOUNCE_TTL_EXPIRED);
        return Ok(Verdict::Pass);
    }
    // SAFETY: a live map value, valid for the program's run.
    let out_dst = unsafe { (*entry).out.dst };
    let Some(dev) = forwarding_route(packet, work, &out_dst, parsed) else { return Ok(Verdict::Pass) };
    let action = translate_and_redirect(packet, parsed, work, entry, dev, now)?;
    match step {
        TcpStep::Keep | TcpStep::Reject => {}
        // SAFETY: as above; a one-byte store the other CPU can only repeat.
        TcpStep::MarkFin => unsafe { (*entry).fin |= FIN_SENT },
        TcpStep::Close(reason) => {
            if let Some(partner) = FLOWS.get_ptr_mut(&work.partner) {
                // SAFETY: both are live map values, valid for the program's run.
                close(work, unsafe { &mut *entry }, unsafe { &mut *partner }, reason);
                count(if reason == REASON_RST { BOUNCE_CLOSED_RST } else { BOUNCE_CLOSED_FIN });
            }
        }
    }
    Ok(action)
}

/// Removes both entries of a flow (`work.key`'s, whose entry is `this`, and
/// `work.partner`'s) and reports the disconnect.
#[inline(always)]
fn close(work: &mut BounceScratch, this: &FlowEntry, other: &FlowEntry, reason: u32) {
    work.entries[0] = *this;
    work.entries[1] = *other;
    let _ = FLOWS.remove(&work.key);
    let _ = FLOWS.remove(&work.partner);
    report(EVENT_DISCONNECT, reason, &work.key, &work.entries[0], Some(&work.entries[1]));
}

/// Sends an event about the flow whose entry `this` was found under `key` (`other` is
/// its partner, unless it was lost) while a `bounce log` reader is present, or counts
/// it as lost when the ring buffer is full.
/// Written field by field into the ring's memory: a whole event does not fit the stack.
#[inline(always)]
fn report(kind: u32, reason: u32, key: &FlowTuple, this: &FlowEntry, other: Option<&FlowEntry>) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !log_reader_present(now) {
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<BounceEvent>(0) else {
        count(BOUNCE_EVENTS_LOST);
        return;
    };
    let event = slot.as_mut_ptr();
    // SAFETY: `event` points to the reserved slot, which is ours until submitted; every
    // field is written before the submit.
    unsafe {
        (*event).time_ns = now;
        (*event).kind = kind;
        (*event).reason = reason;
        (*event).duration_ns = now.saturating_sub(this.created_ns);
        // The client's half is found under client -> LISTEN and sends SOURCE -> TARGET;
        // the target's half is found under TARGET -> SOURCE and sends LISTEN -> client.
        let (client_side, target_side) = if this.side == FROM_CLIENT { (0, 1) } else { (1, 0) };
        if this.side == FROM_CLIENT {
            (*event).client = *key;
            (*event).target = this.out;
        } else {
            (*event).client = this.out.reversed();
            (*event).target = key.reversed();
        }
        (*event).packets[client_side] = this.packets;
        (*event).bytes[client_side] = this.bytes;
        (*event).packets[target_side] = other.map_or(0, |entry| entry.packets);
        (*event).bytes[target_side] = other.map_or(0, |entry| entry.bytes);
    }
    slot.submit(0);
}

/// Looks the route to `dst` up from the packet's ingress device, with the MAC
/// addresses (in `work.fib`) when they are known.
#[inline(always)]
fn route<P: Forwarder>(packet: &mut P, work: &mut BounceScratch, dst: &Addr, parsed: &IpPacket) -> Routed {
    // Every input the lookup reads must be zero but the few set below, and the last
    // lookup's outputs are still here (its route metric shares the TOS field). Sixteen
    // stores, not `zeroed()`: that compiles to a call to memset on every packet.
    let fib_words = (&raw mut work.fib).cast::<u32>();
    for index in 0..FIB_PARAMS_WORDS {
        // SAFETY: within the 64-byte struct, which is 4-byte aligned; volatile keeps
        // LLVM from folding the loop back into memset.
        unsafe { fib_words.add(index).write_volatile(0) };
    }
    let fib = &mut work.fib;
    fib.ifindex = packet.arrival_ifindex();
    fib.l4_protocol = work.key.protocol;
    if !parsed.is_ipv6() {
        fib.family = AF_INET;
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst.v4());
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    let result = packet.lookup_route(&mut work.fib);
    match u32::try_from(result).unwrap_or(u32::MAX) {
        BPF_FIB_LKUP_RET_SUCCESS => Routed::Via(Route { ifindex: work.fib.ifindex, macs: Some(macs(&work.fib)) }),
        // The next hop's MAC is not known yet: bpf_redirect_neigh resolves it where
        // the hook has it; otherwise the TC program behind does.
        BPF_FIB_LKUP_RET_NO_NEIGH if P::RESOLVES_NEIGHBOURS => {
            Routed::Via(Route { ifindex: work.fib.ifindex, macs: None })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Routed::Deferred,
        _ => Routed::Unroutable,
    }
}

/// The route this hook forwards to `dst` on, or `None` when the packet must pass
/// instead: left to the TC program behind (not counted), or unroutable (counted).
#[inline(always)]
fn forwarding_route<P: Forwarder>(
    packet: &mut P,
    work: &mut BounceScratch,
    dst: &Addr,
    parsed: &IpPacket,
) -> Option<Route> {
    match route(packet, work, dst, parsed) {
        Routed::Via(route) => Some(route),
        Routed::Deferred => None,
        Routed::Unroutable => {
            count(BOUNCE_UNROUTABLE);
            None
        }
    }
}

/// What the route lookup found.
enum Routed {
    Via(Route),
    /// A route this hook cannot use, left to the TC program behind it.
    Deferred,
    /// No route the packet can be forwarded on.
    Unroutable,
}

/// Where a packet leaves: the egress device, and the destination and source MAC
/// addresses when the route lookup resolved them.
#[derive(Clone, Copy)]
pub struct Route {
    ifindex: u32,
    macs: Option<[u8; 12]>,
}

/// The 16 octets of an IPv6 address as the four 32-bit words the helpers take.
#[inline(always)]
fn words(addr: &Addr) -> [u32; 4] {
    let o = &addr.octets;
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// Rewrites the packet to the entry's `out` tuple, counts it in the entry, and
/// redirects it to the egress device.
#[inline(always)]
fn translate_and_redirect<P: Forwarder>(
    packet: &mut P,
    parsed: &IpPacket,
    work: &BounceScratch,
    entry: *mut FlowEntry,
    route: Route,
    now: u64,
) -> Result<Verdict, ()> {
    // SAFETY: a live map value, valid for the program's run. Copied: the rewrite below
    // must not see a concurrent update half done.
    let out = unsafe { (*entry).out };
    let len = packet.len() as u64;
    let done = packet.step_hop_limit(parsed).and_then(|()| translate(packet, parsed, &out));
    if done.is_err() {
        // The packet may be half translated: letting it go on would deliver garbage.
        count(BOUNCE_ERRORS);
        return Ok(Verdict::Drop);
    }
    // SAFETY: as above; the counters are only ever updated atomically.
    unsafe {
        // The packet's arrival time, read once per packet (the clock is not free).
        (*entry).last_seen_ns = now;
        // What this side has sent, for judging its resets (TCP; a race between two
        // CPUs only ever leaves one of two recent values).
        let segment = &work.segment;
        if out.protocol == IPPROTO_TCP {
            let next = sequence_after(segment.seq, segment.flags, segment.payload_len);
            if advances((*entry).next_seq, next, (*entry).packets == 0) {
                (*entry).next_seq = next;
            }
        }
        atomic_add(&raw mut (*entry).packets, 1);
        atomic_add(&raw mut (*entry).bytes, len);
    }
    count(BOUNCE_FORWARDED);
    packet.send(route).map_err(|()| count(BOUNCE_ERRORS))
}

/// Destination then source MAC, as the Ethernet header starts.
#[inline(always)]
fn macs(fib: &bpf_fib_lookup) -> [u8; 12] {
    let mut both = [0u8; 12];
    both[..6].copy_from_slice(&fib.dmac);
    both[6..].copy_from_slice(&fib.smac);
    both
}

/// Rewrites the addresses and ports of a parsed TCP or UDP packet to `out`.
#[inline(always)]
fn translate<P: Forwarder>(packet: &mut P, parsed: &IpPacket, out: &FlowTuple) -> Result<(), ()> {
    if parsed.src != out.src {
        packet.replace_address(parsed, parsed.src_offset, &parsed.src, &out.src)?;
    }
    if parsed.dst != out.dst {
        packet.replace_address(parsed, parsed.dst_offset, &parsed.dst, &out.dst)?;
    }
    if parsed.src_port != out.src_port {
        packet.replace_port(parsed, parsed.ports_offset, parsed.src_port, out.src_port)?;
    }
    if parsed.dst_port != out.dst_port {
        packet.replace_port(parsed, parsed.ports_offset + DST_PORT_AFTER_SRC, parsed.dst_port, out.dst_port)?;
    }
    Ok(())
}

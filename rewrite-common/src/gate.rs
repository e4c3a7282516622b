//! The gatekeeper (Neti's second job): on protected services, admit only packets from
//! fleet members, that is the REAL addresses of the mapping table (which an agent keeps
//! in step with the fleet table) and explicit allow prefixes, and drop the rest at
//! ingress, before conntrack and the stack.
//!
//! The gate is stateless. Replies to connections this host opened are never dropped
//! because they arrive at the host's own ephemeral ports, which are never protected:
//! "protect all" stops below and above `ip_local_port_range`, and a single port in
//! that range is refused. Management ports (ssh by default) stay open unless the
//! operator takes the fail-safe away explicitly.
//!
//! All multi-byte fields are in host byte order (the programs and the loader run on
//! the same machine); addresses are [`Addr`](crate::maps::Addr)s, in network order.

/// One [`GateSettings`].
pub const MAP_GATE_SETTINGS: &str = "GATE_SETTINGS";
/// `u32` per (protocol, port), indexed by [`port_slot`]: the bits [`PORT_PROTECTED`]
/// and [`PORT_MANAGEMENT`].
pub const MAP_GATE_PORTS: &str = "GATE_PORTS";
/// LPM trie of allowed source prefixes (`Addr` keys, `u32` values, unused).
pub const MAP_GATE_ALLOW: &str = "GATE_ALLOW";
/// Per-CPU `u64` counters indexed by the `GATE_*` constants below.
pub const MAP_GATE_COUNTERS: &str = "GATE_COUNTERS";

/// Ring buffer of [`GateSample`]s: denied sources, sampled.
pub const MAP_GATE_LOG: &str = "GATE_LOG";
/// The `gate log` reader's lease (see `maps::LOG_LEASE_NS`): samples are only written
/// while a reader is there.
pub const MAP_GATE_LOG_LEASE: &str = "GATE_LOG_LEASE";
/// At most one sample per CPU in this time: a flood of denied packets must not become a
/// flood of events.
pub const SAMPLE_INTERVAL_NS: u64 = 10_000_000;
/// The ring's size in bytes.
pub const GATE_LOG_BYTES: u32 = 256 * 1024;

/// A denied packet, as `gate log` shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateSample {
    /// `bpf_ktime_get_ns` when it arrived.
    pub time_ns: u64,
    pub src: crate::maps::Addr,
    /// The protected port it was sent to (host order).
    pub dst_port: u16,
    /// 6 or 17.
    pub protocol: u8,
    /// 1: dropped (enforce); 0: would have been (monitor).
    pub dropped: u8,
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<GateSample>() == 32);

/// Allow prefixes the trie holds at most.
pub const MAX_ALLOW_PREFIXES: u32 = 65_536;
/// Slots of the port map: one per TCP port, then one per UDP port.
pub const PORT_SLOTS: u32 = 2 * 65_536;

/// Mode values.
pub const MODE_OFF: u32 = 0;
pub const MODE_MONITOR: u32 = 1;
pub const MODE_ENFORCE: u32 = 2;

/// Port classes: the port map holds the two bits independently (a management port
/// stays protected underneath, should the operator take the fail-safe away), and
/// [`effective_class`] turns them into one class.
pub const PORT_OPEN: u32 = 0;
pub const PORT_PROTECTED: u32 = 1;
pub const PORT_MANAGEMENT: u32 = 2;

/// Counter slots. Each packet to a protected or management port counts once, and so
/// does each frame the gate cannot judge while it is on; other packets are not the
/// gate's business and are not counted.
pub const GATE_PASSED_MEMBER: u32 = 0;
pub const GATE_PASSED_ALLOWED_PREFIX: u32 = 1;
pub const GATE_PASSED_MANAGEMENT: u32 = 2;
/// Monitor mode: from an unknown source, counted and passed.
pub const GATE_WOULD_DROP: u32 = 3;
/// Enforce mode: from an unknown source, dropped.
pub const GATE_DROPPED: u32 = 4;
/// Enforce mode: a first fragment (IPv4, or IPv6) that does not carry the transport
/// ports, or an IPv6 first fragment without its whole header chain (RFC 7112): the
/// port it is for cannot be known, and the host would reassemble it. Dropped.
pub const GATE_DROPPED_FRAGMENT: u32 = 5;
/// Enforce mode: an IPv6 extension header chain longer or deeper than the gate walks.
/// Dropped.
pub const GATE_DROPPED_HEADER_CHAIN: u32 = 6;
/// Monitor mode: the same two kinds of frame, counted and passed.
pub const GATE_WOULD_DROP_FRAGMENT: u32 = 7;
pub const GATE_WOULD_DROP_HEADER_CHAIN: u32 = 8;
pub const GATE_COUNTER_SLOTS: u32 = 9;
pub const GATE_COUNTER_NAMES: [&str; GATE_COUNTER_SLOTS as usize] = [
    "passed_member",
    "passed_allowed_prefix",
    "passed_management",
    "would_drop",
    "dropped",
    "dropped_fragment",
    "dropped_header_chain",
    "would_drop_fragment",
    "would_drop_header_chain",
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateSettings {
    /// [`MODE_OFF`], [`MODE_MONITOR`] or [`MODE_ENFORCE`].
    pub mode: u32,
    /// Non-zero once the operator set the management ports: until then ssh (TCP 22)
    /// is the management port whatever the port map says.
    pub management_configured: u32,
}

const _: () = assert!(core::mem::size_of::<GateSettings>() == 8);

/// The port map's slot for `port` of `protocol` (6 or 17), or `None` for any other
/// protocol (the gate protects TCP and UDP services only).
#[inline(always)]
pub const fn port_slot(protocol: u8, port: u16) -> Option<u32> {
    match protocol {
        6 => Some(port as u32),
        17 => Some(65_536 + port as u32),
        _ => None,
    }
}

/// How the source of a packet relates to the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A REAL address of the mapping table.
    Member,
    /// Inside an allow prefix.
    AllowedPrefix,
    Unknown,
}

/// What the gate does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not the gate's business: passes uncounted.
    Ignore,
    /// Passes, counted under the slot.
    Pass(u32),
    /// Dropped, counted under the slot.
    Drop(u32),
}

/// The gate's decision for a packet to a port of class `class` from `source`, in
/// `settings`. The programs run this very function.
#[inline(always)]
pub fn decide(settings: &GateSettings, class: u32, source: Source) -> Decision {
    if settings.mode == MODE_OFF || class == PORT_OPEN {
        return Decision::Ignore;
    }
    if class == PORT_MANAGEMENT {
        return Decision::Pass(GATE_PASSED_MANAGEMENT);
    }
    match source {
        Source::Member => Decision::Pass(GATE_PASSED_MEMBER),
        Source::AllowedPrefix => Decision::Pass(GATE_PASSED_ALLOWED_PREFIX),
        Source::Unknown if settings.mode == MODE_ENFORCE => Decision::Drop(GATE_DROPPED),
        Source::Unknown => Decision::Pass(GATE_WOULD_DROP),
    }
}

/// Why the gate cannot judge a frame: it cannot tell which port the frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unjudgeable {
    /// A first fragment without the transport ports (or, in IPv6, without the whole
    /// header chain).
    Fragment,
    /// An IPv6 extension header chain longer or deeper than the gate walks.
    HeaderChain,
}

/// The gate's decision for a frame it cannot judge: the gate fails closed, so enforce
/// drops it and monitor counts it as one it would drop. Off, it is not the gate's
/// business.
#[inline(always)]
pub fn decide_unjudgeable(settings: &GateSettings, why: Unjudgeable) -> Decision {
    let (dropped, would_drop) = match why {
        Unjudgeable::Fragment => (GATE_DROPPED_FRAGMENT, GATE_WOULD_DROP_FRAGMENT),
        Unjudgeable::HeaderChain => (GATE_DROPPED_HEADER_CHAIN, GATE_WOULD_DROP_HEADER_CHAIN),
    };
    match settings.mode {
        MODE_ENFORCE => Decision::Drop(dropped),
        MODE_MONITOR => Decision::Pass(would_drop),
        _ => Decision::Ignore,
    }
}

/// The class of `port` of `protocol` given the port map's bits for it: a port that
/// is not protected is open; a protected one is a management port (and passes) if it
/// has the management bit, or is ssh while the operator has not configured management
/// ports.
#[inline(always)]
pub const fn effective_class(settings: &GateSettings, protocol: u8, port: u16, bits: u32) -> u32 {
    if bits & PORT_PROTECTED == 0 {
        return PORT_OPEN;
    }
    let default_management = settings.management_configured == 0 && protocol == 6 && port == DEFAULT_MANAGEMENT_PORT;
    if bits & PORT_MANAGEMENT != 0 || default_management { PORT_MANAGEMENT } else { PORT_PROTECTED }
}

/// ssh: the TCP port the gate never closes unless told to.
pub const DEFAULT_MANAGEMENT_PORT: u16 = 22;

#[cfg(feature = "user")]
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for GateSettings {}

#[cfg(feature = "user")]
// SAFETY: plain integers and byte arrays, no padding (asserted size).
unsafe impl aya::Pod for GateSample {}

#[cfg(test)]
mod tests {
    use super::*;

    const ENFORCE: GateSettings = GateSettings { mode: MODE_ENFORCE, management_configured: 0 };
    const MONITOR: GateSettings = GateSettings { mode: MODE_MONITOR, management_configured: 0 };

    #[test]
    fn off_and_open_ports_are_not_the_gates_business() {
        let off = GateSettings::default();
        assert_eq!(decide(&off, PORT_PROTECTED, Source::Unknown), Decision::Ignore);
        assert_eq!(decide(&ENFORCE, PORT_OPEN, Source::Unknown), Decision::Ignore);
    }

    #[test]
    fn enforce_drops_only_unknown_sources_and_monitor_drops_nothing() {
        assert_eq!(decide(&ENFORCE, PORT_PROTECTED, Source::Member), Decision::Pass(GATE_PASSED_MEMBER));
        assert_eq!(decide(&ENFORCE, PORT_PROTECTED, Source::AllowedPrefix), Decision::Pass(GATE_PASSED_ALLOWED_PREFIX));
        assert_eq!(decide(&ENFORCE, PORT_PROTECTED, Source::Unknown), Decision::Drop(GATE_DROPPED));
        assert_eq!(decide(&MONITOR, PORT_PROTECTED, Source::Unknown), Decision::Pass(GATE_WOULD_DROP));
    }

    #[test]
    fn ssh_stays_open_until_management_ports_are_configured() {
        assert_eq!(effective_class(&ENFORCE, 6, 22, PORT_PROTECTED), PORT_MANAGEMENT);
        assert_eq!(effective_class(&ENFORCE, 17, 22, PORT_PROTECTED), PORT_PROTECTED);
        let configured = GateSettings { management_configured: 1, ..ENFORCE };
        assert_eq!(effective_class(&configured, 6, 22, PORT_PROTECTED), PORT_PROTECTED);
        assert_eq!(effective_class(&configured, 6, 2222, PORT_PROTECTED | PORT_MANAGEMENT), PORT_MANAGEMENT);
        assert_eq!(effective_class(&configured, 6, 2222, PORT_MANAGEMENT), PORT_OPEN, "not protected: open");
        assert_eq!(effective_class(&ENFORCE, 6, 22, PORT_OPEN), PORT_OPEN, "an unprotected ssh is simply open");
        assert_eq!(decide(&ENFORCE, PORT_MANAGEMENT, Source::Unknown), Decision::Pass(GATE_PASSED_MANAGEMENT));
    }

    #[test]
    fn frames_the_gate_cannot_judge_are_dropped_in_enforce_and_counted_in_monitor() {
        for (why, dropped, would_drop) in [
            (Unjudgeable::Fragment, GATE_DROPPED_FRAGMENT, GATE_WOULD_DROP_FRAGMENT),
            (Unjudgeable::HeaderChain, GATE_DROPPED_HEADER_CHAIN, GATE_WOULD_DROP_HEADER_CHAIN),
        ] {
            assert_eq!(decide_unjudgeable(&ENFORCE, why), Decision::Drop(dropped));
            assert_eq!(decide_unjudgeable(&MONITOR, why), Decision::Pass(would_drop));
            assert_eq!(decide_unjudgeable(&GateSettings::default(), why), Decision::Ignore);
        }
        assert_eq!(GATE_COUNTER_NAMES.len(), GATE_COUNTER_SLOTS as usize);
    }

    #[test]
    fn port_slots_separate_tcp_and_udp() {
        assert_eq!(port_slot(6, 0), Some(0));
        assert_eq!(port_slot(6, 65_535), Some(65_535));
        assert_eq!(port_slot(17, 0), Some(65_536));
        assert_eq!(port_slot(17, 65_535), Some(PORT_SLOTS - 1));
        assert_eq!(port_slot(1, 22), None);
    }
}

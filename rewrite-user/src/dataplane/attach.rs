//! Loading the eBPF object, attaching its programs to an interface and pinning them,
//! and detaching. The maps are pinned by name under `<pin dir>/maps`, so every load
//! (one per attached interface) reuses the one table that is already there.

use std::{fmt, io, path::Path};

use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::Map,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkOrder},
        tc::TcAttachOptions,
    },
};
use rewrite_common::bounce::{
    BounceService, BounceSettings, FlowEntry, FlowTuple, MAP_BOUNCE_COUNTERS, MAP_BOUNCE_FLOWS, MAP_BOUNCE_LOG_LEASE,
    MAP_BOUNCE_SERVICES, MAP_BOUNCE_SETTINGS, MAP_BOUNCE_XDP,
};
use rewrite_common::{
    counters,
    maps::{
        Addr, AddressEntry, Endpoint, EndpointEntry, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_COUNTERS, MAP_ICMP_ERRORS,
        MAP_PORT_FORWARD, MAP_PORT_REVERSE, MAP_PREFIX_FORWARD, MAP_PREFIX_REVERSE, MAP_TABLES_IN_USE, PrefixEntry,
        TablesInUse,
    },
};

use crate::{
    Error, iface,
    pins::PinLayout,
    tc::{self, FilterSlot, TcAttach, TcMethod},
};

/// The compiled eBPF object, built by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rewrite-ebpf"));
/// Bounce mode's object (rewrite-ebpf's second binary), loaded by the first
/// `rewrite bounce add`.
pub static BOUNCE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rewrite-bounce"));

pub const PROG_XDP_INGRESS: &str = "rewrite_xdp_ingress";
pub const PROG_TC_INGRESS: &str = "rewrite_tc_ingress";
pub const PROG_TC_EGRESS: &str = "rewrite_tc_egress";
/// The TC ingress program that rewrites ICMP errors (and their quoted packet) beside
/// the XDP ingress program, which leaves them alone.
pub const PROG_TC_ICMP_ERRORS: &str = "rewrite_tc_icmp_errors";
/// The TC egress program's counterpart of [`PROG_TC_ICMP_ERRORS`], reached by a tail
/// call only.
pub const PROG_TC_EGRESS_ICMP_ERRORS: &str = "rewrite_tc_egress_icmp_errors";
/// Bounce mode's TC ingress program, beside the rewrite programs on every attached
/// interface once bounce mode is in use (it returns at once while no service exists).
pub const PROG_TC_BOUNCE: &str = "bounce_tc_ingress";
/// Bounce mode in XDP, reached by a tail call from [`PROG_XDP_INGRESS`] through the
/// `BOUNCE_XDP` program array, not attached itself.
pub const PROG_XDP_BOUNCE: &str = "bounce_xdp_ingress";
/// An XDP program that only returns XDP_PASS: the baseline for benchmarks.
pub const PROG_BENCH_XDP_PASS: &str = "bench_xdp_pass";

/// Where ingress packets are rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressMode {
    /// XDP on devices whose packets come from a wire, TC on virtual devices.
    Auto,
    /// Native (driver) XDP.
    Xdp,
    /// Generic XDP, run by the stack after the skb is built.
    XdpSkb,
    /// A TC ingress program.
    Tc,
}

/// The attachment that `auto` resolved to, as recorded in the pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressHook {
    XdpDriver,
    XdpGeneric,
    Tc,
}

impl IngressHook {
    /// The program that runs at this hook.
    pub const fn program(self) -> &'static str {
        Slot::Ingress(self).program()
    }

    const ALL: [Self; 3] = [Self::XdpDriver, Self::XdpGeneric, Self::Tc];

    /// The mode that attaches exactly this hook.
    pub const fn mode(self) -> IngressMode {
        match self {
            Self::XdpDriver => IngressMode::Xdp,
            Self::XdpGeneric => IngressMode::XdpSkb,
            Self::Tc => IngressMode::Tc,
        }
    }
}

impl fmt::Display for IngressHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::XdpDriver => "xdp",
            Self::XdpGeneric => "xdp-skb",
            Self::Tc => "tc",
        })
    }
}

/// A place where one of rewrite's programs runs on an interface. Each has a program pin
/// (`<slot>_prog`), and, when it is attached through a bpf link (XDP, tcx), a link pin
/// (`<slot>_link`) whose removal detaches it. A TC program attached through netlink has
/// no link: its filter sits at the slot's fixed place ([`FilterSlot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Egress,
    Ingress(IngressHook),
    /// The TC program that rewrites ICMP errors beside XDP ingress.
    IcmpErrors,
    /// Bounce mode's TC ingress program.
    Bounce,
}

impl Slot {
    pub const fn program(self) -> &'static str {
        match self {
            Self::Egress => PROG_TC_EGRESS,
            Self::Ingress(IngressHook::XdpDriver | IngressHook::XdpGeneric) => PROG_XDP_INGRESS,
            Self::Ingress(IngressHook::Tc) => PROG_TC_INGRESS,
            Self::IcmpErrors => PROG_TC_ICMP_ERRORS,
            Self::Bounce => PROG_TC_BOUNCE,
        }
    }

    /// The pin file names of the program and of its link.
    pub const fn pin_names(self) -> (&'static str, &'static str) {
        match self {
            Self::Egress => ("egress_tc_prog", "egress_tc_link"),
            Self::Ingress(IngressHook::XdpDriver) => ("ingress_xdp_prog", "ingress_xdp_link"),
            Self::Ingress(IngressHook::XdpGeneric) => ("ingress_xdp_skb_prog", "ingress_xdp_skb_link"),
            Self::Ingress(IngressHook::Tc) => ("ingress_tc_prog", "ingress_tc_link"),
            Self::IcmpErrors => ("ingress_tc_icmp_errors_prog", "ingress_tc_icmp_errors_link"),
            Self::Bounce => ("ingress_tc_bounce_prog", "ingress_tc_bounce_link"),
        }
    }

    /// Where a TC slot's filter sits when it is attached through netlink; `None` for XDP.
    pub const fn filter(self) -> Option<FilterSlot> {
        match self {
            Self::Egress => Some(FilterSlot::REWRITE_EGRESS),
            Self::Ingress(IngressHook::Tc) | Self::IcmpErrors => Some(FilterSlot::REWRITE_INGRESS),
            Self::Bounce => Some(FilterSlot::BOUNCE_INGRESS),
            Self::Ingress(IngressHook::XdpDriver | IngressHook::XdpGeneric) => None,
        }
    }

    const ALL: [Self; 6] = [
        Self::Egress,
        Self::Ingress(IngressHook::XdpDriver),
        Self::Ingress(IngressHook::XdpGeneric),
        Self::Ingress(IngressHook::Tc),
        Self::IcmpErrors,
        Self::Bounce,
    ];

    /// The slot whose program pin is named `pin`.
    fn of_program_pin(pin: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|slot| slot.pin_names().0 == pin)
    }

    /// How this slot is attached on the interface whose pins are in `iface_dir`, or
    /// `None` if it is not.
    fn method(self, iface_dir: &Path) -> Option<AttachMethod> {
        let (prog_pin, link_pin) = self.pin_names();
        if !iface_dir.join(prog_pin).exists() {
            return None;
        }
        Some(match (iface_dir.join(link_pin).exists(), self.filter()) {
            (true, None) => AttachMethod::XdpLink,
            (true, Some(_)) => AttachMethod::Tcx,
            (false, Some(filter)) => AttachMethod::Netlink(filter),
            // An XDP program pin without its link: the link was removed by hand.
            (false, None) => AttachMethod::Unlinked,
        })
    }
}

/// How an attached program is hooked in, as its pins show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMethod {
    XdpLink,
    Tcx,
    Netlink(FilterSlot),
    Unlinked,
}

impl fmt::Display for AttachMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::XdpLink => f.write_str("xdp link"),
            Self::Tcx => f.write_str("tcx link"),
            Self::Netlink(filter) => write!(f, "netlink ({filter})"),
            Self::Unlinked => f.write_str("not attached (its link pin is missing)"),
        }
    }
}

impl IngressMode {
    /// Picks the hook for `iface`. `auto` uses XDP only where packets come from a wire:
    /// on a veth or other virtual device a packet can arrive with CHECKSUM_PARTIAL
    /// (only the pseudo-header sum in the checksum field), which XDP cannot see, and
    /// patching it as if it were complete corrupts packets that are forwarded on.
    pub fn resolve(self, iface: &str) -> Result<IngressHook, Error> {
        Ok(match self {
            Self::Auto if iface::is_wire_device(iface)? => IngressHook::XdpDriver,
            Self::Auto | Self::Tc => IngressHook::Tc,
            Self::Xdp => IngressHook::XdpDriver,
            Self::XdpSkb => IngressHook::XdpGeneric,
        })
    }
}

/// Loads the object with its maps pinned in (or reused from) `maps_dir`, and checks
/// that reused maps have the layout this build expects. `max_mappings` sets the
/// capacity of the mapping maps if this load creates them. Programs are not loaded
/// into the kernel yet: callers load only those they attach or test.
pub fn load(maps_dir: &Path, max_mappings: Option<u32>) -> Result<Ebpf, Error> {
    load_object(EBPF_OBJECT, maps_dir, max_mappings)
}

/// A loader whose verifier log, when a program is refused, holds the verifier's whole
/// reasoning (the default stops at errors and statistics): `--verbose` prints it.
fn ebpf_loader(maps_dir: &Path) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(maps_dir);
    loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
    loader
}

/// [`load`] for any build of the object (`rewrite upgrade --object`).
pub fn load_object(object: &[u8], maps_dir: &Path, max_mappings: Option<u32>) -> Result<Ebpf, Error> {
    if object.is_empty() {
        return Err(Error::BuiltWithoutPrograms);
    }
    let mut loader = ebpf_loader(maps_dir);
    if let Some(capacity) = max_mappings {
        for map in [MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_PORT_FORWARD, MAP_PORT_REVERSE] {
            loader.map_max_entries(map, capacity);
        }
    }
    let ebpf = loader.load(object).map_err(|error| Error::Load(Box::new(error)))?;
    check_map_layout(&ebpf, maps_dir, MAP_ADDR_FORWARD, size_of::<Addr>(), size_of::<AddressEntry>())?;
    check_map_layout(&ebpf, maps_dir, MAP_ADDR_REVERSE, size_of::<Addr>(), size_of::<AddressEntry>())?;
    check_map_layout(&ebpf, maps_dir, MAP_PORT_FORWARD, size_of::<Endpoint>(), size_of::<EndpointEntry>())?;
    check_map_layout(&ebpf, maps_dir, MAP_PORT_REVERSE, size_of::<Endpoint>(), size_of::<EndpointEntry>())?;
    // An LPM key is a u32 prefix length followed by the address.
    let prefix_key = size_of::<u32>() + size_of::<Addr>();
    check_map_layout(&ebpf, maps_dir, MAP_PREFIX_FORWARD, prefix_key, size_of::<PrefixEntry>())?;
    check_map_layout(&ebpf, maps_dir, MAP_PREFIX_REVERSE, prefix_key, size_of::<PrefixEntry>())?;
    check_map_layout(&ebpf, maps_dir, MAP_TABLES_IN_USE, size_of::<u32>(), size_of::<TablesInUse>())?;
    check_map_layout(&ebpf, maps_dir, MAP_COUNTERS, size_of::<u32>(), size_of::<u64>())?;
    check_map_layout(&ebpf, maps_dir, MAP_ICMP_ERRORS, size_of::<u32>(), size_of::<u32>())?;
    Ok(ebpf)
}

/// Loads the bounce object with its maps pinned in (or reused from) `maps_dir`.
/// `max_flows` sets the flow table's size (two entries per flow) if this load
/// creates it.
pub fn load_bounce(maps_dir: &Path, max_flows: Option<u32>) -> Result<Ebpf, Error> {
    if BOUNCE_OBJECT.is_empty() {
        return Err(Error::BuiltWithoutPrograms);
    }
    let mut loader = ebpf_loader(maps_dir);
    if let Some(flows) = max_flows {
        loader.map_max_entries(MAP_BOUNCE_FLOWS, flows.saturating_mul(2));
    }
    let ebpf = loader.load(BOUNCE_OBJECT).map_err(|error| Error::Load(Box::new(error)))?;
    check_map_layout(&ebpf, maps_dir, MAP_BOUNCE_SERVICES, size_of::<Endpoint>(), size_of::<BounceService>())?;
    check_map_layout(&ebpf, maps_dir, MAP_BOUNCE_FLOWS, size_of::<FlowTuple>(), size_of::<FlowEntry>())?;
    check_map_layout(&ebpf, maps_dir, MAP_BOUNCE_SETTINGS, size_of::<u32>(), size_of::<BounceSettings>())?;
    check_map_layout(&ebpf, maps_dir, MAP_BOUNCE_COUNTERS, size_of::<u32>(), size_of::<u64>())?;
    check_map_layout(&ebpf, maps_dir, MAP_BOUNCE_LOG_LEASE, size_of::<u32>(), size_of::<u64>())?;
    Ok(ebpf)
}

/// Loads the programs that rewrite ICMP errors and puts them in the pinned array that
/// the TC rewrite programs hand ICMP errors to. Called before any TC program of `ebpf`
/// is attached, so that no packet finds the slots empty.
pub fn install_icmp_errors(ebpf: &mut Ebpf) -> Result<(), Error> {
    let mut programs = Vec::new();
    for (direction, program) in
        [(counters::INGRESS, PROG_TC_ICMP_ERRORS), (counters::EGRESS, PROG_TC_EGRESS_ICMP_ERRORS)]
    {
        let classifier: &mut SchedClassifier = typed_program(ebpf, program, TAIL_CALL)?;
        if classifier.fd().is_err() {
            classifier.load().map_err(|source| program_error("loading", program, TAIL_CALL, source))?;
        }
        let fd = classifier
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
            .map_err(|source| program_error("loading", program, TAIL_CALL, source))?;
        programs.push((direction, fd));
    }
    let map = ebpf.map_mut(MAP_ICMP_ERRORS).ok_or(Error::NotLoaded { path: MAP_ICMP_ERRORS.into() })?;
    let mut array = aya::maps::ProgramArray::try_from(map).map_err(|source| Error::map(MAP_ICMP_ERRORS, source))?;
    for (direction, fd) in &programs {
        array.set(*direction, fd, 0).map_err(|source| Error::map(MAP_ICMP_ERRORS, source))?;
    }
    Ok(())
}

/// What the errors of programs that are not attached to one interface name as theirs.
const TAIL_CALL: &str = "(tail call)";

/// Whether bounce mode is in use here: its maps exist (the first `bounce add` created
/// them), so every attached interface runs the bounce program.
pub fn bounce_enabled(pins: &PinLayout) -> bool {
    pins.map(MAP_BOUNCE_SERVICES).exists()
}

/// Attaches the bounce program to every attached interface that does not run it yet,
/// creating its maps (with room for `max_flows` flows) if they do not exist. Returns
/// the interfaces it attached to.
pub fn enable_bounce(pins: &PinLayout, max_flows: Option<u32>) -> Result<Vec<String>, Error> {
    if max_flows == Some(0) {
        return Err(Error::ZeroCapacity);
    }
    let attachments = attached(pins)?;
    if attachments.is_empty() {
        return Err(Error::NothingAttached);
    }
    if let Some(requested) = max_flows
        && bounce_enabled(pins)
    {
        let existing = aya::maps::MapData::from_pin(pins.map(MAP_BOUNCE_FLOWS))
            .and_then(|data| data.info())
            .map(|info| info.max_entries() / 2)
            .map_err(|source| Error::map(MAP_BOUNCE_FLOWS, source))?;
        if existing != requested {
            return Err(Error::FlowCapacityMismatch { existing, requested });
        }
    }
    let mut ebpf = load_bounce(&pins.maps_dir(), max_flows)?;
    install_bounce_xdp(&mut ebpf, pins)?;
    let mut enabled = Vec::new();
    for attachment in attachments {
        let iface_dir = pins.iface_dir(&attachment.iface)?;
        if Slot::Bounce.method(&iface_dir).is_some() {
            continue;
        }
        attach_bounce(&mut ebpf, pins, &iface_dir, &attachment.iface)?;
        enabled.push(attachment.iface);
    }
    Ok(enabled)
}

/// Attaches the loaded bounce program to `iface`, last on its ingress (the rewrite
/// programs pass to it, and a bounced packet leaves the device with a redirect), the
/// way the interface's other TC programs are attached, and pins it.
fn attach_bounce(ebpf: &mut Ebpf, pins: &PinLayout, iface_dir: &Path, iface: &str) -> Result<(), Error> {
    let method = match Slot::Egress.method(iface_dir) {
        Some(AttachMethod::Netlink(_)) => TcMethod::Netlink,
        _ => TcMethod::Tcx,
    };
    let mut added = Vec::new();
    let attached = attach_slot(ebpf, pins, iface_dir, iface, Slot::Bounce, method, &mut added);
    if attached.is_err() {
        for (filter, program_id) in added {
            let _ = tc::detach_netlink(iface, filter, program_id);
        }
    }
    attached
}

/// Loads the bounce object's XDP program and puts it where the XDP ingress programs
/// tail-call it. The pinned program array holds the program from then on.
fn install_bounce_xdp(ebpf: &mut Ebpf, pins: &PinLayout) -> Result<(), Error> {
    let path = pins.map(MAP_BOUNCE_XDP);
    let xdp: &mut Xdp = typed_program(ebpf, PROG_XDP_BOUNCE, TAIL_CALL)?;
    if xdp.fd().is_err() {
        xdp.load().map_err(|source| program_error("loading", PROG_XDP_BOUNCE, TAIL_CALL, source))?;
    }
    let program = xdp.fd().map_err(|source| program_error("loading", PROG_XDP_BOUNCE, TAIL_CALL, source))?;
    let data = aya::maps::MapData::from_pin(&path).map_err(|source| Error::map(MAP_BOUNCE_XDP, source))?;
    let mut array = aya::maps::ProgramArray::try_from(Map::ProgramArray(data))
        .map_err(|source| Error::map(MAP_BOUNCE_XDP, source))?;
    array.set(0, program, 0).map_err(|source| Error::map(MAP_BOUNCE_XDP, source))
}

fn check_map_layout(ebpf: &Ebpf, maps_dir: &Path, name: &'static str, key: usize, value: usize) -> Result<(), Error> {
    let map = ebpf.map(name).ok_or_else(|| Error::NotLoaded { path: maps_dir.join(name) })?;
    let info = map_data(map).info().map_err(|source| Error::map(name, source))?;
    let size = |bytes: usize| u32::try_from(bytes).unwrap_or(u32::MAX);
    let (expected_key_size, expected_value_size) = (size(key), size(value));
    if info.key_size() != expected_key_size || info.value_size() != expected_value_size {
        return Err(Error::IncompatibleMap {
            map: name,
            path: maps_dir.join(name),
            key_size: info.key_size(),
            value_size: info.value_size(),
            expected_key_size,
            expected_value_size,
        });
    }
    Ok(())
}

fn map_data(map: &Map) -> &aya::maps::MapData {
    match map {
        Map::HashMap(data)
        | Map::PerCpuArray(data)
        | Map::Array(data)
        | Map::PerCpuHashMap(data)
        | Map::LruHashMap(data)
        | Map::RingBuf(data)
        | Map::LpmTrie(data)
        | Map::ProgramArray(data) => data,
        other => unreachable!("rewrite's object declares no map of type {other:?}"),
    }
}

/// What [`attach`] did.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ingress: IngressHook,
}

/// Creates the pinned mapping table without attaching anything (`apply` of a config
/// that names no interface).
pub fn create_table(pins: &PinLayout, max_mappings: Option<u32>) -> Result<(), Error> {
    if max_mappings == Some(0) {
        return Err(Error::ZeroCapacity);
    }
    pins.create_dir(&pins.maps_dir())?;
    load(&pins.maps_dir(), max_mappings).map(drop)
}

/// Loads the programs, attaches egress (TC) and ingress (`mode`) to `iface`, and pins
/// programs and links under the interface's pin directory. TC programs attach through
/// tcx links or netlink filters as `tc` says. Either everything is attached and pinned,
/// or nothing is: links that were not pinned detach when the object is dropped, filters
/// this call added are deleted, and the pin directory this call reserved is removed.
pub fn attach(
    pins: &PinLayout,
    iface_name: &str,
    mode: IngressMode,
    tc: TcAttach,
    max_mappings: Option<u32>,
) -> Result<Attachment, Error> {
    tc::require_supported_kernel()?;
    let iface_dir = pins.iface_dir(iface_name)?;
    iface::ensure_ethernet(iface_name)?;
    let method = tc.resolve()?;
    if iface_dir.exists() {
        match staleness(pins, iface_name)? {
            // Pins of a device that is no more: replaced by this attach.
            Some(why) => {
                tracing::info!(iface = iface_name, why, "replacing stale pins");
                forget_stale(pins, iface_name)?;
            }
            None => return Err(Error::AlreadyAttached { name: iface_name.to_owned(), dir: iface_dir }),
        }
    }
    // Whatever mode rewrite uses, an XDP program it did not attach would see (and may
    // drop or redirect) ingress packets before rewrite restores their addresses.
    if let Some(program_id) = iface::xdp_program_id(iface_name)? {
        return Err(Error::ForeignXdp { name: iface_name.to_owned(), program_id });
    }
    let hook = mode.resolve(iface_name)?;
    let creates_table = !pins.maps_dir().exists();
    if let Some(requested) = max_mappings {
        if requested == 0 {
            return Err(Error::ZeroCapacity);
        }
        if !creates_table {
            let existing = crate::maps::MappingTable::open(pins)?.capacity();
            if existing != requested {
                return Err(Error::CapacityMismatch { existing, requested });
            }
        }
    }
    // Reserving the directory exclusively makes a concurrent attach of the same
    // interface fail here, instead of both attaching and one unpinning the other.
    if !pins.create_dir_exclusive(&iface_dir)? {
        return Err(Error::AlreadyAttached { name: iface_name.to_owned(), dir: iface_dir });
    }
    let fallback_to_tc = mode == IngressMode::Auto;
    let mut added = Vec::new();
    let attached = attach_and_pin(pins, &iface_dir, iface_name, hook, method, fallback_to_tc, max_mappings, &mut added);
    if attached.is_err() {
        // The filters this attach added are deleted; unpinning the links that did get
        // pinned detaches them again; a table that this attach created goes too, so a
        // failed first attach leaves nothing.
        for (filter, program_id) in added {
            let _ = tc::detach_netlink(iface_name, filter, program_id);
        }
        let _ = tc::release_clsact(pins, iface_name);
        let _ = std::fs::remove_dir_all(&iface_dir);
        if creates_table {
            let _ = std::fs::remove_dir_all(pins.maps_dir());
        }
    }
    let ingress = attached?;
    pins.record_version(iface_name, &object_version(EBPF_OBJECT))?;
    Ok(Attachment { iface: iface_name.to_owned(), ingress })
}

/// The netlink filters an attach added, with the program each runs: what a failed
/// attach deletes again.
type AddedFilters = Vec<(FilterSlot, u32)>;

#[expect(clippy::too_many_arguments, reason = "one attach's inputs, passed on from `attach`")]
fn attach_and_pin(
    pins: &PinLayout,
    iface_dir: &Path,
    iface_name: &str,
    hook: IngressHook,
    method: TcMethod,
    fallback_to_tc: bool,
    max_mappings: Option<u32>,
    added: &mut AddedFilters,
) -> Result<IngressHook, Error> {
    pins.create_dir(&pins.maps_dir())?;
    let mut ebpf = load(&pins.maps_dir(), max_mappings)?;
    // The TC programs hand ICMP errors over through this array: filled before they run.
    install_icmp_errors(&mut ebpf)?;
    let mut attach = |ebpf: &mut Ebpf, slot: Slot| attach_slot(ebpf, pins, iface_dir, iface_name, slot, method, added);
    attach(&mut ebpf, Slot::Egress)?;
    let hook = match hook {
        IngressHook::XdpDriver => match attach(&mut ebpf, Slot::Ingress(hook)) {
            Ok(()) => hook,
            // `auto` chose native XDP for a wire device whose driver turns out not to
            // support it: TC is correct on every device.
            Err(error) if fallback_to_tc && error.is_errno(libc::EOPNOTSUPP) => {
                attach(&mut ebpf, Slot::Ingress(IngressHook::Tc))?;
                IngressHook::Tc
            }
            Err(error) => return Err(error),
        },
        IngressHook::XdpGeneric | IngressHook::Tc => {
            attach(&mut ebpf, Slot::Ingress(hook))?;
            hook
        }
    };
    if hook != IngressHook::Tc {
        attach(&mut ebpf, Slot::IcmpErrors)?;
    }
    // Where bounce mode is in use, a newly attached interface bounces too.
    if bounce_enabled(pins) {
        let mut bounce = load_bounce(&pins.maps_dir(), None)?;
        attach(&mut bounce, Slot::Bounce)?;
    }
    Ok(hook)
}

/// Loads `slot`'s program of `ebpf` (once per object) and attaches it to `iface`: XDP
/// through a bpf link, TC through a tcx link or a netlink filter as `method` says (a
/// filter it adds goes into `added`). Pins the program, and its link when it has one.
fn attach_slot(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    iface_dir: &Path,
    iface: &str,
    slot: Slot,
    method: TcMethod,
    added: &mut AddedFilters,
) -> Result<(), Error> {
    let program = slot.program();
    let link = match slot {
        Slot::Ingress(IngressHook::XdpDriver) => Some(attach_xdp(ebpf, iface, XdpMode::Driver)?),
        Slot::Ingress(IngressHook::XdpGeneric) => Some(attach_xdp(ebpf, iface, XdpMode::Skb)?),
        _ => {
            let filter = slot.filter().expect("every slot but XDP ingress is a TC slot");
            let attach_type = match filter.hook {
                crate::netlink::ClsactHook::Ingress => TcAttachType::Ingress,
                crate::netlink::ClsactHook::Egress => TcAttachType::Egress,
            };
            let classifier: &mut SchedClassifier = typed_program(ebpf, program, iface)?;
            if classifier.fd().is_err() {
                classifier.load().map_err(|source| program_error("loading", program, iface, source))?;
            }
            match method {
                TcMethod::Netlink => {
                    let program_id = tc::attach_netlink(pins, classifier, program, iface, filter)?;
                    added.push((filter, program_id));
                    None
                }
                TcMethod::Tcx => {
                    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
                    let link_id = classifier
                        .attach_with_options(iface, attach_type, options)
                        .map_err(|source| program_error("attaching", program, iface, source))?;
                    let link = classifier
                        .take_link(link_id)
                        .map_err(|source| program_error("taking the link", program, iface, source))?;
                    Some(FdLink::try_from(link).map_err(|source| Error::Link {
                        why: "tcx links need Linux 6.6",
                        program,
                        iface: iface.to_owned(),
                        source: Box::new(source),
                    })?)
                }
            }
        }
    };
    let (prog_pin, link_pin) = slot.pin_names();
    let prog_path = iface_dir.join(prog_pin);
    let loaded = ebpf.program_mut(program).ok_or(Error::NotLoaded { path: prog_path.clone() })?;
    loaded.pin(&prog_path).map_err(|source| Error::Pin { path: prog_path, source: Box::new(source) })?;
    if let Some(link) = link {
        let link_path = iface_dir.join(link_pin);
        link.pin(&link_path).map_err(|source| Error::Pin { path: link_path, source: Box::new(source) })?;
    }
    Ok(())
}

/// The verifier's reason in a refused program's log: its last line that is not the
/// log's closing statistics, nor an instruction it walked.
fn verifier_reason(log: &str) -> String {
    let is_statistics = |line: &str| {
        ["verification time", "stack depth", "processed ", "max_states_per_insn", "mark_read"]
            .iter()
            .any(|prefix| line.starts_with(prefix))
    };
    let is_instruction =
        |line: &str| line.split_once(':').is_some_and(|(head, _)| head.chars().all(|c| c.is_ascii_digit()));
    log.lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty() && !is_statistics(line) && !is_instruction(line) && !line.starts_with(';'))
        .unwrap_or("no reason in its log")
        .to_owned()
}

fn program_error(
    action: &'static str,
    program: &'static str,
    iface: &str,
    source: aya::programs::ProgramError,
) -> Error {
    match source {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            verifier_refusal(program, &io_error, verifier_log.to_string())
        }
        source => Error::Program { action, program, iface: iface.to_owned(), source: Box::new(source) },
    }
}

/// A program the kernel refused: one line with the verifier's reason, and its whole log
/// kept for `--verbose`.
fn verifier_refusal(program: &'static str, io_error: &io::Error, log: String) -> Error {
    let reason = match verifier_reason(&log) {
        reason if log.trim().is_empty() => format!("{io_error} ({reason})"),
        reason => reason,
    };
    let kernel = tc::kernel().map_or_else(|| "unknown".to_owned(), |version| version.to_string());
    Error::VerifierRefused { program, kernel, reason, log }
}

/// The program `name` of the object as its concrete type (Xdp, SchedClassifier).
fn typed_program<'a, T>(ebpf: &'a mut Ebpf, program: &'static str, iface: &str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or_else(|| program_error("finding", program, iface, aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(|source| program_error("loading", program, iface, source))
}

fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: XdpMode) -> Result<FdLink, Error> {
    let program = PROG_XDP_INGRESS;
    let xdp: &mut Xdp = typed_program(ebpf, program, iface)?;
    xdp.load().map_err(|source| program_error("loading", program, iface, source))?;
    let link_id = xdp.attach(iface, mode).map_err(|source| match &source {
        // The kernel refuses a second XDP program on a device: EBUSY when one is
        // attached through a link, EEXIST when one was set through netlink.
        aya::programs::ProgramError::SyscallError(syscall)
            if matches!(syscall.io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) =>
        {
            let program_id = iface::xdp_program_id(iface).ok().flatten().unwrap_or(0);
            Error::ForeignXdp { name: iface.to_owned(), program_id }
        }
        _ => program_error("attaching", program, iface, source),
    })?;
    let link = xdp.take_link(link_id).map_err(|source| program_error("taking the link", program, iface, source))?;
    FdLink::try_from(link).map_err(|source| Error::Link {
        why: "XDP links need Linux 5.9; the kernel fell back to netlink attachment, which cannot be pinned",
        program,
        iface: iface.to_owned(),
        source: Box::new(source),
    })
}

/// Detaches rewrite from `iface`: deletes its netlink filters (only rewrite's own) and
/// removes its pins (the links are the last references to the other attachments, so
/// the kernel detaches them at once). The shared maps stay, with their mappings, for
/// the other interfaces and later attaches. The clsact qdisc goes too when rewrite
/// added it and nothing else is on it.
pub fn detach(pins: &PinLayout, iface: &str) -> Result<(), Error> {
    let iface_dir = pins.iface_dir(iface)?;
    if !iface_dir.exists() {
        return Err(Error::NotAttached { name: iface.to_owned(), dir: iface_dir });
    }
    // An interface that is gone took its filters with it.
    let present = iface::index(iface).is_ok();
    for slot in Slot::ALL {
        if let Some(AttachMethod::Netlink(filter)) = slot.method(&iface_dir)
            && present
        {
            tc::detach_netlink(iface, filter, pinned_program_id(&iface_dir, slot)?)?;
        }
    }
    let links = pinned_link_ids(&iface_dir);
    match std::fs::remove_dir_all(&iface_dir) {
        Ok(()) => {
            pins.forget_version(Some(iface));
            wait_until_released(&links)?;
            tc::release_clsact(pins, iface)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Err(Error::NotAttached { name: iface.to_owned(), dir: iface_dir })
        }
        Err(error) => Err(Error::io("removing", iface_dir, error)),
    }
}

/// The id of the program pinned for `slot` in `iface_dir`.
fn pinned_program_id(iface_dir: &Path, slot: Slot) -> Result<u32, Error> {
    let path = iface_dir.join(slot.pin_names().0);
    aya::programs::ProgramInfo::from_pin(&path)
        .map(|info| info.id())
        .map_err(|source| Error::PinnedProgram { path, source: Box::new(source) })
}

/// The ids of the links pinned in `iface_dir` (none if it cannot be read).
fn pinned_link_ids(iface_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(iface_dir) else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if !path.file_name()?.to_string_lossy().ends_with("_link") {
                return None;
            }
            // The descriptor is closed at the end of this statement: holding it would
            // keep the link alive.
            FdLink::from(aya::programs::links::PinnedLink::from_pin(&path).ok()?).info().ok().map(|info| info.id())
        })
        .collect()
}

/// How long detaching may take: the kernel releases an unpinned link from a workqueue.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the kernel has released `links`, so that when `detach` returns, no
/// packet meets the programs any more.
fn wait_until_released(links: &[u32]) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + RELEASE_TIMEOUT;
    loop {
        let remaining: Vec<u32> = aya::programs::loaded_links()
            .filter_map(|link| link.ok().map(|info| info.id()))
            .filter(|id| links.contains(id))
            .collect();
        if remaining.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::LinksNotReleased { ids: remaining });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The interface index a pinned XDP or tcx link is attached to: 0 once its device is
/// gone (the kernel keeps such a link, defunct). `None` if it cannot be read.
fn link_ifindex(path: &Path) -> Option<u32> {
    use std::os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// The `obj` member of union bpf_attr.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    /// The `info` member of union bpf_attr.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut get = ObjGet { pathname: name.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: bpf(2) reads the path through the pointer, which outlives the call.
    let raw = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &raw mut get, std::mem::size_of::<ObjGet>()) };
    let raw = i32::try_from(raw).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a fresh descriptor of the pinned link that nothing else owns.
    let link = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // struct bpf_link_info: type, id, prog_id, then (8-byte aligned, at byte 16) a
    // union whose xdp and tcx members both start with the ifindex.
    let mut info = [0u32; 32];
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(link.as_raw_fd()).ok()?,
        info_len: u32::try_from(std::mem::size_of_val(&info)).ok()?,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: bpf(2) writes at most `info_len` bytes into `info`, which outlives the
    // call; `attr` is laid out as the kernel reads this command's attribute.
    let result =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &raw mut attr, std::mem::size_of::<InfoByFd>()) };
    (result == 0).then_some(info[4])
}

/// Why the pins of `iface` no longer stand for programs running on the interface of
/// that name, if they do not: the interface is gone, or was deleted and created again
/// (a new device, with none of rewrite's programs). Such pins are stale: `attach`
/// replaces them, and the agent attaches again.
pub fn staleness(pins: &PinLayout, iface: &str) -> Result<Option<&'static str>, Error> {
    let iface_dir = pins.iface_dir(iface)?;
    let Ok(index) = iface::index(iface) else { return Ok(Some("the interface is gone")) };
    for slot in Slot::ALL {
        let recreated = match slot.method(&iface_dir) {
            None | Some(AttachMethod::Unlinked) => false,
            Some(AttachMethod::XdpLink | AttachMethod::Tcx) => {
                link_ifindex(&iface_dir.join(slot.pin_names().1)).is_some_and(|linked| linked != index)
            }
            Some(AttachMethod::Netlink(filter)) => {
                let pinned = pinned_program_id(&iface_dir, slot)?;
                tc::filter_at(iface, filter)?.is_none_or(|found| found.program_id != pinned)
            }
        };
        if recreated {
            return Ok(Some("the interface was deleted and created again: none of rewrite's programs run on it"));
        }
    }
    Ok(None)
}

/// Removes the stale pins of `iface` (see [`staleness`]); nothing of them runs.
fn forget_stale(pins: &PinLayout, iface: &str) -> Result<(), Error> {
    let iface_dir = pins.iface_dir(iface)?;
    std::fs::remove_dir_all(&iface_dir).map_err(|error| Error::io("removing", &iface_dir, error))?;
    pins.forget_version(Some(iface));
    tc::release_clsact(pins, iface)
}

/// The interfaces that have pins, with the ingress hook each was attached with.
pub fn attached(pins: &PinLayout) -> Result<Vec<Attachment>, Error> {
    let dir = pins.ifaces_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io("listing", dir, error)),
    };
    let mut attachments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| Error::io("listing", &dir, error))?;
        let iface = entry.file_name().to_string_lossy().into_owned();
        let ingress = IngressHook::ALL.into_iter().find(|hook| Slot::Ingress(*hook).method(&entry.path()).is_some());
        if let Some(ingress) = ingress {
            attachments.push(Attachment { iface, ingress });
        }
    }
    attachments.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(attachments)
}

/// A build's version: the first 12 hex digits of the SHA-256 of its object file.
pub fn object_version(object: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(object).iter().take(6).map(|byte| format!("{byte:02x}")).collect()
}

/// One program attached to an interface, as its pin shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttachedProgram {
    /// The pin's file name (`egress_tc_prog`, `ingress_xdp_prog`, ...).
    pub pin: String,
    pub name: String,
    pub id: u32,
    /// The kernel's tag of its instructions, in hex.
    pub tag: String,
    /// How it is hooked in: `xdp link`, `tcx link`, or `netlink (<hook> priority P
    /// handle H)`.
    pub attached: String,
}

/// The programs pinned for `iface`, sorted by pin name.
pub fn attached_programs(pins: &PinLayout, iface: &str) -> Result<Vec<AttachedProgram>, Error> {
    let dir = pins.iface_dir(iface)?;
    let entries = std::fs::read_dir(&dir).map_err(|error| Error::io("listing", &dir, error))?;
    let mut programs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|error| Error::io("listing", &dir, error))?.path();
        let Some(pin) = path.file_name().map(|name| name.to_string_lossy().into_owned()) else { continue };
        let Some(slot) = Slot::of_program_pin(&pin) else { continue };
        let info = aya::programs::ProgramInfo::from_pin(&path)
            .map_err(|source| Error::PinnedProgram { path: path.clone(), source: Box::new(source) })?;
        let attached = slot.method(&dir).map_or_else(|| "unknown".to_owned(), |method| method.to_string());
        programs.push(AttachedProgram {
            pin,
            name: info.name_as_str().unwrap_or("?").to_owned(),
            id: info.id(),
            tag: format!("{:016x}", info.tag()),
            attached,
        });
    }
    programs.sort_by(|a, b| a.pin.cmp(&b.pin));
    Ok(programs)
}

/// What [`upgrade`] replaced on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgraded {
    pub iface: String,
    pub program: &'static str,
    pub old_id: u32,
    pub new_id: u32,
}

/// Replaces the programs on every attached interface by those of `object`, atomically
/// per attachment: each pinned link is pointed at the new program (BPF_LINK_UPDATE),
/// and each netlink filter is replaced in place, so every packet meets either the old
/// program or the new one. The new programs share the pinned maps, which keep their
/// contents; a map whose layout the new object does not share is refused before
/// anything changes.
pub fn upgrade(pins: &PinLayout, object: &[u8]) -> Result<Vec<Upgraded>, Error> {
    let mut rewrite_ebpf = load_object(object, &pins.maps_dir(), None)?;
    // The old programs hand ICMP errors to whatever the array holds: the new build's
    // from here on, which expect the same maps.
    install_icmp_errors(&mut rewrite_ebpf)?;
    // The bounce program comes from this binary's own bounce object, loaded only if
    // some interface runs it.
    let mut bounce_ebpf: Option<Ebpf> = None;
    let mut loaded: Vec<&'static str> = Vec::new();
    let mut upgraded = Vec::new();
    for attachment in attached(pins)? {
        let iface = attachment.iface.as_str();
        let iface_dir = pins.iface_dir(iface)?;
        for slot in Slot::ALL {
            let Some(method) = slot.method(&iface_dir) else { continue };
            let program = slot.program();
            let (prog_pin, link_pin) = slot.pin_names();
            let prog_path = iface_dir.join(prog_pin);
            let old_id = pinned_program_id(&iface_dir, slot)?;
            let first_load = !loaded.contains(&program);
            let ebpf = if slot == Slot::Bounce {
                match &mut bounce_ebpf {
                    Some(ebpf) => ebpf,
                    none => none.insert(load_bounce(&pins.maps_dir(), None)?),
                }
            } else {
                &mut rewrite_ebpf
            };
            let link_path = iface_dir.join(link_pin);
            let pinned_link = || {
                aya::programs::links::PinnedLink::from_pin(&link_path)
                    .map(FdLink::from)
                    .map_err(|source| Error::PinnedLink { path: link_path.clone(), source: Box::new(source) })
            };
            match method {
                AttachMethod::XdpLink => {
                    let xdp: &mut Xdp = typed_program(ebpf, program, iface)?;
                    if first_load {
                        xdp.load().map_err(|source| program_error("loading", program, iface, source))?;
                    }
                    let link = aya::programs::xdp::XdpLink::try_from(pinned_link()?)
                        .map_err(|source| Error::PinnedLink { path: link_path.clone(), source: Box::new(source) })?;
                    let id = xdp
                        .attach_to_link(link)
                        .map_err(|source| program_error("replacing", program, iface, source))?;
                    drop(xdp.take_link(id).map_err(|source| program_error("taking the link", program, iface, source))?);
                }
                AttachMethod::Tcx | AttachMethod::Netlink(_) => {
                    let classifier: &mut SchedClassifier = typed_program(ebpf, program, iface)?;
                    if first_load && classifier.fd().is_err() {
                        classifier.load().map_err(|source| program_error("loading", program, iface, source))?;
                    }
                    if let AttachMethod::Netlink(filter) = method {
                        tc::replace_netlink(classifier, program, iface, filter, old_id)?;
                    } else {
                        let link =
                            aya::programs::tc::SchedClassifierLink::try_from(pinned_link()?).map_err(|source| {
                                Error::PinnedLink { path: link_path.clone(), source: Box::new(source) }
                            })?;
                        let id = classifier
                            .attach_to_link(link)
                            .map_err(|source| program_error("replacing", program, iface, source))?;
                        drop(
                            classifier
                                .take_link(id)
                                .map_err(|source| program_error("taking the link", program, iface, source))?,
                        );
                    }
                }
                AttachMethod::Unlinked => continue,
            }
            if first_load {
                loaded.push(program);
            }
            // The hook now runs the new program; the pin names it instead of the old
            // one, which the kernel frees once nothing refers to it.
            std::fs::remove_file(&prog_path).map_err(|error| Error::io("unpinning", &prog_path, error))?;
            let loaded_program = ebpf.program_mut(program).ok_or(Error::NotLoaded { path: prog_path.clone() })?;
            loaded_program
                .pin(&prog_path)
                .map_err(|source| Error::Pin { path: prog_path.clone(), source: Box::new(source) })?;
            let new_id = aya::programs::ProgramInfo::from_pin(&prog_path)
                .map_err(|source| Error::PinnedProgram { path: prog_path.clone(), source: Box::new(source) })?
                .id();
            upgraded.push(Upgraded { iface: attachment.iface.clone(), program, old_id, new_id });
        }
        pins.record_version(iface, &object_version(object))?;
    }
    // The new XDP programs tail-call through the same pinned array; its slot gets this
    // binary's bounce program too.
    if bounce_enabled(pins) && pins.map(MAP_BOUNCE_XDP).exists() {
        let ebpf = match &mut bounce_ebpf {
            Some(ebpf) => ebpf,
            none => none.insert(load_bounce(&pins.maps_dir(), None)?),
        };
        install_bounce_xdp(ebpf, pins)?;
    }
    Ok(upgraded)
}

/// Removes everything rewrite created under `pins`: every interface's links and
/// filters (which detaches the programs) and programs, the maps, and the pin directory
/// itself. Returns the interfaces it detached.
pub fn down(pins: &PinLayout) -> Result<Vec<String>, Error> {
    let interfaces: Vec<String> = attached(pins)?.into_iter().map(|attachment| attachment.iface).collect();
    for iface in &interfaces {
        detach(pins, iface)?;
    }
    // No agent runs (the CLI checks): its lock file is stale.
    pins.remove_run_records();
    match std::fs::remove_dir_all(pins.root()) {
        Ok(()) => Ok(interfaces),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(interfaces),
        Err(error) => Err(Error::io("removing", pins.root(), error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifiers_reason_is_its_last_line_before_the_statistics() {
        let log = "0: (b7) r0 = 0\n; let x = y;\n873: (79) r6 = *(u64 *)(r10 -352)\n\
                   invalid read from stack R10 off=-352 size=8\nverification time 6042596 usec\n\
                   stack depth 0+472+0+0\nprocessed 112045 insns (limit 1000000) max_states_per_insn 12\n";
        assert_eq!(verifier_reason(log), "invalid read from stack R10 off=-352 size=8");
        let log = "1771: (7b) *(u64 *)(r10 -384) = r3\nBPF program is too large. Processed 1000001 insn\n\
                   verification time 15482276 usec\nstack depth 0+472+0+0\n";
        assert_eq!(verifier_reason(log), "BPF program is too large. Processed 1000001 insn");
    }

    #[test]
    fn a_refused_program_is_one_line_and_keeps_the_log_for_verbose() {
        let log = "0: (b7) r0 = 0\nBPF program is too large. Processed 1000001 insn\nprocessed 1000001 insns\n";
        let error = verifier_refusal(PROG_TC_EGRESS, &io::Error::from_raw_os_error(libc::E2BIG), log.to_owned());
        let text = error.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(text.contains("refused program rewrite_tc_egress: BPF program is too large"), "{text}");
        assert!(text.contains("--verbose"), "{text}");
        match error {
            Error::VerifierRefused { log: kept, .. } => assert_eq!(kept, log),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn every_slot_has_its_own_pins_and_tc_slots_their_filter() {
        let mut names: Vec<&str> = Slot::ALL.iter().flat_map(|slot| [slot.pin_names().0, slot.pin_names().1]).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 2 * Slot::ALL.len(), "pin names are unique");
        for slot in Slot::ALL {
            assert_eq!(Slot::of_program_pin(slot.pin_names().0), Some(slot));
            let is_xdp = matches!(slot, Slot::Ingress(IngressHook::XdpDriver | IngressHook::XdpGeneric));
            assert_eq!(slot.filter().is_none(), is_xdp, "{slot:?}");
        }
    }
}

//! Loading the eBPF object, attaching its programs to an interface and pinning them,
//! and detaching. The maps are pinned by name under `<pin dir>/maps`, so every load
//! (one per attached interface) reuses the one table that is already there.

use std::{fmt, io, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::Map,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink},
};
use rewrite_common::bounce::{
    BounceService, BounceSettings, FlowEntry, FlowTuple, MAP_BOUNCE_COUNTERS, MAP_BOUNCE_FLOWS, MAP_BOUNCE_LOG_LEASE,
    MAP_BOUNCE_SERVICES, MAP_BOUNCE_SETTINGS, MAP_BOUNCE_XDP,
};
use rewrite_common::maps::{
    Addr, AddressEntry, Endpoint, EndpointEntry, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_COUNTERS, MAP_PORT_FORWARD,
    MAP_PORT_REVERSE, MAP_PREFIX_FORWARD, MAP_PREFIX_REVERSE, MAP_TABLES_IN_USE, PrefixEntry, TablesInUse,
};

use crate::{Error, iface, pins::PinLayout};

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
const ICMP_ERRORS_PIN_NAMES: (&str, &str) = ("ingress_tc_icmp_errors_prog", "ingress_tc_icmp_errors_link");
/// Bounce mode's TC ingress program, beside the rewrite programs on every attached
/// interface once bounce mode is in use (it returns at once while no service exists).
pub const PROG_TC_BOUNCE: &str = "bounce_tc_ingress";
/// Bounce mode in XDP, reached by a tail call from [`PROG_XDP_INGRESS`] through the
/// `BOUNCE_XDP` program array, not attached itself.
pub const PROG_XDP_BOUNCE: &str = "bounce_xdp_ingress";
const BOUNCE_PIN_NAMES: (&str, &str) = ("ingress_tc_bounce_prog", "ingress_tc_bounce_link");
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
    /// A TC (tcx) ingress program.
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
        match self {
            Self::XdpDriver | Self::XdpGeneric => PROG_XDP_INGRESS,
            Self::Tc => PROG_TC_INGRESS,
        }
    }

    /// The pin file names of the program and its link; they also record the mode.
    const fn pin_names(self) -> (&'static str, &'static str) {
        match self {
            Self::XdpDriver => ("ingress_xdp_prog", "ingress_xdp_link"),
            Self::XdpGeneric => ("ingress_xdp_skb_prog", "ingress_xdp_skb_link"),
            Self::Tc => ("ingress_tc_prog", "ingress_tc_link"),
        }
    }

    const ALL: [Self; 3] = [Self::XdpDriver, Self::XdpGeneric, Self::Tc];
}

impl IngressHook {
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

const EGRESS_PIN_NAMES: (&str, &str) = ("egress_tc_prog", "egress_tc_link");

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

/// [`load`] for any build of the object (`rewrite upgrade --object`).
pub fn load_object(object: &[u8], maps_dir: &Path, max_mappings: Option<u32>) -> Result<Ebpf, Error> {
    if object.is_empty() {
        return Err(Error::BuiltWithoutPrograms);
    }
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(maps_dir);
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
    Ok(ebpf)
}

/// Loads the bounce object with its maps pinned in (or reused from) `maps_dir`.
/// `max_flows` sets the flow table's size (two entries per flow) if this load
/// creates it.
pub fn load_bounce(maps_dir: &Path, max_flows: Option<u32>) -> Result<Ebpf, Error> {
    if BOUNCE_OBJECT.is_empty() {
        return Err(Error::BuiltWithoutPrograms);
    }
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(maps_dir);
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
        if iface_dir.join(BOUNCE_PIN_NAMES.1).exists() {
            continue;
        }
        attach_bounce(&mut ebpf, &iface_dir, &attachment.iface)?;
        enabled.push(attachment.iface);
    }
    Ok(enabled)
}

/// Attaches the loaded bounce program to `iface`, last on its ingress (the rewrite
/// programs pass to it, and a bounced packet leaves the device with a redirect), and
/// pins it.
fn attach_bounce(ebpf: &mut Ebpf, iface_dir: &Path, iface: &str) -> Result<(), Error> {
    let link = attach_tc(ebpf, PROG_TC_BOUNCE, iface, TcAttachType::Ingress)?;
    pin_program_and_link(ebpf, iface_dir, PROG_TC_BOUNCE, BOUNCE_PIN_NAMES, link)
}

/// Loads the bounce object's XDP program and puts it where the XDP ingress programs
/// tail-call it. The pinned program array holds the program from then on.
fn install_bounce_xdp(ebpf: &mut Ebpf, pins: &PinLayout) -> Result<(), Error> {
    let path = pins.map(MAP_BOUNCE_XDP);
    let xdp: &mut Xdp = typed_program(ebpf, PROG_XDP_BOUNCE, "(tail call)")?;
    if xdp.fd().is_err() {
        xdp.load().map_err(|source| program_error("loading", PROG_XDP_BOUNCE, "(tail call)", source))?;
    }
    let program = xdp.fd().map_err(|source| program_error("loading", PROG_XDP_BOUNCE, "(tail call)", source))?;
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
/// programs and links under the interface's pin directory. Either everything is
/// attached and pinned, or nothing is: links that were not pinned detach when the
/// object is dropped, and the pin directory this call reserved is removed again.
pub fn attach(
    pins: &PinLayout,
    iface_name: &str,
    mode: IngressMode,
    max_mappings: Option<u32>,
) -> Result<Attachment, Error> {
    let iface_dir = pins.iface_dir(iface_name)?;
    iface::ensure_ethernet(iface_name)?;
    if iface_dir.exists() {
        return Err(Error::AlreadyAttached { name: iface_name.to_owned(), dir: iface_dir });
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
    let attached = attach_and_pin(pins, &iface_dir, iface_name, hook, fallback_to_tc, max_mappings);
    if attached.is_err() {
        // Unpinning the links that did get pinned detaches them again; a table that
        // this attach created goes too, so a failed first attach leaves nothing.
        let _ = std::fs::remove_dir_all(&iface_dir);
        if creates_table {
            let _ = std::fs::remove_dir_all(pins.maps_dir());
        }
    }
    let ingress = attached?;
    pins.record_version(iface_name, &object_version(EBPF_OBJECT))?;
    Ok(Attachment { iface: iface_name.to_owned(), ingress })
}

fn attach_and_pin(
    pins: &PinLayout,
    iface_dir: &Path,
    iface_name: &str,
    hook: IngressHook,
    fallback_to_tc: bool,
    max_mappings: Option<u32>,
) -> Result<IngressHook, Error> {
    pins.create_dir(&pins.maps_dir())?;
    let mut ebpf = load(&pins.maps_dir(), max_mappings)?;
    let egress_link = attach_tc(&mut ebpf, PROG_TC_EGRESS, iface_name, TcAttachType::Egress)?;
    let (hook, ingress_link) = match hook {
        IngressHook::XdpDriver => match attach_xdp(&mut ebpf, iface_name, XdpMode::Driver) {
            Ok(link) => (hook, link),
            // `auto` chose native XDP for a wire device whose driver turns out not to
            // support it: TC is correct on every device.
            Err(error) if fallback_to_tc && error.is_errno(libc::EOPNOTSUPP) => {
                (IngressHook::Tc, attach_tc(&mut ebpf, PROG_TC_INGRESS, iface_name, TcAttachType::Ingress)?)
            }
            Err(error) => return Err(error),
        },
        IngressHook::XdpGeneric => (hook, attach_xdp(&mut ebpf, iface_name, XdpMode::Skb)?),
        IngressHook::Tc => (hook, attach_tc(&mut ebpf, PROG_TC_INGRESS, iface_name, TcAttachType::Ingress)?),
    };
    pin_program_and_link(&mut ebpf, iface_dir, PROG_TC_EGRESS, EGRESS_PIN_NAMES, egress_link)?;
    pin_program_and_link(&mut ebpf, iface_dir, hook.program(), hook.pin_names(), ingress_link)?;
    if hook != IngressHook::Tc {
        let link = attach_tc(&mut ebpf, PROG_TC_ICMP_ERRORS, iface_name, TcAttachType::Ingress)?;
        pin_program_and_link(&mut ebpf, iface_dir, PROG_TC_ICMP_ERRORS, ICMP_ERRORS_PIN_NAMES, link)?;
    }
    // Where bounce mode is in use, a newly attached interface bounces too.
    if bounce_enabled(pins) {
        attach_bounce(&mut load_bounce(&pins.maps_dir(), None)?, iface_dir, iface_name)?;
    }
    Ok(hook)
}

fn program_error(
    action: &'static str,
    program: &'static str,
    iface: &str,
    source: aya::programs::ProgramError,
) -> Error {
    Error::Program { action, program, iface: iface.to_owned(), source: Box::new(source) }
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

fn attach_tc(ebpf: &mut Ebpf, program: &'static str, iface: &str, hook: TcAttachType) -> Result<FdLink, Error> {
    let classifier: &mut SchedClassifier = typed_program(ebpf, program, iface)?;
    // Loaded once per object, attached once per interface.
    if classifier.fd().is_err() {
        classifier.load().map_err(|source| program_error("loading", program, iface, source))?;
    }
    let link_id =
        classifier.attach(iface, hook).map_err(|source| program_error("attaching", program, iface, source))?;
    let link =
        classifier.take_link(link_id).map_err(|source| program_error("taking the link", program, iface, source))?;
    FdLink::try_from(link).map_err(|source| Error::Link {
        why: "tcx links need Linux 6.6",
        program,
        iface: iface.to_owned(),
        source: Box::new(source),
    })
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
        why: "the kernel fell back to netlink attachment, which cannot be pinned",
        program,
        iface: iface.to_owned(),
        source: Box::new(source),
    })
}

fn pin_program_and_link(
    ebpf: &mut Ebpf,
    iface_dir: &Path,
    program: &'static str,
    (prog_pin, link_pin): (&str, &str),
    link: FdLink,
) -> Result<(), Error> {
    let prog_path = iface_dir.join(prog_pin);
    let loaded = ebpf.program_mut(program).ok_or(Error::NotLoaded { path: prog_path.clone() })?;
    loaded.pin(&prog_path).map_err(|source| Error::Pin { path: prog_path, source: Box::new(source) })?;
    let link_path = iface_dir.join(link_pin);
    link.pin(&link_path).map_err(|source| Error::Pin { path: link_path, source: Box::new(source) })?;
    Ok(())
}

/// Detaches rewrite from `iface` by removing its pins: the links are the last
/// references to the attachments, so the kernel detaches them at once. The shared
/// maps stay, with their mappings, for the other interfaces and later attaches.
pub fn detach(pins: &PinLayout, iface: &str) -> Result<(), Error> {
    let iface_dir = pins.iface_dir(iface)?;
    let links = pinned_link_ids(&iface_dir);
    match std::fs::remove_dir_all(&iface_dir) {
        Ok(()) => {
            pins.forget_version(Some(iface));
            wait_until_released(&links)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Err(Error::NotAttached { name: iface.to_owned(), dir: iface_dir })
        }
        Err(error) => Err(Error::io("removing", iface_dir, error)),
    }
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
        let ingress = IngressHook::ALL.into_iter().find(|hook| entry.path().join(hook.pin_names().1).exists());
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
}

/// The programs pinned for `iface`, sorted by pin name.
pub fn attached_programs(pins: &PinLayout, iface: &str) -> Result<Vec<AttachedProgram>, Error> {
    let dir = pins.iface_dir(iface)?;
    let entries = std::fs::read_dir(&dir).map_err(|error| Error::io("listing", &dir, error))?;
    let mut programs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|error| Error::io("listing", &dir, error))?.path();
        let Some(pin) = path.file_name().map(|name| name.to_string_lossy().into_owned()) else { continue };
        if !pin.ends_with("_prog") {
            continue;
        }
        let info = aya::programs::ProgramInfo::from_pin(&path)
            .map_err(|source| Error::PinnedProgram { path: path.clone(), source: Box::new(source) })?;
        programs.push(AttachedProgram {
            pin,
            name: info.name_as_str().unwrap_or("?").to_owned(),
            id: info.id(),
            tag: format!("{:016x}", info.tag()),
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
/// per attachment: each pinned link is pointed at the new program (BPF_LINK_UPDATE), so
/// every packet meets either the old program or the new one. The new programs share
/// the pinned maps, which keep their contents; a map whose layout the new object does
/// not share is refused before anything changes.
pub fn upgrade(pins: &PinLayout, object: &[u8]) -> Result<Vec<Upgraded>, Error> {
    let mut rewrite_ebpf = load_object(object, &pins.maps_dir(), None)?;
    // The bounce program comes from this binary's own bounce object, loaded only if
    // some interface runs it.
    let mut bounce_ebpf: Option<Ebpf> = None;
    let mut loaded: Vec<&'static str> = Vec::new();
    let mut upgraded = Vec::new();
    for attachment in attached(pins)? {
        let iface_dir = pins.iface_dir(&attachment.iface)?;
        let mut slots =
            vec![(PROG_TC_EGRESS, EGRESS_PIN_NAMES), (attachment.ingress.program(), attachment.ingress.pin_names())];
        if attachment.ingress != IngressHook::Tc {
            slots.push((PROG_TC_ICMP_ERRORS, ICMP_ERRORS_PIN_NAMES));
        }
        // Attachments made before bounce mode existed have no bounce program.
        if iface_dir.join(BOUNCE_PIN_NAMES.1).exists() {
            slots.push((PROG_TC_BOUNCE, BOUNCE_PIN_NAMES));
        }
        for (program, (prog_pin, link_pin)) in slots {
            let iface = attachment.iface.as_str();
            let prog_path = iface_dir.join(prog_pin);
            let old_id = aya::programs::ProgramInfo::from_pin(&prog_path)
                .map_err(|source| Error::PinnedProgram { path: prog_path.clone(), source: Box::new(source) })?
                .id();
            let link_path = iface_dir.join(link_pin);
            let link = FdLink::from(
                aya::programs::links::PinnedLink::from_pin(&link_path)
                    .map_err(|source| Error::PinnedLink { path: link_path.clone(), source: Box::new(source) })?,
            );
            let first_load = !loaded.contains(&program);
            let ebpf = if program == PROG_TC_BOUNCE {
                match &mut bounce_ebpf {
                    Some(ebpf) => ebpf,
                    none => none.insert(load_bounce(&pins.maps_dir(), None)?),
                }
            } else {
                &mut rewrite_ebpf
            };
            if program == PROG_XDP_INGRESS {
                let xdp: &mut Xdp = typed_program(ebpf, program, iface)?;
                if first_load {
                    xdp.load().map_err(|source| program_error("loading", program, iface, source))?;
                }
                let link = aya::programs::xdp::XdpLink::try_from(link)
                    .map_err(|source| Error::PinnedLink { path: link_path.clone(), source: Box::new(source) })?;
                let id =
                    xdp.attach_to_link(link).map_err(|source| program_error("replacing", program, iface, source))?;
                drop(xdp.take_link(id).map_err(|source| program_error("taking the link", program, iface, source))?);
            } else {
                let classifier: &mut SchedClassifier = typed_program(ebpf, program, iface)?;
                if first_load {
                    classifier.load().map_err(|source| program_error("loading", program, iface, source))?;
                }
                let link = aya::programs::tc::SchedClassifierLink::try_from(link)
                    .map_err(|source| Error::PinnedLink { path: link_path.clone(), source: Box::new(source) })?;
                let id = classifier
                    .attach_to_link(link)
                    .map_err(|source| program_error("replacing", program, iface, source))?;
                drop(
                    classifier
                        .take_link(id)
                        .map_err(|source| program_error("taking the link", program, iface, source))?,
                );
            }
            if first_load {
                loaded.push(program);
            }
            // The link now runs the new program; the pin names it instead of the old one,
            // which the kernel frees once nothing refers to it.
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
        pins.record_version(&attachment.iface, &object_version(object))?;
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

/// Removes everything rewrite created under `pins`: every interface's links (which
/// detaches the programs) and programs, the maps, and the pin directory itself.
/// Returns the interfaces it detached.
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

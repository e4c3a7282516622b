//! Attaching rewrite's programs to an interface and pinning them, detaching them, and
//! taking everything down. The maps are pinned by name under `<pin dir>/maps`, so every
//! load (one per attached interface) reuses the one table that is already there.

use std::{io, path::Path};

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkOrder},
        tc::TcAttachOptions,
    },
};
use rewrite_common::pinned::PROG_XDP_INGRESS;

use crate::{
    Error,
    dataplane::{
        iface,
        netlink::ClsactHook,
        objects::{
            EBPF_OBJECT, bounce_enabled, install_icmp_errors, load, load_bounce, object_version, program_error,
            table_capacity, typed_program,
        },
        pins::PinLayout,
        slots::{AttachMethod, IngressHook, IngressMode, Slot},
        status::{Attachment, attached, forget_stale, pinned_program_id, staleness},
        tc::{self, FilterSlot, TcAttach, TcMethod},
    },
};

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
            let existing = table_capacity(pins)?;
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
pub(crate) fn attach_slot(
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
                ClsactHook::Ingress => TcAttachType::Ingress,
                ClsactHook::Egress => TcAttachType::Egress,
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

//! How rewrite's TC programs are attached to an interface.
//!
//! * **tcx** (Linux 6.6 and later): a bpf link per program, pinned beside it. Removing
//!   the pin detaches; `BPF_LINK_UPDATE` replaces the program in place.
//! * **netlink** (older kernels, or `--tc-attach netlink`): a cls_bpf filter in
//!   direct-action mode on the interface's clsact qdisc, which rewrite adds when it is
//!   missing. Each program sits at a fixed priority with a fixed handle
//!   ([`FilterSlot`]), so that `detach`, `down`, `status`, `upgrade` and a restarted
//!   agent find it again without any record. A filter there is only ever replaced or
//!   deleted when it runs one of rewrite's programs (by the name the loader gave it):
//!   someone else's filter at that place is refused, never touched. The qdisc is
//!   deleted again only when rewrite added it and no filter of anyone is left on it.
//!
//! Filters run in priority order (lower first), and rewrite's programs return "next"
//! (TC_ACT_UNSPEC), so filters after them still see every packet.

use std::{fmt, path::PathBuf};

use aya::{
    programs::{
        SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};
use rewrite_common::pinned::{PROGRAMS, ProgramKind};

use crate::{
    Error,
    dataplane::iface,
    dataplane::netlink::{self, BpfFilter, ClsactHook},
    dataplane::pins::PinLayout,
};

/// The kernel release from which TC programs can attach through tcx links.
const TCX_SINCE: KernelVersion = KernelVersion::new(6, 6, 0);
/// The oldest kernel rewrite supports: XDP bpf links (5.9), ring buffers (5.8) and
/// `bpf_redirect_neigh` (5.10) are all there, and the kernel matrix proves the programs
/// load from 5.10 on.
const SUPPORTED_SINCE: KernelVersion = KernelVersion::new(5, 10, 0);

/// Refuses, in one line, a kernel older than the oldest rewrite supports. An unknown
/// version is let through: the loads themselves will say what is missing.
pub fn require_supported_kernel() -> Result<(), Error> {
    require_supported(kernel())
}

fn require_supported(kernel: Option<KernelVersion>) -> Result<(), Error> {
    match kernel {
        Some(version) if version < SUPPORTED_SINCE => Err(Error::KernelLacks {
            feature: "rewrite's programs (XDP links, ring buffers, bpf_redirect_neigh)",
            since: "5.10",
            kernel: version.to_string(),
            instead: "upgrade the kernel, or move this host with a tool that does not use eBPF",
        }),
        _ => Ok(()),
    }
}

/// How `attach` attaches TC programs (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    /// tcx links where the kernel has them (6.6 and later), netlink filters below.
    #[default]
    Auto,
    /// tcx links; refused on kernels before 6.6.
    Tcx,
    /// cls_bpf filters on a clsact qdisc, on any kernel.
    Netlink,
}

/// The method an attached TC program uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMethod {
    Tcx,
    Netlink,
}

impl fmt::Display for TcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        })
    }
}

/// The running kernel's version, or `None` when it cannot be read.
pub fn kernel() -> Option<KernelVersion> {
    KernelVersion::current().ok()
}

impl TcAttach {
    /// The method this choice means on the running kernel.
    pub fn resolve(self) -> Result<TcMethod, Error> {
        self.resolve_for(kernel())
    }

    /// The method this choice means on `kernel` (`None`: unknown, taken as old).
    pub fn resolve_for(self, kernel: Option<KernelVersion>) -> Result<TcMethod, Error> {
        let has_tcx = kernel.is_some_and(|version| version >= TCX_SINCE);
        match self {
            Self::Auto if has_tcx => Ok(TcMethod::Tcx),
            Self::Auto | Self::Netlink => Ok(TcMethod::Netlink),
            Self::Tcx if has_tcx => Ok(TcMethod::Tcx),
            Self::Tcx => Err(Error::KernelLacks {
                feature: "tcx links",
                since: "6.6",
                kernel: kernel.map_or_else(|| "unknown".to_owned(), |version| version.to_string()),
                instead: "use --tc-attach netlink (or auto, the default)",
            }),
        }
    }
}

/// The handle of every cls_bpf filter rewrite adds ("RW"), each at its own priority.
pub const FILTER_HANDLE: u32 = 0x5257;

/// Where one of rewrite's TC programs sits among the filters of a clsact hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterSlot {
    pub hook: ClsactHook,
    pub priority: u16,
}

impl FilterSlot {
    /// The rewrite program of egress, and of ingress where TC is the ingress hook (or
    /// the ICMP-error program beside XDP, which takes the same place).
    pub const REWRITE_EGRESS: Self = Self { hook: ClsactHook::Egress, priority: 0x5257 };
    pub const REWRITE_INGRESS: Self = Self { hook: ClsactHook::Ingress, priority: 0x5257 };
    /// Bounce mode's program, right after the rewrite's on ingress.
    pub const BOUNCE_INGRESS: Self = Self { hook: ClsactHook::Ingress, priority: 0x5258 };

    fn attach_type(self) -> TcAttachType {
        match self.hook {
            ClsactHook::Ingress => TcAttachType::Ingress,
            ClsactHook::Egress => TcAttachType::Egress,
        }
    }
}

impl FilterSlot {
    const fn hook_name(self) -> &'static str {
        match self.hook {
            ClsactHook::Ingress => "ingress",
            ClsactHook::Egress => "egress",
        }
    }

    /// The refusal for a filter of someone else at this place.
    fn taken(self, iface: &str, filter: BpfFilter) -> Error {
        Error::FilterSlotTaken {
            iface: iface.to_owned(),
            slot: self.to_string(),
            hook: self.hook_name(),
            priority: self.priority,
            handle: FILTER_HANDLE,
            filter: filter.name,
            id: filter.program_id,
        }
    }
}

impl fmt::Display for FilterSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} priority {} handle {FILTER_HANDLE:#x}", self.hook_name(), self.priority)
    }
}

/// The filter at `slot` on `iface`, if there is one.
pub fn filter_at(iface: &str, slot: FilterSlot) -> Result<Option<BpfFilter>, Error> {
    let index = iface::index(iface)?;
    let listed = netlink::clsact_filters(index, slot.hook).map_err(|source| Error::Netdevice {
        what: "listing the clsact filters",
        iface: iface.to_owned(),
        source,
    })?;
    Ok(listed.and_then(|(filters, _)| {
        filters.into_iter().find(|filter| filter.priority == slot.priority && filter.handle == FILTER_HANDLE)
    }))
}

/// Whether a filter at one of rewrite's slots is rewrite's own: it runs one of the TC
/// programs of the registry (by the name the filter carries).
fn is_own(filter: &BpfFilter) -> bool {
    PROGRAMS.iter().any(|program| program.kind == ProgramKind::Classifier && program.name == filter.name)
}

fn netlink_error(what: &'static str, iface: &str, program: &'static str, source: aya::programs::ProgramError) -> Error {
    Error::Program { action: what, program, iface: iface.to_owned(), source: Box::new(source) }
}

/// Attaches the loaded `classifier` (the program `program`) at `slot` on `iface` as a
/// cls_bpf filter, adding the clsact qdisc first when the interface has none (and
/// recording that rewrite added it). Returns the program id the filter runs.
pub fn attach_netlink(
    pins: &PinLayout,
    classifier: &mut SchedClassifier,
    program: &'static str,
    iface: &str,
    slot: FilterSlot,
) -> Result<u32, Error> {
    let index = iface::index(iface)?;
    let has_clsact = netlink::has_clsact(index).map_err(|source| Error::Netdevice {
        what: "looking for a clsact qdisc",
        iface: iface.to_owned(),
        source,
    })?;
    if !has_clsact {
        aya::programs::tc::qdisc_add_clsact(iface).map_err(|error| {
            netlink_error("adding a clsact qdisc for", iface, program, aya::programs::ProgramError::from(error))
        })?;
        record_added_clsact(pins, iface)?;
    }
    if let Some(filter) = filter_at(iface, slot)? {
        return Err(slot.taken(iface, filter));
    }
    let options = NlOptions { priority: slot.priority, handle: TcHandle::from(FILTER_HANDLE), classid: None };
    let link_id = classifier
        .attach_with_options(iface, slot.attach_type(), TcAttachOptions::Netlink(options))
        .map_err(|source| netlink_error("attaching", iface, program, source))?;
    keep_attached(
        classifier
            .take_link(link_id)
            .map_err(|source| netlink_error("taking the filter of", iface, program, source))?,
    );
    classifier.info().map(|info| info.id()).map_err(|source| netlink_error("reading", iface, program, source))
}

/// Points rewrite's filter at `slot` on `iface`, which runs `old_program_id`, at the
/// loaded `classifier`, in place: every packet meets either the old program or the new
/// one.
pub fn replace_netlink(
    classifier: &mut SchedClassifier,
    program: &'static str,
    iface: &str,
    slot: FilterSlot,
    old_program_id: u32,
) -> Result<(), Error> {
    match filter_at(iface, slot)? {
        Some(filter) if is_own(&filter) && filter.program_id == old_program_id => {}
        Some(filter) => {
            return Err(slot.taken(iface, filter));
        }
        None => return Err(Error::FilterMissing { iface: iface.to_owned(), slot: slot.to_string() }),
    }
    let link =
        SchedClassifierLink::attached(iface, slot.attach_type(), slot.priority, TcHandle::from(FILTER_HANDLE), None)
            .map_err(|source| Error::Netdevice { what: "finding the filter", iface: iface.to_owned(), source })?;
    let link_id =
        classifier.attach_to_link(link).map_err(|source| netlink_error("replacing", iface, program, source))?;
    keep_attached(
        classifier
            .take_link(link_id)
            .map_err(|source| netlink_error("taking the filter of", iface, program, source))?,
    );
    Ok(())
}

/// A netlink filter stays attached when the process ends; aya deletes it when its link
/// is dropped, so the link is forgotten instead (it holds no descriptor, only the
/// interface index, priority and handle).
fn keep_attached(link: SchedClassifierLink) {
    std::mem::forget(link);
}

/// Deletes the filter at `slot` on `iface` if it runs the program `program_id` (the one
/// rewrite pinned for that place) under one of rewrite's names. Any other filter there
/// is left alone. Returns whether a filter was deleted.
pub fn detach_netlink(iface: &str, slot: FilterSlot, program_id: u32) -> Result<bool, Error> {
    match filter_at(iface, slot)? {
        Some(filter) if is_own(&filter) && filter.program_id == program_id => {}
        _ => return Ok(false),
    }
    let link =
        SchedClassifierLink::attached(iface, slot.attach_type(), slot.priority, TcHandle::from(FILTER_HANDLE), None)
            .map_err(|source| Error::Netdevice { what: "finding the filter", iface: iface.to_owned(), source })?;
    // Dropping an aya netlink link deletes its filter.
    drop(link);
    match filter_at(iface, slot)? {
        Some(filter) if is_own(&filter) => Err(Error::FilterMissing {
            iface: iface.to_owned(),
            slot: format!("{slot} (still attached after the delete)"),
        }),
        _ => Ok(true),
    }
}

/// The record that rewrite added the clsact qdisc of `iface`.
fn clsact_record(pins: &PinLayout, iface: &str) -> PathBuf {
    pins.run_record("clsact").join(iface)
}

fn record_added_clsact(pins: &PinLayout, iface: &str) -> Result<(), Error> {
    let path = clsact_record(pins, iface);
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| Error::io("creating", dir, error))?;
    }
    std::fs::write(&path, b"").map_err(|error| Error::io("writing", &path, error))
}

/// After rewrite's filters are gone from `iface`: deletes the clsact qdisc if rewrite
/// added it and nothing else uses it, and forgets the record either way.
pub fn release_clsact(pins: &PinLayout, iface: &str) -> Result<(), Error> {
    let record = clsact_record(pins, iface);
    if !record.exists() {
        return Ok(());
    }
    let netdevice = |source| Error::Netdevice { what: "releasing the clsact qdisc", iface: iface.to_owned(), source };
    // The interface may be gone, and its qdisc with it.
    if let Ok(index) = iface::index(iface) {
        let mut in_use = 0;
        let mut present = false;
        for hook in [ClsactHook::Ingress, ClsactHook::Egress] {
            if let Some((_, count)) = netlink::clsact_filters(index, hook).map_err(netdevice)? {
                present = true;
                in_use += count;
            }
        }
        if present && in_use == 0 {
            netlink::delete_clsact(index).map_err(netdevice)?;
        }
    }
    let _ = std::fs::remove_file(&record);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_tcx_from_6_6_and_netlink_below() {
        let at = |major, minor| Some(KernelVersion::new(major, minor, 0));
        assert_eq!(TcAttach::Auto.resolve_for(at(6, 6)).expect("auto"), TcMethod::Tcx);
        assert_eq!(TcAttach::Auto.resolve_for(at(6, 18)).expect("auto"), TcMethod::Tcx);
        assert_eq!(TcAttach::Auto.resolve_for(at(6, 1)).expect("auto"), TcMethod::Netlink);
        assert_eq!(TcAttach::Auto.resolve_for(at(5, 10)).expect("auto"), TcMethod::Netlink);
        assert_eq!(TcAttach::Auto.resolve_for(None).expect("auto"), TcMethod::Netlink);
        assert_eq!(TcAttach::Netlink.resolve_for(at(6, 18)).expect("netlink"), TcMethod::Netlink);
    }

    #[test]
    fn kernels_before_5_10_are_refused_in_one_line() {
        assert!(require_supported(Some(KernelVersion::new(5, 10, 0))).is_ok());
        assert!(require_supported(Some(KernelVersion::new(6, 1, 0))).is_ok());
        assert!(require_supported(None).is_ok());
        let text = require_supported(Some(KernelVersion::new(5, 4, 0))).expect_err("5.4 is too old").to_string();
        assert!(text.starts_with("rewrite's programs (XDP links, ring buffers, bpf_redirect_neigh) need Linux >= 5.10, and this kernel is 5.4.0"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn tcx_on_an_old_kernel_is_one_clear_line() {
        let error = TcAttach::Tcx.resolve_for(Some(KernelVersion::new(5, 10, 223))).expect_err("5.10 has no tcx");
        let text = error.to_string();
        assert_eq!(
            text,
            "tcx links need Linux >= 6.6, and this kernel is 5.10.223: use --tc-attach netlink (or auto, the default)"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }
}

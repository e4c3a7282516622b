//! `rewrite upgrade`: new programs in place of the running ones, with no gap.

use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp, links::FdLink},
};
use rewrite_common::bounce::MAP_BOUNCE_XDP;

use crate::{
    Error,
    dataplane::{
        filter::BuildFilter,
        objects::{
            bounce_enabled, install_bounce_xdp, install_icmp_errors, load_bounce, load_object, object_version,
            program_error, typed_program,
        },
        pins::PinLayout,
        slots::{AttachMethod, Slot},
        status::{attached, pinned_program_id},
        tc,
    },
};

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
    // Writers of a build without the filter may have inserted since it was last built:
    // rebuilt from the maps before the new programs trust it.
    let mut rewrite_ebpf = load_object(object, &pins.maps_dir(), None, BuildFilter::Always)?;
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

//! Starting bounce mode: the bounce object's maps and programs, on every attached
//! interface, the way each interface's other programs are attached.

use std::path::Path;

use aya::Ebpf;
use rewrite_common::bounce::MAP_BOUNCE_FLOWS;

use crate::{
    Error,
    dataplane::{
        attach::attach_slot,
        objects::{bounce_enabled, install_bounce_xdp, load_bounce},
        pins::PinLayout,
        slots::{AttachMethod, Slot},
        status::attached,
        tc::{self, TcMethod},
    },
};

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

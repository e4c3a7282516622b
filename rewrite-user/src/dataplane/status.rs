//! What is attached where, as the pins and the kernel show it: the attached interfaces,
//! their programs, and whether an interface's pins still stand for programs that run on
//! it (a deleted and re-created device has none of them).

use std::{io, path::Path};

use crate::{
    Error,
    dataplane::{
        iface,
        pins::PinLayout,
        slots::{AttachMethod, IngressHook, Slot},
        tc,
    },
};

/// An interface rewrite is attached to, and how its ingress hook runs (what
/// [`attach`](crate::dataplane::attach::attach) did).
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ingress: IngressHook,
}

/// The id of the program pinned for `slot` in `iface_dir`.
pub(crate) fn pinned_program_id(iface_dir: &Path, slot: Slot) -> Result<u32, Error> {
    let path = iface_dir.join(slot.pin_names().0);
    aya::programs::ProgramInfo::from_pin(&path)
        .map(|info| info.id())
        .map_err(|source| Error::PinnedProgram { path, source: Box::new(source) })
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
pub(crate) fn forget_stale(pins: &PinLayout, iface: &str) -> Result<(), Error> {
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

/// Kernel memory the pinned maps hold, in bytes: the sum of the `memlock` the kernel
/// reports for each map in `fdinfo`. The hash maps' bucket arrays are sized for their
/// capacity when they are created (`attach --max-mappings`), so most of it is fixed
/// whatever the number of mappings.
pub fn maps_memory(pins: &PinLayout) -> Result<u64, Error> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let maps_dir = pins.maps_dir();
    let entries = std::fs::read_dir(&maps_dir).map_err(|source| Error::Io {
        action: "listing",
        path: maps_dir.clone(),
        source,
    })?;
    let mut total = 0;
    for entry in entries {
        let path = entry.map_err(|source| Error::Io { action: "listing", path: maps_dir.clone(), source })?.path();
        let map = aya::maps::MapData::from_pin(&path).map_err(|source| Error::Io {
            action: "opening the pinned map",
            path: path.clone(),
            source: io::Error::other(source),
        })?;
        let fdinfo = Path::new("/proc/self/fdinfo").join(map.fd().as_fd().as_raw_fd().to_string());
        let info = std::fs::read_to_string(&fdinfo).map_err(|source| Error::Io {
            action: "reading",
            path: fdinfo.clone(),
            source,
        })?;
        total += memlock(&info).ok_or_else(|| Error::Io {
            action: "reading memlock from",
            path: fdinfo,
            source: io::Error::new(io::ErrorKind::InvalidData, "no memlock line"),
        })?;
    }
    Ok(total)
}

/// The `memlock:` value of a map's fdinfo.
fn memlock(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| line.strip_prefix("memlock:")).and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::memlock;

    #[test]
    fn memlock_is_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmemlock:\t69632\nmap_id:\t7\n";
        assert_eq!(memlock(fdinfo), Some(69_632));
        assert_eq!(memlock("map_type:\t1\n"), None, "no memlock line");
    }
}

//! Facts about network interfaces, read through ioctls on a socket so that they are
//! those of the caller's network namespace (sysfs shows the namespace it was mounted
//! in, which `nsenter --net` does not change).

use std::{
    ffi::CString,
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, OwnedFd},
};

use crate::Error;

/// `ARPHRD_ETHER` from linux/if_arp.h.
const ARPHRD_ETHER: u16 = 1;
/// `ETHTOOL_GDRVINFO` from linux/ethtool.h.
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` from linux/ethtool.h.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The interface index of `name`, or [`Error::NoSuchInterface`].
pub fn index(name: &str) -> Result<u32, Error> {
    nix::net::if_::if_nametoindex(name).map_err(|_| Error::NoSuchInterface { name: name.to_owned() })
}

fn control_socket(iface: &str) -> Result<OwnedFd, Error> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|errno| Error::Netdevice {
        what: "opening a control socket",
        iface: iface.to_owned(),
        source: errno.into(),
    })
}

fn ifreq_for(name: &str) -> Result<libc::ifreq, Error> {
    let bytes = CString::new(name).map_err(|_| Error::NoSuchInterface { name: name.to_owned() })?;
    let bytes = bytes.as_bytes_with_nul();
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.len() > request.ifr_name.len() {
        return Err(Error::NoSuchInterface { name: name.to_owned() });
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

/// The link-layer type (`ARPHRD_*`) of `name`.
fn link_type(name: &str) -> Result<u16, Error> {
    let socket = control_socket(name)?;
    let mut request = ifreq_for(name)?;
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr inside `request`.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) };
    if result < 0 {
        return Err(Error::Netdevice {
            what: "reading the link type",
            iface: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: the ioctl succeeded, so the hwaddr member of the union is the one set.
    Ok(unsafe { request.ifr_ifru.ifru_hwaddr.sa_family })
}

/// Checks that `name` exists and carries Ethernet frames, which the programs parse.
pub fn ensure_ethernet(name: &str) -> Result<(), Error> {
    index(name)?;
    match link_type(name)? {
        ARPHRD_ETHER => Ok(()),
        link_type => Err(Error::NotEthernet { name: name.to_owned(), link_type }),
    }
}

/// The driver name and bus address of `name`, as `ethtool -i` shows them. Virtual
/// devices (veth, bridges, tunnels) have no bus address; drivers without ethtool
/// support give `None`.
pub fn driver_info(name: &str) -> Result<Option<(String, String)>, Error> {
    let socket = control_socket(name)?;
    let mut request = ifreq_for(name)?;
    // SAFETY: plain old data; all zeroes is valid.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with GDRVINFO writes at most size_of::<EthtoolDrvinfo>()
    // bytes into `info`, which outlives the call.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if result < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(None),
            _ => {
                Err(Error::Netdevice { what: "reading the driver (ethtool -i)", iface: name.to_owned(), source: error })
            }
        };
    }
    let text = |bytes: &[u8]| {
        let end = bytes.iter().position(|byte| *byte == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    Ok(Some((text(&info.driver), text(&info.bus_info))))
}

/// Whether packets on `name` come from a wire: a device on a bus (PCI, ...), as
/// opposed to a veth, bridge or tunnel. Only such packets are guaranteed to carry
/// complete checksums when XDP sees them.
pub fn is_wire_device(name: &str) -> Result<bool, Error> {
    Ok(match driver_info(name)? {
        Some((_driver, bus_info)) => !bus_info.is_empty() && bus_info != "N/A" && bus_info != "tap",
        None => false,
    })
}

/// Every IPv4 and IPv6 address configured on an interface of this network namespace.
/// Makes `addr` an address of this host (a host route on `lo`), so that packets whose
/// destination ingress restores to it are delivered. Returns whether it was added.
/// Uses iproute2: a netlink client for one address change is not worth its weight.
pub fn ensure_loopback_address(addr: IpAddr) -> Result<bool, Error> {
    if local_addresses()?.contains(&addr) {
        return Ok(false);
    }
    let host = format!("{addr}/{}", if addr.is_ipv4() { 32 } else { 128 });
    let args = ["addr", "add", host.as_str(), "dev", "lo"];
    let command = format!("ip {}", args.join(" "));
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| Error::io("running", &command, source))?;
    if !output.status.success() {
        return Err(Error::Command { command, output: String::from_utf8_lossy(&output.stderr).trim().to_owned() });
    }
    Ok(true)
}

pub fn local_addresses() -> Result<Vec<IpAddr>, Error> {
    let addresses = nix::ifaddrs::getifaddrs().map_err(|errno| Error::Netdevice {
        what: "listing addresses",
        iface: "*".to_owned(),
        source: errno.into(),
    })?;
    Ok(addresses
        .filter_map(|entry| {
            let address = entry.address?;
            match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
                (_, Some(v6)) => Some(IpAddr::V6(v6.ip())),
                _ => None,
            }
        })
        .collect())
}

/// Checks that `name` can be an interface name, before it is used in a pin path:
/// non-empty, at most 15 bytes, and no `/`, whitespace, `.` or `..` (which would
/// point outside the interface's own pin directory).
pub fn validate_name(name: &str) -> Result<(), Error> {
    const IFNAMSIZ: usize = 16;
    let valid = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if valid { Ok(()) } else { Err(Error::InvalidInterfaceName { name: name.to_owned() }) }
}

/// The id of the XDP program attached to `name` in any mode, as `ip link` shows it,
/// whether it was attached through a bpf link or through netlink.
pub fn xdp_program_id(name: &str) -> Result<Option<u32>, Error> {
    crate::dataplane::netlink::xdp_program_id(index(name)?).map_err(|source| Error::Netdevice {
        what: "querying the XDP program",
        iface: name.to_owned(),
        source,
    })
}

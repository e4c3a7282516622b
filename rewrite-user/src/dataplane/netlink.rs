//! Route netlink requests, through netlink-packet-route: the XDP program of an
//! interface, and the clsact qdisc and cls_bpf filters that carry rewrite's TC programs
//! where tcx links do not exist (Linux before 6.6). aya attaches, replaces and deletes
//! the filters itself; this module answers what is there.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The two hooks of a clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClsactHook {
    Ingress,
    Egress,
}

impl ClsactHook {
    /// The parent handle of the hook's filters (`ffff:fff2`, `ffff:fff3`).
    fn parent(self) -> TcHandle {
        let minor = match self {
            Self::Ingress => TcHandle::MIN_INGRESS,
            Self::Egress => TcHandle::MIN_EGRESS,
        };
        TcHandle { major: TcHandle::CLSACT.major, minor }
    }
}

/// One cls_bpf filter on a clsact hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    /// The id of the program it runs, and that program's name as the loader gave it.
    pub program_id: u32,
    pub name: String,
}

/// Sends one request and collects the messages of the reply, until the end of a dump
/// or the acknowledgement. A netlink error comes back as the `io::Error` of its errno.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut replies = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
            let length = usize::try_from(reply.header.length).unwrap_or(0);
            if length == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a netlink message of length 0"));
            }
            offset += length;
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    replies.push(inner);
                    // A plain get answers with one message, and no end-of-dump after it.
                    if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
                        return Ok(replies);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::Error(error) if error.code.is_none() => return Ok(replies),
                NetlinkPayload::Error(error) => return Err(error.to_io()),
                NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                _ => {}
            }
        }
    }
}

fn ifindex_i32(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
}

/// The id of the XDP program attached to the interface in any mode, as `ip link` shows
/// it, whether it was attached through a bpf link or through netlink (0 when the kernel
/// reports one attached without its id).
pub fn xdp_program_id(ifindex: u32) -> io::Result<Option<u32>> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let replies = request(RouteNetlinkMessage::GetLink(link), 0)?;
    let mut attached = false;
    let mut program_id = None;
    for reply in replies {
        let RouteNetlinkMessage::NewLink(link) = reply else { continue };
        for attribute in link.attributes {
            let LinkAttribute::Xdp(xdp) = attribute else { continue };
            for field in xdp {
                match field {
                    LinkXdp::Attached(mode) => attached = mode != XdpAttached::None,
                    LinkXdp::ProgId(id) => program_id = Some(id),
                    _ => {}
                }
            }
        }
    }
    Ok(if attached { program_id.or(Some(0)) } else { None })
}

/// Every filter on a clsact hook of the interface: cls_bpf ones with their program, and
/// the number of filters of any kind. None when the interface has no clsact qdisc.
pub fn clsact_filters(ifindex: u32, hook: ClsactHook) -> io::Result<Option<(Vec<BpfFilter>, usize)>> {
    if !has_clsact(ifindex)? {
        return Ok(None);
    }
    let mut message = TcMessage::default();
    message.header.index = ifindex_i32(ifindex)?;
    message.header.parent = hook.parent();
    let replies = request(RouteNetlinkMessage::GetTrafficFilter(message), NLM_F_DUMP)?;
    let mut filters = Vec::new();
    let mut count = 0;
    for reply in replies {
        let RouteNetlinkMessage::NewTrafficFilter(filter) = reply else { continue };
        let handle = u32::from(filter.header.handle.major) << 16 | u32::from(filter.header.handle.minor);
        // A dump lists each priority's classifier once with handle 0, then its filters.
        if handle == 0 {
            continue;
        }
        count += 1;
        // tcm_info carries the priority in its top 16 bits.
        let priority = (filter.header.info >> 16) as u16;
        let mut bpf = false;
        let (mut program_id, mut name) = (0, String::new());
        for attribute in filter.attributes {
            match attribute {
                TcAttribute::Kind(kind) => bpf = kind == "bpf",
                TcAttribute::Options(options) => {
                    for option in options {
                        match option {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => program_id = id,
                            TcOption::Bpf(TcFilterBpfOption::ProgName(text)) => name = text,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if bpf {
            filters.push(BpfFilter { priority, handle, program_id, name });
        }
    }
    Ok(Some((filters, count)))
}

/// Whether the interface has a clsact qdisc.
pub fn has_clsact(ifindex: u32) -> io::Result<bool> {
    let mut message = TcMessage::default();
    message.header.index = ifindex_i32(ifindex)?;
    let replies = request(RouteNetlinkMessage::GetQueueDiscipline(message), NLM_F_DUMP)?;
    let index = ifindex_i32(ifindex)?;
    Ok(replies.into_iter().any(|reply| {
        matches!(&reply, RouteNetlinkMessage::NewQueueDiscipline(qdisc)
            if qdisc.header.index == index
                && qdisc.attributes.iter().any(|attribute| matches!(attribute, TcAttribute::Kind(kind) if kind == "clsact")))
    }))
}

/// Deletes the interface's clsact qdisc, with every filter still on it.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut message = TcMessage::default();
    message.header.index = ifindex_i32(ifindex)?;
    message.header.parent = TcHandle::CLSACT;
    message.header.handle = TcHandle { major: 0xffff, minor: 0 };
    request(RouteNetlinkMessage::DelQueueDiscipline(message), NLM_F_ACK).map(drop)
}

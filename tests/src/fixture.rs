//! The rewrite programs' BPF_PROG_TEST_RUN fixture: the object loaded with its maps
//! pinned in a private bpffs directory, the programs loaded into the kernel, a table
//! holding address, port-scoped and prefix mappings in both families, and the frame
//! builders the fixtures share. Every case compares the whole output frame byte for
//! byte with the expected one and checks that exactly the expected outcome counter
//! moved.

use std::net::IpAddr;

use rewrite_common::{
    counters::{self, EGRESS, INGRESS, REWRITTEN},
    maps::MappingStats,
    pinned::{PROG_TC_EGRESS, PROG_TC_ICMP_ERRORS, PROG_TC_INGRESS, PROG_XDP_INGRESS},
    spec::MappingSpec,
};
use rewrite_user::table::{
    counters::{Counters, MappingCounters},
    live::MappingTable,
};

use crate::{
    packet::{IpSpec, Transport, hex, verify_checksums},
    programs::LoadedObject,
};

pub const XDP_PASS: u32 = 2;

/// TC_ACT_UNSPEC (-1): "pass, and let the next tcx program or clsact filter run".
pub const TC_NEXT: u32 = u32::MAX;

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

/// This host (unmapped), a peer's VIRTUAL and REAL, and this host's own VIRTUAL/REAL.
pub fn local() -> IpAddr {
    ip("10.100.0.1")
}

pub fn peer_virtual() -> IpAddr {
    ip("10.200.0.2")
}

pub fn peer_real() -> IpAddr {
    ip("10.100.0.2")
}

pub fn own_virtual() -> IpAddr {
    ip("10.200.0.9")
}

pub fn own_real() -> IpAddr {
    ip("10.100.0.9")
}

/// The same roles in IPv6.
pub fn local6() -> IpAddr {
    ip("2001:db8::1")
}

pub fn peer6_virtual() -> IpAddr {
    ip("fd00::2")
}

pub fn peer6_real() -> IpAddr {
    ip("2001:db8::2")
}

pub fn own6_virtual() -> IpAddr {
    ip("fd00::9")
}

pub fn own6_real() -> IpAddr {
    ip("2001:db8::9")
}

/// Port-scoped mappings: one TCP service on a host that also has an address mapping
/// (so the rest of that host moves elsewhere), a UDP range on a host with no address
/// mapping, and an IPv6 service.
pub const PORT_MAPPINGS: [(&str, &str); 3] = [
    ("10.200.0.2:9200/tcp", "10.100.0.30:9400/tcp"),
    ("10.200.0.3:5000-5009/udp", "10.100.0.31:6000-6009/udp"),
    ("[fd00::2]:443/tcp", "[2001:db8::30]:8443/tcp"),
];

/// Prefix mappings: a subnet in each family.
pub const PREFIX_MAPPINGS: [(&str, &str); 2] = [("10.201.0.0/16", "172.20.0.0/16"), ("fd01::/64", "2001:db8:1::/64")];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    XdpIngress,
    TcIngress,
    TcEgress,
    /// The TC program beside XDP that handles ICMP errors only.
    TcIcmpErrors,
}

impl Hook {
    pub const INGRESS: [Self; 2] = [Self::XdpIngress, Self::TcIngress];
    pub const ALL: [Self; 3] = [Self::XdpIngress, Self::TcIngress, Self::TcEgress];

    pub fn direction(self) -> u32 {
        if self == Self::TcEgress { EGRESS } else { INGRESS }
    }

    pub fn program(self) -> &'static str {
        match self {
            Self::XdpIngress => PROG_XDP_INGRESS,
            Self::TcIngress => PROG_TC_INGRESS,
            Self::TcEgress => PROG_TC_EGRESS,
            Self::TcIcmpErrors => PROG_TC_ICMP_ERRORS,
        }
    }
}

/// The object loaded with its maps pinned in a private bpffs directory, the three
/// programs loaded into the kernel, and the table holding two mappings.
#[derive(Debug)]
pub struct Fixture {
    pub object: LoadedObject,
}

impl Fixture {
    pub fn load() -> Self {
        Self::with_capacity(None)
    }

    pub fn with_capacity(max_mappings: Option<u32>) -> Self {
        let programs = [PROG_XDP_INGRESS, PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_TC_ICMP_ERRORS];
        let object = LoadedObject::new("fixture", max_mappings, &programs);
        let mut table = object.table();
        let addresses = [
            (peer_virtual(), peer_real()),
            (own_virtual(), own_real()),
            (peer6_virtual(), peer6_real()),
            (own6_virtual(), own6_real()),
        ]
        .map(|(virtual_addr, real_addr)| MappingSpec::Address { virtual_addr, real_addr });
        let written = PORT_MAPPINGS.into_iter().chain(PREFIX_MAPPINGS).map(|(virtual_side, real_side)| {
            MappingSpec::parse(virtual_side, real_side).unwrap_or_else(|error| panic!("{virtual_side}: {error}"))
        });
        for spec in addresses.into_iter().chain(written) {
            table.add(&spec).unwrap_or_else(|error| panic!("add {spec}: {error}"));
        }
        Self { object }
    }

    pub fn table(&self) -> MappingTable {
        self.object.table()
    }

    /// Runs `hook` on `input`; returns the output frame after checking the verdict.
    pub fn run(&self, hook: Hook, input: &[u8]) -> Vec<u8> {
        let pass = if hook == Hook::XdpIngress { XDP_PASS } else { TC_NEXT };
        let (result, _) = self
            .object
            .test_run(hook.program(), input, 1)
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of {hook:?} failed: {error:?}"));
        assert_eq!(result.verdict, pass, "{hook:?} must let every packet pass");
        result.output
    }

    pub fn counters(&self) -> Counters {
        Counters::read(&self.object.layout).expect("read counters")
    }

    /// Runs `input` through `hook`, expects exactly `expected` back and exactly one
    /// increment of `outcome` in the hook's direction.
    pub fn expect(&self, hook: Hook, input: &[u8], expected: &[u8], outcome: u32) {
        let before = self.counters();
        let output = self.run(hook, input);
        assert!(
            output == expected,
            "{hook:?} output differs from the expected frame\ninput:\n{}\noutput:\n{}\nexpected:\n{}",
            hex(input),
            hex(&output),
            hex(expected)
        );
        let after = self.counters();
        for direction in [INGRESS, EGRESS] {
            for slot in 0..counters::OUTCOMES {
                let delta = after.get(direction, slot) - before.get(direction, slot);
                let wanted = u64::from(direction == hook.direction() && slot == outcome);
                assert_eq!(
                    delta,
                    wanted,
                    "{hook:?}: counter {}/{} moved by {delta}, expected {wanted}",
                    counters::DIRECTION_NAMES[direction as usize],
                    counters::OUTCOME_NAMES[slot as usize]
                );
            }
        }
    }

    /// A valid packet is rewritten to `expected`, whose checksums must verify.
    pub fn expect_rewrite(&self, hook: Hook, input: &IpSpec, expected: &IpSpec) {
        let expected = expected.frame();
        verify_checksums(&expected).expect("the expected frame is valid");
        self.expect(hook, &input.frame(), &expected, REWRITTEN);
    }

    /// `input` comes back byte-identical, counted as `outcome`.
    pub fn expect_unchanged(&self, hook: Hook, input: &[u8], outcome: u32) {
        self.expect(hook, input, input, outcome);
    }
}

/// The address mapping `virtual_addr -> real_addr`.
pub fn address(virtual_addr: IpAddr, real_addr: IpAddr) -> MappingSpec {
    MappingSpec::Address { virtual_addr, real_addr }
}

pub fn all_transports(src: IpAddr, dst: IpAddr) -> [IpSpec; 3] {
    [IpSpec::tcp(src, dst), IpSpec::udp(src, dst), IpSpec::icmp(src, dst)]
}

pub fn tcp_ports(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> IpSpec {
    IpSpec::tcp(src, dst).with_ports(src_port, dst_port)
}

pub fn udp_ports(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> IpSpec {
    IpSpec::udp(src, dst).with_ports(src_port, dst_port)
}

/// The per-mapping counters of the mapping written `written` (`VIRTUAL -> REAL`).
pub fn mapping_stats(fixture: &Fixture, written: &str) -> MappingStats {
    let table = fixture.table();
    let listing = table.list().expect("list");
    let all = MappingCounters::read(&table, &listing).expect("read per-mapping counters");
    all.iter()
        .find(|counted| counted.mapping == written)
        .unwrap_or_else(|| panic!("no counters for {written}; have {all:?}"))
        .stats
}

/// An ICMP (or ICMPv6) error from `src` to `dst` quoting `quoted` (an IP packet), with
/// its checksum computed in full.
pub fn icmp_error(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&rest);
    message.extend_from_slice(quoted);
    let check = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => rewrite_common::checksum::full::icmp(&message),
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            rewrite_common::checksum::full::ipv6_l4(src.octets(), dst.octets(), 58, &message, 2)
        }
        _ => unreachable!("one family"),
    };
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let protocol = if src.is_ipv4() { 1 } else { 58 };
    IpSpec::new(src, dst, Transport::Raw { protocol, bytes: message }).frame()
}

/// `quoted` (an IP packet) with new addresses and ports and, for IPv4, its header
/// checksum recomputed: what the programs make of a quote. The quote's transport
/// checksum is left as it was, as the programs leave it.
pub fn requote(quoted: &[u8], src: IpAddr, dst: IpAddr, ports: Option<(u16, u16)>) -> Vec<u8> {
    let mut out = quoted.to_vec();
    let l4 = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out[12..16].copy_from_slice(&src.octets());
            out[16..20].copy_from_slice(&dst.octets());
            let header_len = usize::from(out[0] & 0x0f) * 4;
            let check = rewrite_common::checksum::full::ipv4_header(&out[..header_len]);
            out[10..12].copy_from_slice(&check.to_be_bytes());
            header_len
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out[8..24].copy_from_slice(&src.octets());
            out[24..40].copy_from_slice(&dst.octets());
            40
        }
        _ => unreachable!("one family"),
    };
    if let Some((src_port, dst_port)) = ports {
        out[l4..l4 + 2].copy_from_slice(&src_port.to_be_bytes());
        out[l4 + 2..l4 + 4].copy_from_slice(&dst_port.to_be_bytes());
    }
    out
}

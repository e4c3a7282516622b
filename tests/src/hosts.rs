//! The two-host topology the end-to-end and agent tests share.

use crate::netns::{Netns, VethEnd, veth};

pub const A_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
pub const B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];

/// Host A (10.100.0.1, runs rewrite on `va`) and host B (10.100.0.2) on one veth
/// pair. A knows B as VIRTUAL 10.200.0.2, routed towards B. Both ends have checksum
/// offload off, so each side computes full checksums and verifies what it receives.
#[derive(Debug)]
pub struct TwoHosts {
    pub a: Netns,
    pub b: Netns,
}

pub const A_REAL: &str = "10.100.0.1";
pub const B_REAL: &str = "10.100.0.2";
pub const B_VIRTUAL: &str = "10.200.0.2";

/// The same hosts in IPv6.
#[derive(Debug)]
pub struct Family {
    pub any: &'static str,
    pub a_real: &'static str,
    pub b_real: &'static str,
    pub b_virtual: &'static str,
}

pub const V4: Family = Family { any: "0.0.0.0", a_real: A_REAL, b_real: B_REAL, b_virtual: B_VIRTUAL };
pub const V6: Family =
    Family { any: "::", a_real: "2001:db8:100::1", b_real: "2001:db8:100::2", b_virtual: "fd00:200::2" };

pub fn two_hosts() -> TwoHosts {
    let a = Netns::new("a");
    let b = Netns::new("b");
    veth(
        VethEnd { netns: &a, name: "va", mac: A_MAC },
        "10.100.0.1/24",
        VethEnd { netns: &b, name: "vb", mac: B_MAC },
        "10.100.0.2/24",
    );
    a.ip(&["route", "add", "10.200.0.0/24", "via", B_REAL]);
    // nodad: the addresses are usable at once, instead of after duplicate detection.
    a.ip(&["addr", "add", "2001:db8:100::1/64", "dev", "va", "nodad"]);
    b.ip(&["addr", "add", "2001:db8:100::2/64", "dev", "vb", "nodad"]);
    a.ip(&["route", "add", "fd00:200::/64", "via", V6.b_real]);
    a.offload("va", false, false);
    b.offload("vb", false, false);
    TwoHosts { a, b }
}

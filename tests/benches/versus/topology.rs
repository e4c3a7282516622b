//! The namespace topology every backend is measured in: a client, a router and a
//! server, built fresh for each measurement so that no backend inherits another's
//! netfilter hooks or conntrack entries.
//!
//! ```text
//! client c0 10.1.0.2/16 (+32 source addresses) -- rc 10.1.0.1/16  router  rs 10.2.0.1/24 -- s0 10.2.0.2/24 server
//! ```
//!
//! Mapping `i` sends VIRTUAL 10.64.0.0 + i to REAL 10.128.0.0 + i. The router routes both
//! blocks to the server, which owns the whole REAL block (a `local` route: any address
//! in it is its own), so one listening socket serves every mapping.

use std::net::Ipv4Addr;

use rewrite_tests::netns::{Netns, VethEnd, veth};

/// Addresses the client sends from: with a single one, every translated connection
/// looks alike on the reply side and netfilter's NAT clash handling dominates.
pub const CLIENT_SOURCES: u32 = 32;
const VIRTUAL_BASE: u32 = u32::from_be_bytes([10, 64, 0, 0]);
const REAL_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
/// Room for 1,048,576 mappings in each block.
const BLOCK: &str = "/12";
pub const ROUTER_TO_SERVER: &str = "rs";
pub const SERVER_IFACE: &str = "s0";

pub fn virtual_addr(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(VIRTUAL_BASE + index)
}

pub fn real_addr(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(REAL_BASE + index)
}

pub fn client_source(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes([10, 1, 1, 0]) + index % CLIENT_SOURCES)
}

pub struct Topology {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
}

impl Topology {
    pub fn new() -> Self {
        let topology = Self { client: Netns::new("bc"), router: Netns::new("br"), server: Netns::new("bs") };
        let (client, router, server) = (&topology.client, &topology.router, &topology.server);
        let end = |netns, name, last: u8| VethEnd { netns, name, mac: [0x02, 0, 0, 0, 0xbe, last] };
        veth(end(client, "c0", 1), "10.1.0.2/16", end(router, "rc", 2), "10.1.0.1/16");
        veth(end(router, ROUTER_TO_SERVER, 3), "10.2.0.1/24", end(server, SERVER_IFACE, 4), "10.2.0.2/24");
        let mut batch = String::new();
        for index in 0..CLIENT_SOURCES {
            batch.push_str(&format!("addr add {}/16 dev c0\n", client_source(index)));
        }
        batch.push_str("route add default via 10.1.0.1\n");
        ip_batch(client, &batch);
        router.sysctl("net.ipv4.ip_forward", "1");
        // VIRTUAL for rewrite (it translates after routing, on the way out), REAL for
        // netfilter (DNAT happens before routing) and for plain routing.
        for base in [VIRTUAL_BASE, REAL_BASE] {
            router.ip(&["route", "add", &format!("{}{BLOCK}", Ipv4Addr::from(base)), "via", "10.2.0.2"]);
        }
        server.ip(&["route", "add", "default", "via", "10.2.0.1"]);
        server.ip(&["route", "add", "local", &format!("{}{BLOCK}", Ipv4Addr::from(REAL_BASE)), "dev", "lo"]);
        // Room for the connection tests' queues.
        server.sysctl("net.core.somaxconn", "65535");
        server.sysctl("net.ipv4.tcp_max_syn_backlog", "65535");
        // XDP patches checksums as if they were complete; the server's replies must be,
        // as they would be from a wire. Same for every backend, so the figures compare.
        server.offload(SERVER_IFACE, false, true);
        client.offload("c0", false, true);
        topology
    }

    /// Packets the server's interface has received.
    pub fn server_rx_packets(&self) -> u64 {
        let out = self.server.ip(&["-j", "-s", "link", "show", SERVER_IFACE]);
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
        links[0]["stats64"]["rx"]["packets"].as_u64().expect("ip -s reports rx packets")
    }

    /// Makes the server drop what arrives for the REAL block in routing, the cheapest
    /// way to sink a packet flood that only the forwarding path is measured on.
    pub fn sink_reals(&self) {
        let block = format!("{}{BLOCK}", Ipv4Addr::from(REAL_BASE));
        self.server.ip(&["route", "del", "local", &block, "dev", "lo"]);
        self.server.ip(&["route", "add", "blackhole", &block]);
    }
}

/// Runs `ip -batch -` in a namespace.
fn ip_batch(netns: &Netns, commands: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["-n", netns.name(), "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run ip -batch");
    child.stdin.take().expect("stdin").write_all(commands.as_bytes()).expect("write ip batch");
    assert!(child.wait().expect("wait for ip").success(), "ip -batch failed in {}", netns.name());
}

//! The bounce topology: a client, a bouncer and a target in three namespaces, on two
//! veth pairs and two subnets. The client has no route to the target's subnet and the
//! target none to the client's, so a flow only works through the bouncer's full NAT.
//! Checksum offload is off on the client's and the target's ends: both compute full
//! checksums and verify what they receive in software.

use std::{net::SocketAddr, path::Path, process::Output};

use crate::{
    cli::{RewriteCli, rewrite_binary},
    netns::{Netns, VethEnd, veth},
};

pub const CLIENT: &str = "10.230.1.2";
/// The bouncer's address on the client's side: the LISTEN address.
pub const LISTEN: &str = "10.230.1.1";
/// The bouncer's address on the target's side: the SOURCE the target sees.
pub const SOURCE: &str = "10.230.2.1";
pub const TARGET: &str = "10.230.2.2";
pub const CLIENT_V6: &str = "fd00:231::2";
pub const LISTEN_V6: &str = "fd00:231::1";
pub const SOURCE_V6: &str = "fd00:232::1";
pub const TARGET_V6: &str = "fd00:232::2";

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
pub const BOUNCER_CLIENT_SIDE_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 1, 0x01];
pub const BOUNCER_TARGET_SIDE_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 2, 0x01];
pub const TARGET_MAC: [u8; 6] = [0x02, 0x7a, 0, 0, 0, 0x02];

/// The three namespaces, with rewrite attached to both of the bouncer's interfaces.
/// Dropping it removes the pins (detaching the programs) and the namespaces.
#[derive(Debug)]
pub struct Bounce {
    // Field order is drop order: the pins go before the namespaces.
    cli: RewriteCli<'static>,
    pub client: &'static Netns,
    pub bouncer: &'static Netns,
    pub target: &'static Netns,
}

impl Bounce {
    /// Builds the topology and attaches rewrite to both of the bouncer's interfaces
    /// with TC ingress; bounce mode starts with the test's first `rewrite bounce add`.
    pub fn set_up() -> Self {
        Self::set_up_with("tc")
    }

    /// The same with `ingress` (`tc` or `xdp`) as the bouncer's ingress hook. With XDP,
    /// the client's and the target's ends get GRO: a veth takes frames redirected
    /// to it in XDP only when its peer polls with NAPI, which GRO turns on (a wire
    /// device's driver always does).
    pub fn set_up_with(ingress: &str) -> Self {
        // Leaked so that the CLI guard can borrow the namespace for the test's life;
        // `Drop` deletes the namespaces all the same.
        let client: &'static Netns = Box::leak(Box::new(Netns::new("bcl")));
        let bouncer: &'static Netns = Box::leak(Box::new(Netns::new("bbo")));
        let target: &'static Netns = Box::leak(Box::new(Netns::new("btg")));
        veth(
            VethEnd { netns: client, name: "vc", mac: CLIENT_MAC },
            "10.230.1.2/24",
            VethEnd { netns: bouncer, name: "vbc", mac: BOUNCER_CLIENT_SIDE_MAC },
            "10.230.1.1/24",
        );
        veth(
            VethEnd { netns: bouncer, name: "vbt", mac: BOUNCER_TARGET_SIDE_MAC },
            "10.230.2.1/24",
            VethEnd { netns: target, name: "vt", mac: TARGET_MAC },
            "10.230.2.2/24",
        );
        client.ip(&["addr", "add", "fd00:231::2/64", "dev", "vc", "nodad"]);
        bouncer.ip(&["addr", "add", "fd00:231::1/64", "dev", "vbc", "nodad"]);
        bouncer.ip(&["addr", "add", "fd00:232::1/64", "dev", "vbt", "nodad"]);
        target.ip(&["addr", "add", "fd00:232::2/64", "dev", "vt", "nodad"]);
        client.offload("vc", false, false);
        target.offload("vt", false, false);
        if ingress == "xdp" {
            client.must("ethtool", &["-K", "vc", "gro", "on"]);
            target.must("ethtool", &["-K", "vt", "gro", "on"]);
        }
        bouncer.sysctl("net.ipv4.ip_forward", "1");
        bouncer.sysctl("net.ipv6.conf.all.forwarding", "1");
        let cli = RewriteCli::new(bouncer);
        for iface in ["vbc", "vbt"] {
            cli.ok(&["attach", "--iface", iface, "--ingress", ingress]);
        }
        Self { cli, client, bouncer, target }
    }

    /// `rewrite ARGS` on the bouncer; panics unless it succeeds.
    pub fn rewrite(&self, args: &[&str]) -> String {
        self.cli.ok(args)
    }

    /// `rewrite ARGS` on the bouncer; panics if it succeeds, returns its stderr.
    pub fn rewrite_fails(&self, args: &[&str]) -> String {
        self.cli.fails(args)
    }

    pub fn pin_dir(&self) -> &Path {
        self.cli.pins().path()
    }

    /// Starts `rewrite bounce log --json ARGS` on the bouncer; the output is read when
    /// it exits (`--count` or `--timeout` bound it).
    pub fn start_log(&self, args: &[&str]) -> std::process::Child {
        self.bouncer
            .command(rewrite_binary().to_str().expect("utf-8 path"))
            .arg("--pin-dir")
            .arg(self.pin_dir())
            .args(["bounce", "log", "--json"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start rewrite bounce log")
    }

    /// `rewrite bounce stats --json` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.rewrite(&["bounce", "stats", "--json"])).expect("stats JSON")
    }

    /// One counter of `rewrite bounce stats`.
    pub fn counter(&self, name: &str) -> u64 {
        let stats = self.stats();
        stats["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {stats}"))
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // The namespaces were leaked for the borrow; delete them here (the pins go
        // with `cli` after this body).
        for netns in [self.client, self.bouncer, self.target] {
            let _ = std::process::Command::new("ip").args(["netns", "del", netns.name()]).status();
        }
    }
}

/// One of `ethtool -S IFACE`'s statistics in `netns`.
pub fn nic_stat(netns: &Netns, iface: &str, name: &str) -> u64 {
    let output = netns.must("ethtool", &["-S", iface]);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|line| line.trim().split_once(": "))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("ethtool -S {iface} has no {name}: {text}"))
}

/// The events a finished `bounce log --json` printed, one JSON object per line.
pub fn log_events(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "rewrite bounce log failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("event {line:?}: {error}")))
        .collect()
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an address"), port)
}

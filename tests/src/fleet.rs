//! A fleet for tests: a hub namespace with a bridge and a real etcd (Debian's
//! etcd-server) listening inside it, and node namespaces on the bridge, each with its
//! own pins and config for an agent. The hub also routes: nodes reach the overlay
//! (VIRTUAL) addresses through it, since nobody answers ARP for an overlay address.
//!
//! Every piece is behind a guard: etcd is killed and its data directory removed, the
//! namespaces deleted and the pins removed on drop, also when a test panics.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{
    agent::{AgentProcess, ConfigFile},
    cli::rewrite_binary,
    netns::{Netns, PinDir, must},
};

/// The hub's address on the bridge, where etcd listens for the nodes.
pub const HUB_ADDR: &str = "10.210.0.1";
pub const ETCD_PORT: u16 = 2379;
/// The overlay the nodes route through the hub.
pub const OVERLAY: &str = "100.64.0.0/16";
/// Every test's fleet table (each test runs its own etcd).
pub const PREFIX: &str = "/rewrite/test";

/// The REAL address of node `index` (1-based) on the bridge.
pub fn node_real(index: usize) -> String {
    format!("10.210.0.{}", 10 + index)
}

pub use crate::wait::wait_until_explained as wait_until;

/// A real etcd in a namespace, with its data in a temporary directory on tmpfs. Killed
/// (not stopped gracefully: a crash is what the agents must survive) on drop.
#[derive(Debug)]
pub struct Etcd {
    netns_path: PathBuf,
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd inside `netns`, serving clients on `client_urls` (comma-separated)
    /// with `extra` flags (TLS files), and waits until it serves.
    pub fn start(netns: &Netns, client_urls: &str, extra: &[String]) -> Self {
        let name = format!("{}-etcd", netns.name());
        let data_dir = PathBuf::from("/dev/shm").join(&name);
        let _ = std::fs::remove_dir_all(&data_dir);
        // The peer URL on loopback, on a port no client URL uses: a one-member cluster.
        let peer = "http://127.0.0.1:2380";
        let mut args: Vec<String> = [
            "--name",
            &name,
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--listen-client-urls",
            client_urls,
            "--advertise-client-urls",
            client_urls,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            &format!("{name}={peer}"),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend_from_slice(extra);
        let log = std::env::temp_dir().join(format!("rewrite-test-{name}.log"));
        let mut etcd = Self { netns_path: netns.path(), name, data_dir, log, args, child: None };
        etcd.restart();
        etcd
    }

    /// Starts (again) on the same data, and waits until it serves clients.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd {} is already running", self.name);
        let log =
            std::fs::File::create(&self.log).unwrap_or_else(|error| panic!("create {}: {error}", self.log.display()));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path.display()))
            .arg("--")
            .arg("etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start etcd: {error} (run `cargo xtask setup`, which installs etcd-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains("ready to serve client requests") {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited at start ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "etcd does not serve after 20 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// etcd's process id while it runs (nsenter execs etcd in its own place).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An etcd gRPC proxy in a namespace (`etcd grpc-proxy start`), killed on drop.
#[derive(Debug)]
pub struct GrpcProxy {
    child: Child,
}

impl GrpcProxy {
    /// Starts a proxy inside `netns` listening on `listen` (ADDR:PORT) for the etcd at
    /// `upstream` (ADDR:PORT), and waits until it accepts connections.
    pub fn start(netns: &Netns, listen: &str, upstream: &str) -> Self {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .args(["--", "etcd", "grpc-proxy", "start"])
            .arg(format!("--endpoints={upstream}"))
            .arg(format!("--listen-addr={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start etcd grpc-proxy: {error}"));
        let proxy = Self { child };
        let address: std::net::SocketAddr = listen.parse().expect("ADDR:PORT");
        let deadline = Instant::now() + Duration::from_secs(20);
        while netns.run(|| std::net::TcpStream::connect(address).is_err()) {
            assert!(Instant::now() < deadline, "the gRPC proxy on {listen} does not listen after 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node of the fleet: a namespace on the bridge (its `eth0` has the node's REAL
/// address), pins, and the config its agent reads (attach `eth0`).
#[derive(Debug)]
pub struct Node {
    pub index: usize,
    pub netns: Netns,
    pub pins: PinDir,
    pub config: ConfigFile,
}

impl Node {
    pub fn real(&self) -> String {
        node_real(self.index)
    }

    /// `rewrite map list` on this node, one mapping per line.
    pub fn map_list(&self) -> String {
        let out = self
            .netns
            .command(rewrite_binary().to_str().expect("utf-8 path"))
            .arg("--pin-dir")
            .arg(self.pins.path())
            .args(["map", "list"])
            .output()
            .expect("run rewrite map list");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rewrite status` on this node.
    pub fn status(&self) -> String {
        let out = self
            .netns
            .command(rewrite_binary().to_str().expect("utf-8 path"))
            .arg("--pin-dir")
            .arg(self.pins.path())
            .arg("status")
            .output()
            .expect("run rewrite status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether this node's maps hold `virtual_side -> real_side`.
    pub fn has_mapping(&self, virtual_side: &str, real_side: &str) -> bool {
        let wanted = format!("{virtual_side} -> {real_side}");
        self.map_list().lines().any(|line| line == wanted)
    }

    /// Whether this node's maps hold a mapping of `virtual_side`.
    pub fn maps_virtual(&self, virtual_side: &str) -> bool {
        let wanted = format!("{virtual_side} -> ");
        self.map_list().lines().any(|line| line.starts_with(&wanted))
    }

    /// Runs this node's agent following the fleet table, with `extra` arguments
    /// (registration). Short keepalive and retry pauses, so that outages are noticed
    /// and ended within seconds.
    pub fn start_agent(&self, extra: &[&str]) -> AgentProcess<'_> {
        let mut agent = self.spawn_agent(extra);
        agent.wait_serving();
        agent
    }

    /// Like [`Self::start_agent`], without waiting for it to serve.
    pub fn spawn_agent(&self, extra: &[&str]) -> AgentProcess<'_> {
        self.spawn_agent_on(PREFIX, extra)
    }

    /// Like [`Self::spawn_agent`], following the table at `prefix`.
    pub fn spawn_agent_on(&self, prefix: &str, extra: &[&str]) -> AgentProcess<'_> {
        let url = format!("http://{HUB_ADDR}:{ETCD_PORT}");
        let mut args = vec![
            "--config",
            self.config.as_arg(),
            "--etcd",
            &url,
            "--prefix",
            prefix,
            "--etcd-keepalive",
            "2",
            "--etcd-retry-max",
            "1",
        ];
        args.extend_from_slice(extra);
        AgentProcess::spawn_with(&self.netns, self.pins.path(), &args, 9464)
    }

    /// Routes the overlay from `source` (this node's own VIRTUAL), as an operator of an
    /// overlay does, so that connections this node opens come from its VIRTUAL.
    pub fn route_overlay_from(&self, source: &str) {
        self.netns.ip(&["route", "replace", OVERLAY, "via", HUB_ADDR, "src", source]);
    }
}

/// The hub with etcd, and `count` nodes.
#[derive(Debug)]
pub struct Fleet {
    // Declared first so that it is dropped first: etcd dies before its namespace goes.
    pub etcd: Etcd,
    pub nodes: Vec<Node>,
    pub hub: Netns,
}

impl Fleet {
    pub fn new(count: usize) -> Self {
        let hub = Netns::new("hub");
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["addr", "add", &format!("{HUB_ADDR}/24"), "dev", "br0"]);
        hub.ip(&["link", "set", "br0", "up"]);
        hub.sysctl("net.ipv4.ip_forward", "1");
        // The hub routes between nodes of one subnet: no redirects telling them to go
        // direct, which would add route exceptions the test did not ask for.
        for scope in ["all", "default", "br0"] {
            hub.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0");
        }
        let nodes = (1..=count)
            .map(|index| {
                let netns = Netns::new(&format!("node{index}"));
                let hub_end = format!("n{index}");
                let mac = format!("02:21:00:00:00:{index:02x}");
                must(
                    "ip",
                    &[
                        "link",
                        "add",
                        "eth0",
                        "address",
                        &mac,
                        "netns",
                        netns.name(),
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &hub_end,
                        "netns",
                        hub.name(),
                    ],
                );
                netns.ip(&["addr", "add", &format!("{}/24", node_real(index)), "dev", "eth0"]);
                netns.ip(&["link", "set", "eth0", "up"]);
                netns.ip(&["route", "add", OVERLAY, "via", HUB_ADDR]);
                hub.ip(&["link", "set", &hub_end, "master", "br0", "up"]);
                let pins = PinDir::new(netns.name());
                let config = ConfigFile::new(
                    &format!("{}-node", netns.name()),
                    "[[interface]]\nname = \"eth0\"\ningress = \"tc\"\n",
                );
                Node { index, netns, pins, config }
            })
            .collect();
        let etcd = Etcd::start(&hub, &format!("http://{HUB_ADDR}:{ETCD_PORT},http://127.0.0.1:{ETCD_PORT}"), &[]);
        Self { etcd, nodes, hub }
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index - 1]
    }

    /// `rewrite fleet ARGS` in the hub, against its etcd on loopback.
    pub fn fleet(&self, args: &[&str]) -> Output {
        let url = format!("http://127.0.0.1:{ETCD_PORT}");
        self.hub
            .command(rewrite_binary().to_str().expect("utf-8 path"))
            .args(["fleet", "--etcd", &url, "--prefix", PREFIX])
            .args(args)
            .output()
            .expect("run rewrite fleet")
    }

    /// `rewrite fleet ARGS`, which must succeed; returns its stdout.
    pub fn fleet_ok(&self, args: &[&str]) -> String {
        let out = self.fleet(args);
        assert!(
            out.status.success(),
            "rewrite fleet {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The claims of `pool`: VIRTUAL address -> node id.
    pub fn claims(&self, pool: &str) -> BTreeMap<IpAddr, String> {
        let text = self.fleet_ok(&["pool", "list", "--json"]);
        let pools: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"));
        let pool = pools
            .as_array()
            .and_then(|pools| pools.iter().find(|entry| entry["name"] == pool))
            .unwrap_or_else(|| panic!("no pool {pool} in {text}"));
        pool["claims"]
            .as_object()
            .expect("claims object")
            .iter()
            .map(|(address, claim)| {
                let address = address.parse().expect("claimed address");
                (address, claim["node"].as_str().expect("node id").to_owned())
            })
            .collect()
    }

    /// The VIRTUAL address `node_id` claimed in `pool`.
    pub fn claim_of(&self, pool: &str, node_id: &str) -> IpAddr {
        let claims = self.claims(pool);
        claims
            .iter()
            .find_map(|(address, node)| (node == node_id).then_some(*address))
            .unwrap_or_else(|| panic!("{node_id} holds no address of {pool}: {claims:?}"))
    }
}

/// A CA, a server certificate for one IP address and a client certificate, made with
/// openssl in a directory removed on drop.
#[derive(Debug)]
pub struct Certificates {
    dir: std::path::PathBuf,
}

impl Certificates {
    pub fn new(server_ip: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rewrite-test-{}-tls-{server_ip}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let certificates = Self { dir };
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(&certificates.dir)
                .args(args)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=rewrite-test-ca",
        ]);
        for (name, extension) in
            [("server", format!("subjectAltName=IP:{server_ip}")), ("client", "extendedKeyUsage=clientAuth".to_owned())]
        {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ]);
            std::fs::write(certificates.dir.join(format!("{name}.ext")), extension).expect("write an extension file");
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        certificates
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

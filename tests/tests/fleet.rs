//! The fleet control plane on a real etcd: agents in three namespaces follow one fleet
//! table, nodes register and claim VIRTUAL addresses from a pool, and real TCP and UDP
//! traffic flows between the nodes on those addresses.

use std::{
    fmt::Display,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use rewrite_tests::{
    agent::{AgentProcess, sample},
    fleet::{Certificates, Etcd, Fleet, HUB_ADDR, Node, PREFIX, wait_until},
    netns::Netns,
    traffic::{UdpReport, tcp_exchange, udp_echo},
};
use rewrite_user::fleet::{FleetError, Leases, MappingExpiry, NodeOptions, Store, StoreOptions};

const SYNC: Duration = Duration::from_secs(10);

fn metric(agent: &AgentProcess<'_>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(&agent.scrape().unwrap_or_default(), name, labels)
}

fn wait_metric(
    agent: &AgentProcess<'_>,
    what: &str,
    name: &'static str,
    labels: &[(&str, &str)],
    wanted: impl Fn(f64) -> bool,
) {
    agent.wait_for(what, SYNC, |text| sample(text, name, labels).is_some_and(&wanted));
}

fn register_args(node: &Node, pool: &str) -> Vec<String> {
    ["--node", &format!("node{}", node.index), "--node-real", &node.real(), "--pool", pool, "--lease-ttl", "3"]
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn start_registered<'a>(node: &'a Node, pool: &str) -> AgentProcess<'a> {
    let args = register_args(node, pool);
    node.start_agent(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an address"), port)
}

/// `count` datagrams from `client` to port 7000 of `virtual_ip`, echoed by a server on
/// `server`'s port 7000.
fn echo_to_virtual(server: &Node, client: &Node, virtual_ip: impl Display, count: u32, wait: Duration) -> UdpReport {
    udp_echo(&server.netns, addr("0.0.0.0", 7000), &client.netns, addr(&virtual_ip.to_string(), 7000), count, wait)
}

fn wait_for_mapping(node: &Node, virtual_side: &str, real_side: &str) {
    wait_until(
        &format!("node {} maps {virtual_side} -> {real_side}", node.index),
        SYNC,
        || node.has_mapping(virtual_side, real_side),
        || node.map_list(),
    );
}

fn wait_for_no_mapping(node: &Node, virtual_side: &str) {
    wait_until(
        &format!("node {} no longer maps {virtual_side}", node.index),
        SYNC,
        || !node.maps_virtual(virtual_side),
        || node.map_list(),
    );
}

#[test]
fn registered_nodes_claim_stable_addresses_and_reach_each_other_on_them() {
    let fleet = Fleet::new(3);
    fleet.fleet_ok(&["pool", "add", "overlay", "100.64.0.0/24"]);
    let mut agents: Vec<AgentProcess<'_>> = fleet.nodes.iter().map(|node| start_registered(node, "overlay")).collect();
    for agent in &agents {
        wait_metric(agent, "registered", "rewrite_fleet_registered", &[], |value| value == 1.0);
    }
    let virtuals: Vec<IpAddr> = (1..=3).map(|index| fleet.claim_of("overlay", &format!("node{index}"))).collect();
    assert_eq!(fleet.claims("overlay").len(), 3, "one claim per node");
    for (index, virtual_addr) in virtuals.iter().enumerate() {
        let (text, owner) = (virtual_addr.to_string(), fleet.node(index + 1));
        assert!(text.starts_with("100.64.0.") && text != "100.64.0.0" && text != "100.64.0.255", "{text}");
        for node in fleet.nodes.iter().filter(|node| node.index != owner.index) {
            wait_for_mapping(node, &text, &owner.real());
        }
        // A node does not rewrite traffic to itself: its own mapping stays out of its
        // maps (it would turn every packet to its REAL into one to its VIRTUAL).
        assert!(!owner.maps_virtual(&text), "node {} must not map its own VIRTUAL:\n{}", owner.index, owner.map_list());
        assert_eq!(metric(&agents[index], "rewrite_fleet_own_mappings", &[]), Some(1.0));
        // The agent made its claimed VIRTUAL an address of its host, so that the host
        // reaches its own VIRTUAL too.
        let lo = String::from_utf8_lossy(&owner.netns.ip(&["-o", "addr", "show", "dev", "lo"]).stdout).into_owned();
        assert!(lo.contains(&format!("{text}/32")), "node {} lo lacks {text}: {lo}", owner.index);
    }

    // UDP from node 1 to node 2's VIRTUAL: node 2 sees node 1's VIRTUAL, and the echoes
    // come back from node 2's VIRTUAL.
    let (v1, v2, v3) = (virtuals[0], virtuals[1], virtuals[2]);
    let report = echo_to_virtual(fleet.node(2), fleet.node(1), v2, 20, Duration::from_secs(2));
    assert_eq!(report.echoed, 20, "every datagram to node 2's VIRTUAL is echoed: {report:?}");
    assert!(
        report.server_sources.iter().all(|source| source.ip() == v1),
        "node 2 must see node 1's VIRTUAL: {report:?}"
    );
    assert!(
        report.echo_sources.iter().all(|source| source.ip() == v2),
        "echoes must come from node 2's VIRTUAL: {report:?}"
    );
    // TCP from node 3 to node 1's VIRTUAL, 256 KiB each way checked by hash.
    let tcp = tcp_exchange(
        &fleet.node(1).netns,
        addr("0.0.0.0", 7001),
        &fleet.node(3).netns,
        SocketAddr::new(v1, 7001),
        256 * 1024,
    );
    assert_eq!(tcp.client_seen_by_server.ip(), v3, "node 1 must see node 3's VIRTUAL");

    // A restarted node gets the same VIRTUAL back: its claim is stable.
    agents.remove(1).kill();
    let restarted = start_registered(fleet.node(2), "overlay");
    wait_metric(&restarted, "registered again", "rewrite_fleet_registered", &[], |value| value == 1.0);
    assert!(
        restarted.log().contains(&format!("\"virtual_addr\":\"{v2}\"")),
        "node 2 must register {v2} again:\n{}",
        restarted.log()
    );
    assert_eq!(fleet.claim_of("overlay", "node2"), v2);
    assert_eq!(fleet.claims("overlay").len(), 3, "a restart claims nothing new");
    drop(agents);
}

#[test]
fn a_mapping_added_with_fleet_add_reaches_every_node_and_a_deleted_one_stops_working() {
    let fleet = Fleet::new(3);
    // Node 3 is known to the others as 100.64.1.3.
    let (v3, r3) = ("100.64.1.3", fleet.node(3).real());
    let agents: Vec<AgentProcess<'_>> = fleet.nodes.iter().map(|node| node.start_agent(&[])).collect();
    for agent in &agents {
        wait_metric(agent, "connected", "rewrite_fleet_connected", &[], |value| value == 1.0);
    }
    let before = echo_to_virtual(fleet.node(3), fleet.node(1), v3, 2, Duration::from_millis(300));
    assert_eq!(before.echoed, 0, "before the mapping, {v3} must not be reachable: {before:?}");

    assert_eq!(fleet.fleet_ok(&["add", v3, &r3, "--label", "node3"]).trim(), format!("added {v3} -> {r3}"));
    for node in &fleet.nodes[..2] {
        wait_for_mapping(node, v3, &r3);
    }
    wait_metric(&agents[2], "node 3 knows the mapping is its own", "rewrite_fleet_own_mappings", &[], |value| {
        value == 1.0
    });
    assert!(!fleet.node(3).maps_virtual(v3), "node 3 must not map itself:\n{}", fleet.node(3).map_list());
    for client in [1, 2] {
        let report = echo_to_virtual(fleet.node(3), fleet.node(client), v3, 10, Duration::from_secs(2));
        assert_eq!(report.echoed, 10, "node {client} must reach {v3}: {report:?}");
        let real = fleet.node(client).real();
        assert!(report.server_sources.iter().all(|source| source.ip().to_string() == real), "{report:?}");
        assert!(report.echo_sources.iter().all(|source| source.ip().to_string() == v3), "{report:?}");
    }
    let listed = fleet.fleet_ok(&["list"]);
    assert!(listed.contains(&format!("{v3} -> {r3}  # node3")), "{listed}");

    // The same checks as `apply`: a REAL claimed twice is refused, and nothing changes.
    let refused = fleet.fleet(&["add", "100.64.1.4", &r3]);
    assert!(!refused.status.success(), "a second VIRTUAL for {r3} must be refused");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("refuses") && message.contains(&r3), "unclear refusal: {message}");
    assert_eq!(fleet.fleet_ok(&["list"]), listed, "a refused add must change nothing");

    assert_eq!(fleet.fleet_ok(&["del", v3]).trim(), format!("deleted {v3} -> {r3}"));
    for node in &fleet.nodes[..2] {
        wait_for_no_mapping(node, v3);
    }
    for client in [1, 2] {
        let after = echo_to_virtual(fleet.node(3), fleet.node(client), v3, 3, Duration::from_millis(300));
        assert_eq!(after.echoed, 0, "after the delete, node {client} must not reach {v3}: {after:?}");
    }
    let missing = fleet.fleet(&["del", v3]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no fleet mapping for VIRTUAL 100.64.1.3"),
        "{missing:?}"
    );
    drop(agents);
}

#[test]
fn traffic_outlives_an_etcd_outage_and_a_cut_off_agent_converges_after_reconnecting() {
    let mut fleet = Fleet::new(3);
    let r3 = fleet.node(3).real();
    fleet.fleet_ok(&["add", "100.64.1.3", &r3]);
    let (etcd, nodes) = (&mut fleet.etcd, &fleet.nodes);
    let agents: Vec<AgentProcess<'_>> = nodes.iter().map(|node| node.start_agent(&[])).collect();
    for node in &nodes[..2] {
        wait_for_mapping(node, "100.64.1.3", &r3);
    }

    // etcd dies: every agent notices, and traffic on the mappings they have goes on.
    etcd.kill();
    for agent in &agents {
        wait_metric(agent, "disconnected", "rewrite_fleet_connected", &[], |value| value == 0.0);
    }
    let during = echo_to_virtual(&nodes[2], &nodes[0], "100.64.1.3", 20, Duration::from_secs(2));
    assert_eq!(during.echoed, 20, "traffic must go on while etcd is down: {during:?}");
    assert!(nodes[0].has_mapping("100.64.1.3", &r3), "the dataplane keeps the last state it knew");
    etcd.restart();
    for agent in &agents {
        wait_metric(agent, "reconnected", "rewrite_fleet_resyncs_total", &[("reason", "reconnect")], |value| {
            value >= 1.0
        });
        wait_metric(agent, "connected", "rewrite_fleet_connected", &[], |value| value == 1.0);
        assert!(metric(agent, "rewrite_fleet_disconnects_total", &[]).is_some_and(|value| value >= 1.0));
    }

    // Node 1 alone loses etcd (its packets to etcd vanish, so only the keepalive can
    // tell), and the table changes meanwhile.
    let cut = ["OUTPUT", "-p", "tcp", "-d", HUB_ADDR, "--dport", "2379", "-j", "DROP"];
    nodes[0].netns.must("iptables", &[&["-I"], &cut[..]].concat());
    wait_metric(&agents[0], "node 1 cut off", "rewrite_fleet_connected", &[], |value| value == 0.0);
    drop(fleet_ok_in(&nodes[1], &["del", "100.64.1.3"]));
    drop(fleet_ok_in(&nodes[1], &["add", "100.64.1.33", &r3]));
    wait_for_mapping(&nodes[1], "100.64.1.33", &r3);
    wait_for_no_mapping(&nodes[1], "100.64.1.3");
    assert!(nodes[0].has_mapping("100.64.1.3", &r3), "a cut-off node cannot know of the change yet");
    nodes[0].netns.must("iptables", &[&["-D"], &cut[..]].concat());
    wait_for_mapping(&nodes[0], "100.64.1.33", &r3);
    wait_for_no_mapping(&nodes[0], "100.64.1.3");
    assert!(
        metric(&agents[0], "rewrite_fleet_resyncs_total", &[("reason", "reconnect")]).is_some_and(|value| value >= 2.0)
    );
    let after = echo_to_virtual(&nodes[2], &nodes[0], "100.64.1.33", 10, Duration::from_secs(2));
    assert_eq!(after.echoed, 10, "node 1 reaches the new mapping after converging: {after:?}");
    drop(agents);
}

/// A routine restart of the agent (`systemctl restart`) while etcd is down must not take
/// the fleet away: the new agent, with no copy of the table, keeps what the maps hold
/// beyond its local config, says it is stale, and catches up (a delete made meanwhile
/// included) once etcd is back. A UDP stream through the fleet mapping loses nothing.
#[test]
fn an_agent_restarted_during_an_etcd_outage_keeps_the_fleet_and_catches_up() {
    let mut fleet = Fleet::new(3);
    let r3 = fleet.node(3).real();
    fleet.fleet_ok(&["add", "100.64.1.3", &r3]);
    fleet.fleet_ok(&["add", "100.64.1.4", "10.99.0.4"]);
    let (etcd, nodes) = (&mut fleet.etcd, &fleet.nodes);
    let agent = nodes[0].start_agent(&[]);
    wait_for_mapping(&nodes[0], "100.64.1.3", &r3);
    wait_metric(&agent, "in sync", "rewrite_fleet_stale", &[], |value| value == 0.0);

    etcd.kill();
    wait_metric(&agent, "disconnected", "rewrite_fleet_connected", &[], |value| value == 0.0);
    let report = rewrite_tests::traffic::udp_stream_during(
        &nodes[2].netns,
        addr("0.0.0.0", 7100),
        &nodes[0].netns,
        addr("100.64.1.3", 7100),
        Duration::from_micros(500),
        || {
            // kill -9, as a crash or `systemctl restart` would end it, and a new agent
            // that cannot reach etcd.
            agent.kill();
            let restarted = nodes[0].start_agent(&[]);
            wait_metric(&restarted, "stale after the restart", "rewrite_fleet_stale", &[], |value| value == 1.0);
            std::thread::sleep(Duration::from_millis(500));
            assert!(nodes[0].has_mapping("100.64.1.3", &r3), "the fleet mapping stays while etcd is down");
            let status = nodes[0].status();
            assert!(status.contains("stale"), "status says the fleet state is stale:\n{status}");
            drop(restarted);
        },
    );
    assert!(report.sent > 500 && report.missing.is_empty(), "no datagram lost: {report:?}");

    // Meanwhile the table loses a mapping; etcd comes back and the agent catches up.
    let agent = nodes[0].start_agent(&[]);
    etcd.restart();
    drop(fleet_ok_in(&nodes[1], &["del", "100.64.1.4"]));
    wait_metric(&agent, "connected", "rewrite_fleet_connected", &[], |value| value == 1.0);
    wait_for_no_mapping(&nodes[0], "100.64.1.4");
    wait_metric(&agent, "in sync again", "rewrite_fleet_stale", &[], |value| value == 0.0);
    assert!(nodes[0].has_mapping("100.64.1.3", &r3), "what the table still has stays");
    let after = echo_to_virtual(&nodes[2], &nodes[0], "100.64.1.3", 10, Duration::from_secs(2));
    assert_eq!(after.echoed, 10, "{after:?}");
}

/// Whoever can write the fleet table must not be able to take an agent's own path to
/// etcd: a mapping whose VIRTUAL (or REAL) is an etcd endpoint's address is refused by
/// every agent, counted, and the agents stay connected.
#[test]
fn a_fleet_mapping_that_would_capture_the_path_to_etcd_is_refused() {
    let fleet = Fleet::new(3);
    let r3 = fleet.node(3).real();
    let agent = fleet.node(1).start_agent(&[]);
    fleet.fleet_ok(&["add", HUB_ADDR, &r3]);
    fleet.fleet_ok(&["add", "100.64.1.3", "10.99.0.3"]);
    wait_for_mapping(fleet.node(1), "100.64.1.3", "10.99.0.3");
    wait_metric(&agent, "the capture refused", "rewrite_fleet_refused_mappings", &[], |value| value == 1.0);
    assert!(!fleet.node(1).maps_virtual(HUB_ADDR), "the etcd endpoint's address is not mapped");
    assert_eq!(metric(&agent, "rewrite_fleet_connected", &[]), Some(1.0), "still connected");
    assert!(agent.log().contains("capture the agent's own path to etcd"), "the agent says why:\n{}", agent.log());
}

/// `rewrite fleet ARGS` from a node, over the bridge.
fn fleet_ok_in(node: &Node, args: &[&str]) -> String {
    let url = format!("http://{HUB_ADDR}:2379");
    let out = node
        .netns
        .command(rewrite_tests::cli::rewrite_binary().to_str().expect("utf-8 path"))
        .args(["fleet", "--etcd", &url, "--prefix", PREFIX])
        .args(args)
        .output()
        .expect("run rewrite fleet");
    assert!(out.status.success(), "rewrite fleet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn two_agents_racing_for_the_last_free_address_one_wins() {
    let fleet = Fleet::new(2);
    fleet.fleet_ok(&["pool", "add", "last", "100.64.2.7/32"]);
    // Both start at once; neither waits for the other.
    let (args1, args2) = (register_args(fleet.node(1), "last"), register_args(fleet.node(2), "last"));
    let mut first = fleet.node(1).spawn_agent(&args1.iter().map(String::as_str).collect::<Vec<_>>());
    let mut second = fleet.node(2).spawn_agent(&args2.iter().map(String::as_str).collect::<Vec<_>>());
    first.wait_serving();
    second.wait_serving();
    let outcome = |agent: &AgentProcess<'_>| metric(agent, "rewrite_fleet_registered", &[]);
    wait_until(
        "one agent registered and the other refused",
        SYNC,
        || {
            let outcomes = [outcome(&first), outcome(&second)];
            outcomes.contains(&Some(1.0)) && outcomes.contains(&Some(0.0))
        },
        || format!("node 1:\n{}\nnode 2:\n{}", first.log(), second.log()),
    );
    let claims = fleet.claims("last");
    assert_eq!(claims.len(), 1, "exactly one claim: {claims:?}");
    let (winner, loser) = if outcome(&first) == Some(1.0) { (&first, &second) } else { (&second, &first) };
    let winner_node = if std::ptr::eq(winner, &first) { 1 } else { 2 };
    assert_eq!(claims.values().next().map(String::as_str), Some(format!("node{winner_node}").as_str()));
    assert!(loser.log().contains("has no free IPv4 address left"), "the loser must say why:\n{}", loser.log());
    // The loser's node reaches the winner on the claimed address; the winner does not
    // map itself.
    wait_for_mapping(fleet.node(3 - winner_node), "100.64.2.7", &fleet.node(winner_node).real());
    assert!(!fleet.node(winner_node).maps_virtual("100.64.2.7"), "{}", fleet.node(winner_node).map_list());
}

/// Runs `work` with a connection to a fresh etcd (in a hub without nodes).
fn with_store(work: impl AsyncFnOnce(&StoreOptions, Store) + Send) {
    let fleet = Fleet::new(0);
    let options =
        StoreOptions::new(vec![format!("http://127.0.0.1:{}", rewrite_tests::fleet::ETCD_PORT)], PREFIX.into());
    fleet.hub.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let store = Store::connect(&options).await.expect("connect to the test etcd");
            work(&options, store).await;
        });
    });
}

/// A node of `pool` with `reals`, a 30-second lease, its mappings going with it and its
/// claims kept for good.
fn node_options(id: &str, reals: &[&str], pool: &str) -> NodeOptions {
    NodeOptions {
        id: id.into(),
        reals: reals.iter().map(|real| real.parse().expect("an address")).collect(),
        pool: pool.into(),
        lease_ttl: Duration::from_secs(30),
        expiry: MappingExpiry::WithLease,
        release_claim_after: None,
    }
}

/// Registers `node` on a fresh connection with leases of its own.
async fn register(options: &StoreOptions, node: NodeOptions) -> Result<Vec<(IpAddr, IpAddr)>, FleetError> {
    let mut store = Store::connect(options).await?;
    let lease = store.grant(node.lease_ttl).await?;
    store.register(&node, Leases { node: lease, mappings: Some(lease), claims: None }).await
}

#[test]
fn concurrent_registrations_never_claim_one_address_twice() {
    with_store(async |options: &StoreOptions, mut store: Store| {
        let node = |id: String, real: &str| node_options(&id, &[real], "");
        for round in 0..20u8 {
            let pool = format!("race{round}");
            store.pool_add(&pool, &[format!("100.65.{round}.1/32")]).await.expect("add a pool");
            let a = NodeOptions { pool: pool.clone(), ..node(format!("a{round}"), &format!("10.211.1.{round}")) };
            let b = NodeOptions { pool: pool.clone(), ..node(format!("b{round}"), &format!("10.211.2.{round}")) };
            let (first, second) = tokio::join!(register(options, a), register(options, b));
            let won = [&first, &second].iter().filter(|result| result.is_ok()).count();
            assert_eq!(won, 1, "round {round}: exactly one must win: {first:?} {second:?}");
            let lost = if first.is_ok() { &second } else { &first };
            assert!(matches!(lost, Err(FleetError::PoolExhausted { .. })), "round {round}: {lost:?}");
            let claimed = store.pools().await.expect("list pools");
            let claims = &claimed.iter().find(|view| view.name == pool).expect("the pool").claims;
            assert_eq!(claims.len(), 1, "round {round}: {claims:?}");
        }
        let snapshot = store.snapshot().await.expect("read the table");
        assert_eq!(snapshot.entries.len(), 20, "one mapping per round");
    });
}

/// A node id is one machine's while its agent lives: a second machine registering the
/// same id with other REALs (a cloned image) is refused and takes nothing; the same
/// machine restarting gets its VIRTUAL back; once the first registration lapses, the id
/// moves with its VIRTUAL to the new REAL (a node whose private address changed).
#[test]
fn a_live_node_id_cannot_be_taken_by_another_machine() {
    with_store(async |options: &StoreOptions, mut store: Store| {
        store.pool_add("ids", &["100.66.0.0/29".to_owned()]).await.expect("add a pool");
        let node = |reals: &[&str]| node_options("es-1", reals, "ids");
        let first_lease = store.grant(Duration::from_secs(30)).await.expect("a lease");
        let first = store
            .register(&node(&["10.212.0.1"]), Leases { node: first_lease, mappings: Some(first_lease), claims: None })
            .await;
        let first = first.expect("the first machine registers");
        let mapped = |snapshot: &rewrite_user::fleet::Snapshot| format!("{:?}", snapshot.entries);
        let before = mapped(&store.snapshot().await.expect("read the table"));

        let clone = register(options, node(&["10.212.0.99"])).await;
        match &clone {
            Err(error @ FleetError::NodeIdInUse { .. }) => {
                let text = error.to_string();
                assert!(text.contains("10.212.0.1") && text.contains("10.212.0.99"), "names both: {text}");
            }
            other => panic!("a second machine with a live node's id must be refused, got {other:?}"),
        }
        assert_eq!(mapped(&store.snapshot().await.expect("read the table")), before, "the refusal changed nothing");

        let restarted = register(options, node(&["10.212.0.1"])).await.expect("the same machine restarts");
        assert_eq!(restarted, first, "a restart keeps its VIRTUAL");

        // The first registration lapses (here: revoked); the id may move.
        store.client().lease_revoke(first_lease).await.expect("revoke the first lease");
        let moved = loop_until_registered(options, node(&["10.212.0.99"])).await;
        assert_eq!(moved[0].1, first[0].1, "the VIRTUAL follows the node to its new REAL: {moved:?} {first:?}");
    });
}

/// Registers `node`, retrying while the previous registration's lease (held by the
/// restarted registration above) still lives; bounded.
async fn loop_until_registered(options: &StoreOptions, node: NodeOptions) -> Vec<(IpAddr, IpAddr)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match register(options, node.clone()).await {
            Ok(pairs) => return pairs,
            Err(FleetError::NodeIdInUse { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("registering the moved node: {error}"),
        }
    }
}

/// A node with two REALs of one family gets a VIRTUAL for each, and keeps each one's
/// across a restart.
#[test]
fn a_node_with_two_reals_of_a_family_keeps_both_virtuals() {
    with_store(async |options: &StoreOptions, mut store: Store| {
        store.pool_add("two", &["100.66.1.0/29".to_owned()]).await.expect("add a pool");
        let node = node_options("gluster-1", &["10.213.0.1", "10.213.0.2"], "two");
        let first = register(options, node.clone()).await.expect("register");
        assert_ne!(first[0].1, first[1].1, "one VIRTUAL per REAL: {first:?}");
        let again = register(options, node).await.expect("register again");
        assert_eq!(again, first, "each REAL keeps its VIRTUAL");
    });
}

fn fleet_command(netns: &Netns, args: &[&str]) -> std::process::Output {
    netns
        .command(rewrite_tests::cli::rewrite_binary().to_str().expect("utf-8 path"))
        .args(["fleet", "--prefix", PREFIX])
        .args(args)
        .output()
        .expect("run rewrite fleet")
}

fn stderr_of(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "must fail, but printed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_fleet_table_is_reached_over_tls_with_client_certificates() {
    let certificates = Certificates::new("127.0.0.1");
    let netns = Netns::new("tls");
    let tls = ["--cert-file", "server.pem", "--key-file", "server.key", "--trusted-ca-file", "ca.pem"]
        .iter()
        .map(|arg| if arg.starts_with("--") { (*arg).to_owned() } else { certificates.path(arg) })
        .chain(["--client-cert-auth".to_owned()])
        .collect::<Vec<_>>();
    let _etcd = Etcd::start(&netns, "https://127.0.0.1:2379", &tls);
    let (ca, cert, key) =
        (certificates.path("ca.pem"), certificates.path("client.pem"), certificates.path("client.key"));
    let url = "https://127.0.0.1:2379";
    let with_tls = ["--etcd", url, "--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key];
    let added = fleet_command(&netns, &[&with_tls[..], &["add", "10.0.0.5", "192.0.2.5"]].concat());
    assert!(added.status.success(), "over TLS: {}", String::from_utf8_lossy(&added.stderr));
    let listed = fleet_command(&netns, &[&with_tls[..], &["list"]].concat());
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "10.0.0.5 -> 192.0.2.5");

    let no_client_certificate = stderr_of(&fleet_command(&netns, &["--etcd", url, "--etcd-ca", &ca, "list"]));
    assert!(
        no_client_certificate.contains("cannot connect to etcd at https://127.0.0.1:2379"),
        "{no_client_certificate}"
    );
    let unknown_ca = stderr_of(&fleet_command(
        &netns,
        &["--etcd", url, "--etcd-ca", &cert, "--etcd-cert", &cert, "--etcd-key", &key, "list"],
    ));
    assert!(
        unknown_ca.contains("cannot connect to etcd"),
        "a server signed by another CA must be refused: {unknown_ca}"
    );
    let half = stderr_of(&fleet_command(&netns, &["--etcd", url, "--etcd-cert", &cert, "list"]));
    assert!(half.contains("--etcd-key"), "a certificate without its key must be refused by name: {half}");
    let missing = stderr_of(&fleet_command(&netns, &["--etcd", url, "--etcd-ca", "/nonexistent/ca.pem", "list"]));
    assert!(missing.contains("cannot read the etcd CA certificate /nonexistent/ca.pem"), "{missing}");
}

#[test]
fn the_fleet_table_is_reached_with_a_user_and_password() {
    let netns = Netns::new("auth");
    let _etcd = Etcd::start(&netns, "http://127.0.0.1:2379", &[]);
    let options = StoreOptions::new(vec!["http://127.0.0.1:2379".into()], PREFIX.into());
    netns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let mut store = Store::connect(&options).await.expect("connect to the test etcd");
            let client = store.client();
            client.user_add("root", "s3cret-pw", None).await.expect("add the root user");
            client.user_grant_role("root", "root").await.expect("grant root");
            client.auth_enable().await.expect("enable authentication");
        });
    });
    let password = std::env::temp_dir().join(format!("rewrite-test-{}-password", std::process::id()));
    std::fs::write(&password, "s3cret-pw\n").expect("write the password file");
    let wrong = std::env::temp_dir().join(format!("rewrite-test-{}-wrong-password", std::process::id()));
    std::fs::write(&wrong, "guess\n").expect("write the password file");
    let url = "http://127.0.0.1:2379";
    let as_root = ["--etcd", url, "--etcd-user", "root", "--etcd-password-file", password.to_str().expect("utf-8")];
    let added = fleet_command(&netns, &[&as_root[..], &["add", "10.0.0.5", "192.0.2.5"]].concat());
    let anonymous = fleet_command(&netns, &["--etcd", url, "list"]);
    let guessed = fleet_command(
        &netns,
        &["--etcd", url, "--etcd-user", "root", "--etcd-password-file", wrong.to_str().expect("utf-8"), "list"],
    );
    let _ = std::fs::remove_file(&password);
    let _ = std::fs::remove_file(&wrong);
    assert!(added.status.success(), "as root: {}", String::from_utf8_lossy(&added.stderr));
    let anonymous = stderr_of(&anonymous);
    assert!(anonymous.contains("cannot connect to etcd") && anonymous.contains("user name is empty"), "{anonymous}");
    let guessed = stderr_of(&guessed);
    assert!(guessed.contains("authentication failed"), "{guessed}");
}

/// A node's config with the gate in enforce on udp/7000.
const GATED_CONFIG: &str = "[[interface]]\nname = \"eth0\"\ningress = \"tc\"\n\n\
                            [gate]\nmode = \"enforce\"\nprotect = [\"udp/7000\"]\n";

/// How long a node removed from the fleet may keep reaching a gated member after the
/// delete is committed: a bound for a loaded test machine, far above the propagation the
/// fleet benchmark measures (milliseconds).
const GATE_CLOSES_WITHIN: Duration = Duration::from_millis(500);

#[test]
fn agents_with_the_gate_in_enforce_admit_exactly_the_fleets_members() {
    let fleet = Fleet::new(4);
    fleet.fleet_ok(&["pool", "add", "overlay", "100.64.0.0/24"]);
    // Nodes 1 to 3 are the fleet, each gating udp/7000; node 4 is on the same bridge but
    // runs no agent and is in no table.
    for node in &fleet.nodes[..3] {
        node.config.write(GATED_CONFIG);
    }
    let agents: Vec<AgentProcess<'_>> = fleet.nodes[..3].iter().map(|node| start_registered(node, "overlay")).collect();
    for agent in &agents {
        wait_metric(agent, "registered", "rewrite_fleet_registered", &[], |value| value == 1.0);
        wait_metric(agent, "the gate enforces", "rewrite_gate_mode", &[("mode", "enforce")], |value| value == 1.0);
    }
    let virtuals: Vec<String> =
        (1..=3).map(|index| fleet.claim_of("overlay", &format!("node{index}")).to_string()).collect();
    for (owner, virtual_addr) in fleet.nodes[..3].iter().zip(&virtuals) {
        for node in fleet.nodes[..3].iter().filter(|node| node.index != owner.index) {
            wait_for_mapping(node, virtual_addr, &owner.real());
        }
    }
    let (v1, r1) = (virtuals[0].as_str(), fleet.node(1).real());

    // Members pass, on node 1's VIRTUAL and on its REAL.
    for client in [2, 3] {
        let report = echo_to_virtual(fleet.node(1), fleet.node(client), v1, 10, Duration::from_secs(2));
        assert_eq!(report.echoed, 10, "member node {client} must reach node 1's VIRTUAL through its gate: {report:?}");
        let direct = udp_echo(
            &fleet.node(1).netns,
            addr("0.0.0.0", 7000),
            &fleet.node(client).netns,
            addr(&r1, 7000),
            5,
            Duration::from_secs(2),
        );
        assert_eq!(direct.echoed, 5, "member node {client} must reach node 1's REAL through its gate: {direct:?}");
    }
    // The outsider is dropped on the protected port, and still reaches an unprotected one.
    let outsider = |port| {
        udp_echo(
            &fleet.node(1).netns,
            addr("0.0.0.0", port),
            &fleet.node(4).netns,
            addr(&r1, port),
            5,
            Duration::from_millis(300),
        )
    };
    let denied = outsider(7000);
    assert_eq!(denied.echoed, 0, "node 4 is no member: node 1's gate must drop it: {denied:?}");
    assert!(denied.server_sources.is_empty(), "nothing from node 4 may reach the server: {denied:?}");
    wait_metric(
        &agents[0],
        "the outsider's datagrams counted as dropped",
        "rewrite_gate_total",
        &[("reason", "dropped")],
        |value| value >= 5.0,
    );
    assert_eq!(outsider(7001).echoed, 5, "udp/7001 is not protected: node 4 must reach it");

    // Node 3 leaves the fleet while it streams to node 1: everything it sent before the
    // delete arrives, nothing it sent once the change had time to propagate does.
    let (v3, r3) = (virtuals[2].clone(), fleet.node(3).real());
    let mut delete_window = None;
    let stream = rewrite_tests::traffic::udp_stream_during(
        &fleet.node(1).netns,
        addr("0.0.0.0", 7000),
        &fleet.node(3).netns,
        addr(v1, 7000),
        Duration::from_millis(2),
        || {
            std::thread::sleep(Duration::from_millis(300));
            let before = std::time::Instant::now();
            assert_eq!(fleet.fleet_ok(&["del", &v3]).trim(), format!("deleted {v3} -> {r3}"));
            delete_window = Some((before, std::time::Instant::now()));
            wait_for_no_mapping(fleet.node(1), &v3);
            std::thread::sleep(GATE_CLOSES_WITHIN * 2);
        },
    );
    let (before_delete, after_delete) = delete_window.expect("the delete ran");
    let sent_at = |seq: u64| stream.sent_at[usize::try_from(seq).expect("a sequence number fits usize")];
    let sent_before: Vec<u64> = (0..stream.sent).filter(|seq| sent_at(*seq) < before_delete).collect();
    let lost_before: Vec<&u64> =
        sent_before.iter().filter(|seq| stream.received_sequences.binary_search(seq).is_err()).collect();
    assert!(
        !sent_before.is_empty() && lost_before.is_empty(),
        "while node 3 was a member every datagram must pass; lost {lost_before:?} of {}",
        sent_before.len()
    );
    let last_admitted = stream.received_sequences.last().map(|seq| sent_at(*seq)).expect("some passed");
    let late = (0..stream.sent).filter(|seq| sent_at(*seq) > after_delete + GATE_CLOSES_WITHIN).count();
    assert!(late > 100, "the stream must go on well past the delete to show the gate closed: {late} datagrams");
    assert!(
        last_admitted <= after_delete + GATE_CLOSES_WITHIN,
        "node 1 admitted a datagram node 3 sent {:?} after its delete was committed",
        last_admitted.saturating_duration_since(after_delete)
    );
    eprintln!(
        "gate closed for node 3: last datagram admitted was sent {:?} after the delete command returned \
         ({:?} after it started)",
        last_admitted.saturating_duration_since(after_delete),
        last_admitted.saturating_duration_since(before_delete)
    );
    // Node 2 is still a member.
    let report = echo_to_virtual(fleet.node(1), fleet.node(2), v1, 5, Duration::from_secs(2));
    assert_eq!(report.echoed, 5, "node 2 is still a member: {report:?}");
    drop(agents);
}

/// A store that answers no renewal for less than the lease's TTL (restarted, or too
/// busy) must not make a node register again: a new lease per hiccup would, once the old
/// one ran out, take the node's mapping out of every agent's table, which is how an
/// overloaded etcd's trouble would spread to the whole fleet. The agent keeps renewing
/// the lease it has.
#[test]
fn a_registered_node_rides_out_a_store_hiccup_on_the_lease_it_has() {
    let mut fleet = Fleet::new(2);
    fleet.fleet_ok(&["pool", "add", "overlay", "100.64.0.0/24"]);
    let (etcd, nodes) = (&mut fleet.etcd, &fleet.nodes);
    let node = &nodes[0];
    let mut args = register_args(node, "overlay");
    // A lease long enough to outlast the restart below, short enough for the test.
    let ttl = args.iter().position(|arg| arg == "--lease-ttl").expect("the helper sets a TTL") + 1;
    args[ttl] = "6".into();
    let agent = node.start_agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_metric(&agent, "registered", "rewrite_fleet_registered", &[], |value| value == 1.0);
    let virtual_addr = agent
        .log()
        .lines()
        .find(|line| line.contains("registered in the fleet table"))
        .and_then(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .and_then(|value| value["fields"]["virtual_addr"].as_str().map(ToOwned::to_owned))
        .expect("the agent logs the VIRTUAL it registered");
    let watcher = nodes[1].start_agent(&[]);
    wait_for_mapping(&nodes[1], &virtual_addr, &node.real());
    let changes_before = metric(&watcher, "rewrite_fleet_changes_total", &[]).unwrap_or(0.0);

    etcd.kill();
    std::thread::sleep(Duration::from_millis(2500));
    etcd.restart();
    // Long enough for the lease to have lapsed had the agent stopped renewing it.
    std::thread::sleep(Duration::from_secs(8));
    let log = agent.log();
    let registrations = log.lines().filter(|line| line.contains("registered in the fleet table")).count();
    assert_eq!(registrations, 1, "the node must keep its first registration through the hiccup:\n{log}");
    assert!(log.contains("renewing the registration lease failed; retrying"), "the outage was noticed:\n{log}");
    assert!(nodes[1].has_mapping(&virtual_addr, &node.real()), "node 1's mapping stays on node 2");
    wait_metric(&watcher, "reconnected", "rewrite_fleet_connected", &[], |value| value == 1.0);
    let changes_after = metric(&watcher, "rewrite_fleet_changes_total", &[]).unwrap_or(0.0);
    assert_eq!(
        changes_after, changes_before,
        "no change may reach the other agents: node 1's mapping was neither removed nor written again"
    );
    drop((agent, watcher));
}

/// At thousands of nodes, agents follow the table through an etcd gRPC proxy near them
/// (`--etcd-watch`), which serves their watches over one watch on the cluster, while
/// registration and leases go to etcd itself. The watch really goes through the proxy:
/// without it the agent loses the table (and keeps its maps), and catches up once it
/// is back; registration does not notice.
#[test]
fn an_agent_follows_the_table_through_a_grpc_proxy_and_registers_with_etcd() {
    let fleet = Fleet::new(2);
    fleet.fleet_ok(&["pool", "add", "overlay", "100.64.0.0/24"]);
    let proxy_listen = format!("{HUB_ADDR}:23790");
    let upstream = format!("127.0.0.1:{}", rewrite_tests::fleet::ETCD_PORT);
    let proxy = rewrite_tests::fleet::GrpcProxy::start(&fleet.hub, &proxy_listen, &upstream);
    let watch_url = format!("http://{proxy_listen}");
    let mut args = register_args(fleet.node(1), "overlay");
    args.extend(["--etcd-watch".to_owned(), watch_url.clone()]);
    let proxied = fleet.node(1).start_agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let direct = start_registered(fleet.node(2), "overlay");
    for agent in [&proxied, &direct] {
        wait_metric(agent, "registered", "rewrite_fleet_registered", &[], |value| value == 1.0);
    }
    let v2 = fleet.claim_of("overlay", "node2").to_string();
    wait_for_mapping(fleet.node(1), &v2, &fleet.node(2).real());
    fleet.fleet_ok(&["add", "100.64.1.9", "10.99.0.9"]);
    wait_for_mapping(fleet.node(1), "100.64.1.9", "10.99.0.9");

    drop(proxy);
    wait_metric(&proxied, "the watch lost with the proxy", "rewrite_fleet_connected", &[], |value| value == 0.0);
    fleet.fleet_ok(&["del", "100.64.1.9"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        fleet.node(1).has_mapping("100.64.1.9", "10.99.0.9"),
        "without its watch, the agent keeps what it had:\n{}",
        fleet.node(1).map_list()
    );
    assert_eq!(
        metric(&proxied, "rewrite_fleet_registered", &[]),
        Some(1.0),
        "registration goes to etcd, not the proxy"
    );
    let _proxy = rewrite_tests::fleet::GrpcProxy::start(&fleet.hub, &proxy_listen, &upstream);
    wait_metric(&proxied, "the watch back", "rewrite_fleet_connected", &[], |value| value == 1.0);
    wait_for_no_mapping(fleet.node(1), "100.64.1.9");
    drop((proxied, direct));
}

/// `fleet pool release` frees an address for good: the claim and the node's index of it
/// go together, so the node that held it does not find it again as its own once another
/// node has claimed it.
#[test]
fn a_released_address_is_no_longer_its_old_holders() {
    with_store(async |options: &StoreOptions, mut store: Store| {
        store.pool_add("solo", &["100.64.9.1/32".into()]).await.expect("add a one-address pool");
        let node = |id: &str, real: &str| node_options(id, &[real], "solo");
        let only: IpAddr = "100.64.9.1".parse().expect("an address");
        let lease_a = store.grant(Duration::from_secs(30)).await.expect("a lease");
        let pairs = store
            .register(&node("a", "10.212.0.1"), Leases { node: lease_a, mappings: Some(lease_a), claims: None })
            .await
            .expect("a registers");
        assert_eq!(pairs[0].1, only);
        // The operator frees the address of a node that is gone.
        let released = store.pool_release("solo", only).await.expect("release the claim");
        assert_eq!(released.node, "a");
        store.client().lease_revoke(lease_a).await.expect("node a's lease ends");
        let pairs = register(options, node("b", "10.212.0.2")).await.expect("b takes the freed address");
        assert_eq!(pairs[0].1, only);
        let again = register(options, node("a", "10.212.0.1")).await;
        assert!(
            matches!(again, Err(FleetError::PoolExhausted { .. })),
            "a must not find {only} as its own once released and claimed by b: {again:?}"
        );
        let pools = store.pools().await.expect("list the pools");
        let claims = &pools.iter().find(|pool| pool.name == "solo").expect("the pool").claims;
        assert_eq!(claims.get(&only).map(|claim| claim.node.as_str()), Some("b"), "{claims:?}");
        // Deleting the pool takes every claim and its index with it.
        assert_eq!(store.pool_delete("solo").await.expect("delete the pool"), 1, "one claim released");
        let holders = store.layout().holders("solo", "b");
        let left = store
            .client()
            .get(holders.clone(), Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("read the index");
        assert_eq!(left.count(), 0, "no holder key outlives its pool");
    });
}

/// Neti's shortest path: a mapping carries one REAL per zone (a peer's private address
/// inside its VPC, its public one across), and each agent applies its own zone's. Node 1
/// has a "public" address (its REAL on the bridge) and a "private" one; nodes 1 and 2
/// are in zone `a`, node 3 in zone `b`. Servers bound to only one of node 1's addresses
/// show which one each peer reaches.
#[test]
fn each_agent_reaches_a_peer_at_its_zones_address() {
    let fleet = Fleet::new(3);
    let (public, private) = (fleet.node(1).real(), "10.210.1.11".to_owned());
    fleet.node(1).netns.ip(&["addr", "add", &format!("{private}/24"), "dev", "eth0"]);
    fleet.hub.ip(&["addr", "add", "10.210.1.1/24", "dev", "br0"]);
    let v1 = "100.64.1.1";
    let added = fleet.fleet_ok(&["add", v1, &public, "--zone", &format!("a={private}"), "--label", "node1"]);
    assert_eq!(added.trim(), format!("added {v1} -> {public}"));
    let listed = fleet.fleet_ok(&["list"]);
    assert!(listed.contains(&format!("{v1} -> {public}  [a: {private}]  # node1")), "{listed}");
    let json: serde_json::Value = serde_json::from_str(&fleet.fleet_ok(&["list", "--json"])).expect("json");
    assert_eq!(json["mappings"][0]["zones"]["a"], private.as_str(), "{json}");
    // A zone's REAL must fit the VIRTUAL: refused with the reason, nothing written.
    let refused = fleet.fleet(&["add", "100.64.1.2", "10.99.0.2", "--zone", "a=10.99.0.0/24"]);
    assert!(!refused.status.success(), "a prefix REAL for an address VIRTUAL must be refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("zone a"), "{}", stderr_of(&refused));
    assert_eq!(fleet.fleet_ok(&["list"]), listed, "a refused add writes nothing");

    let agents: Vec<AgentProcess<'_>> = [(1, "a"), (2, "a"), (3, "b")]
        .iter()
        .map(|(index, zone)| fleet.node(*index).start_agent(&["--zone", zone]))
        .collect();
    wait_for_mapping(fleet.node(2), v1, &private);
    wait_for_mapping(fleet.node(3), v1, &public);
    wait_metric(&agents[0], "node 1 knows the mapping is its own", "rewrite_fleet_own_mappings", &[], |value| {
        value == 1.0
    });
    assert!(!fleet.node(1).maps_virtual(v1), "node 1 must not map itself:\n{}", fleet.node(1).map_list());

    let echo = |client: usize, bound: &str, port: u16, count: u32| {
        udp_echo(
            &fleet.node(1).netns,
            addr(bound, port),
            &fleet.node(client).netns,
            addr(v1, port),
            count,
            Duration::from_millis(if count > 0 { 2000 } else { 300 }),
        )
    };
    // Zone a reaches node 1 at its private address, and sees the echoes from its VIRTUAL.
    let inside = echo(2, &private, 7000, 5);
    assert_eq!(inside.echoed, 5, "node 2 (zone a) must reach node 1's private address: {inside:?}");
    assert!(inside.echo_sources.iter().all(|source| source.ip().to_string() == v1), "{inside:?}");
    assert_eq!(echo(2, &public, 7001, 3).echoed, 0, "node 2 must not go to node 1's public address");
    // Zone b reaches it at the public one.
    let across = echo(3, &public, 7002, 5);
    assert_eq!(across.echoed, 5, "node 3 (zone b) must reach node 1's public address: {across:?}");
    assert!(across.echo_sources.iter().all(|source| source.ip().to_string() == v1), "{across:?}");
    assert_eq!(echo(3, &private, 7003, 3).echoed, 0, "node 3 must not go to node 1's private address");
    drop(agents);
}

/// Claims that expire, under node churn: with `--release-claim-after`, a gone node's
/// VIRTUAL goes back to the pool that long after its lease lapsed, never while it lives;
/// its mapping leaves the table with its lease first, so every agent has dropped it for
/// the quarantine (release delay) before another node can claim the address. Three nodes
/// take turns on a one-address pool, a fourth agent watching.
#[test]
fn a_gone_nodes_address_returns_to_the_pool_only_after_the_agents_dropped_its_mapping() {
    let fleet = Fleet::new(4);
    fleet.fleet_ok(&["pool", "add", "churn", "100.64.3.1/32"]);
    let address = "100.64.3.1";
    let watcher = fleet.node(4).start_agent(&[]);
    let args = |index: usize| {
        let mut args = register_args(fleet.node(index), "churn");
        let ttl = args.iter().position(|arg| arg == "--lease-ttl").expect("the helper sets a TTL") + 1;
        args[ttl] = "2".into();
        args.extend(["--release-claim-after".to_owned(), "3s".to_owned()]);
        args
    };
    let start = |index: usize| {
        let args = args(index);
        fleet.node(index).start_agent(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let registered = |agent: &AgentProcess<'_>| metric(agent, "rewrite_fleet_registered", &[]) == Some(1.0);

    let mut holder = start(1);
    wait_metric(&holder, "node 1 registered", "rewrite_fleet_registered", &[], |value| value == 1.0);
    wait_for_mapping(fleet.node(4), address, &fleet.node(1).real());
    for next in 2..=3 {
        let previous = next - 1;
        let waiting = start(next);
        // Never while the holder lives: longer than its lease and the release delay.
        std::thread::sleep(Duration::from_secs(6));
        assert!(!registered(&waiting), "node {next} must not get {address} while node {previous} lives");
        assert_eq!(fleet.claims("churn").values().next().map(String::as_str), Some(format!("node{previous}").as_str()));
        assert!(waiting.log().contains("has no free IPv4 address left"), "node {next} says why:\n{}", waiting.log());

        // The holder dies: its mapping goes with its lease, its claim the release delay later.
        holder.kill();
        let died = std::time::Instant::now();
        let (mut dropped, mut claimed) = (None, None);
        while claimed.is_none() {
            assert!(died.elapsed() < Duration::from_secs(20), "node {next} did not take {address} within 20 s");
            if dropped.is_none() && !fleet.node(4).maps_virtual(address) {
                dropped = Some(died.elapsed());
            }
            if registered(&waiting) {
                claimed = Some(died.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (dropped, claimed) = (dropped.expect("dropped before the claim"), claimed.expect("claimed"));
        assert!(
            claimed >= dropped + Duration::from_secs(2),
            "the watching agent dropped node {previous}'s mapping {dropped:?} after it died and node {next} \
             claimed {address} {claimed:?} after: the quarantine must separate them"
        );
        eprintln!(
            "handover {previous} -> {next}: mapping dropped after {dropped:?}, address reissued after {claimed:?}"
        );
        wait_for_mapping(fleet.node(4), address, &fleet.node(next).real());
        assert_eq!(fleet.claims("churn").values().next().map(String::as_str), Some(format!("node{next}").as_str()));
        holder = waiting;
    }
    drop((holder, watcher));
}

#[test]
fn a_claim_released_before_its_mapping_expires_is_refused() {
    let fleet = Fleet::new(1);
    let binary = rewrite_tests::cli::rewrite_binary();
    let pins = fleet.node(1).pins.path().to_str().expect("utf-8").to_owned();
    let out = fleet
        .node(1)
        .netns
        .command(binary.to_str().expect("utf-8"))
        .args(["--pin-dir", &pins, "agent", "--etcd", "http://10.210.0.1:2379", "--prefix", PREFIX])
        .args(["--node", "n1", "--node-real", "10.210.0.11", "--pool", "p"])
        .args(["--expire-after", "10m", "--release-claim-after", "5m"])
        .output()
        .expect("run the agent");
    assert!(!out.status.success(), "the agent must refuse to start");
    let message = stderr_of(&out);
    assert!(
        message.contains("--release-claim-after") && message.contains("before its mapping leaves the table"),
        "{message}"
    );
}

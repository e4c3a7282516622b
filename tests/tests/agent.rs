//! `rewrite agent` in a network namespace, as systemd would run it: it applies its
//! config, follows changes to the file and SIGHUP, keeps the dataplane as it is when the
//! config is wrong, serves metrics that count exactly the traffic sent, and can be
//! killed and replaced without the dataplane noticing.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use nix::sys::signal::Signal;
use rewrite_tests::{
    agent::{AgentProcess, ConfigFile, sample},
    cli::RewriteCli,
    hosts::{B_REAL, B_VIRTUAL, two_hosts},
    traffic::udp_echo,
    wait::wait_until,
};

const BASE: &str = r#"[[interface]]
name = "va"
ingress = "tc"

[[mapping]]
virtual = "10.200.0.2"
real = "10.100.0.2"
label = "host b"
"#;

/// UDP payload of `traffic::udp_echo`: a 4-byte sequence number and 1000 bytes.
const ECHO_FRAME: u64 = 14 + 20 + 8 + 4 + 1000;
/// Its final "STOP" datagram.
const STOP_FRAME: u64 = 14 + 20 + 8 + 4;

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse::<IpAddr>().expect("address"), port)
}

#[test]
fn metrics_bound_the_series_per_mapping_and_serve_what_they_can_read() {
    let hosts = two_hosts();
    let cli = RewriteCli::new(&hosts.a);
    // The mapping the traffic uses, and two it does not.
    let extra = "\n[[mapping]]\nvirtual = \"10.222.0.1\"\nreal = \"10.111.0.1\"\n\
                 \n[[mapping]]\nvirtual = \"10.222.0.2\"\nreal = \"10.111.0.2\"\n";
    let config = ConfigFile::new("agent-metrics-top", &format!("{BASE}{extra}"));
    let agent = AgentProcess::start_with(
        &hosts.a,
        cli.pins().path(),
        &["--config", config.as_arg(), "--metrics-mappings", "top:1"],
        9465,
    );
    let report = udp_echo(&hosts.b, sock("0.0.0.0", 7101), &hosts.a, sock(B_VIRTUAL, 7101), 20, Duration::from_secs(2));
    assert_eq!(report.echoed, 20, "{report:?}");
    let text = agent.scrape().expect("metrics");
    let series = text.lines().filter(|line| line.starts_with("rewrite_mapping_packets_total{")).count();
    assert_eq!(series, 2, "top:1: one mapping, both directions:\n{text}");
    let busiest = [("virtual", B_VIRTUAL), ("direction", "egress")];
    assert_eq!(sample(&text, "rewrite_mapping_packets_total", &busiest), Some(21.0), "the busiest mapping:\n{text}");
    assert_eq!(sample(&text, "rewrite_mappings_without_series", &[]), Some(2.0), "{text}");
    assert_eq!(sample(&text, "rewrite_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0), "{text}");
    assert!(!text.contains("rewrite_metrics_read_errors{"), "nothing failed to read:\n{text}");
    for line in text
        .lines()
        .filter(|line| line.starts_with("# TYPE rewrite_mapping_") || line.starts_with("# TYPE rewrite_packets"))
    {
        assert!(line.ends_with(" counter"), "packet and byte counts are counters: {line}");
    }

    // A part of the dataplane that cannot be read leaves the rest served.
    std::fs::remove_file(cli.pins().path().join("maps").join(rewrite_common::gate::MAP_GATE_PORTS))
        .expect("remove the gate's port map pin");
    let text = agent.scrape().expect("metrics served without the gate");
    assert_eq!(sample(&text, "rewrite_metrics_read_errors", &[("section", "gate")]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "rewrite_mapping_packets_total", &busiest), Some(21.0), "the rest is served:\n{text}");
    drop(agent);

    let agent = AgentProcess::start_with(
        &hosts.a,
        cli.pins().path(),
        &["--config", config.as_arg(), "--metrics-mappings", "none"],
        9466,
    );
    let text = agent.scrape().expect("metrics");
    assert!(!text.contains("rewrite_mapping_packets_total{"), "none: no series per mapping:\n{text}");
    assert_eq!(sample(&text, "rewrite_mappings_without_series", &[]), Some(3.0), "{text}");
}

#[test]
fn metrics_count_exactly_the_traffic_sent() {
    let hosts = two_hosts();
    let cli = RewriteCli::new(&hosts.a);
    let config = ConfigFile::new("agent-metrics", BASE);
    let agent = AgentProcess::start(&hosts.a, cli.pins().path(), &config, 9464);
    assert!(cli.ok(&["status"]).contains("va\tingress: tc"), "the agent attaches what its config names");
    let text = agent.scrape().expect("metrics");
    assert_eq!(sample(&text, "rewrite_last_apply_success", &[]), Some(1.0), "metrics:\n{text}");
    assert_eq!(sample(&text, "rewrite_map_entries", &[("table", "address")]), Some(1.0), "metrics:\n{text}");

    let count = 200;
    let report =
        udp_echo(&hosts.b, sock("0.0.0.0", 7100), &hosts.a, sock(B_VIRTUAL, 7100), count, Duration::from_secs(2));
    assert_eq!(report.echoed, count, "every datagram must come back: {report:?}");

    let text = agent.scrape().expect("metrics");
    let count = u64::from(count);
    let mapping = |direction| [("virtual", B_VIRTUAL), ("real", B_REAL), ("kind", "address"), ("direction", direction)];
    // Egress: the datagrams and the final STOP; ingress: the echoes.
    let expected = [
        ("rewrite_mapping_packets_total", "egress", count + 1),
        ("rewrite_mapping_packets_total", "ingress", count),
        ("rewrite_mapping_bytes_total", "egress", count * ECHO_FRAME + STOP_FRAME),
        ("rewrite_mapping_bytes_total", "ingress", count * ECHO_FRAME),
    ];
    for (metric, direction, value) in expected {
        let found = sample(&text, metric, &mapping(direction));
        assert_eq!(found, Some(value as f64), "{metric} {direction}\nmetrics:\n{text}");
    }
    for (direction, value) in [("egress", count + 1), ("ingress", count)] {
        let found = sample(&text, "rewrite_packets_total", &[("direction", direction), ("outcome", "rewritten")]);
        assert_eq!(found, Some(value as f64), "rewritten {direction}\nmetrics:\n{text}");
    }
    // The same numbers as `rewrite stats`.
    let stats: serde_json::Value = serde_json::from_str(&cli.ok(&["stats", "--json"])).expect("stats --json");
    assert_eq!(stats["egress"]["rewritten"].as_u64(), Some(count + 1));
}

#[test]
fn the_agent_follows_its_config_and_keeps_the_state_when_the_config_is_wrong() {
    let hosts = two_hosts();
    let cli = RewriteCli::new(&hosts.a);
    let config = ConfigFile::new("agent-follow", BASE);
    let agent = AgentProcess::start(&hosts.a, cli.pins().path(), &config, 9465);
    let listing = || cli.ok(&["map", "list"]);

    // One agent per dataplane.
    let second = cli.fails(&["agent", "--config", config.as_arg(), "--metrics", "127.0.0.1:9466"]);
    assert!(second.contains(&format!("another agent (pid {})", agent.pid())), "a second agent must refuse: {second}");

    // A change to the file (replaced, as editors do) is applied.
    let with_v6 = format!("{BASE}\n[[mapping]]\nvirtual = \"fd00:200::2\"\nreal = \"2001:db8:100::2\"\n");
    config.write(&with_v6);
    wait_until("the added mapping", Duration::from_secs(5), || listing().contains("fd00:200::2 -> 2001:db8:100::2"));

    // A wrong file is refused with its line, and the dataplane keeps its state.
    let before = listing();
    config.write(&format!("{with_v6}\n[[mapping]]\nvirtual = \"10.200.0.300\"\nreal = \"10.100.0.3\"\n"));
    agent.wait_for("the refused apply", Duration::from_secs(5), |text| {
        sample(text, "rewrite_last_apply_success", &[]) == Some(0.0)
    });
    assert_eq!(listing(), before, "a refused config must change nothing");
    let log = agent.log();
    assert!(log.contains(&format!("{}:15:", config.path().display())), "the log names the line:\n{log}");
    for line in log.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("log line is not JSON ({error}): {line}"));
        assert!(entry["level"].is_string() && entry["fields"]["message"].is_string(), "structured: {line}");
    }

    // SIGHUP re-applies the (fixed) file, which undoes drift. The CLI refuses to make
    // any while the agent keeps the dataplane, naming it; another tool writing the maps
    // directly (here, the library itself) still can.
    config.write(&with_v6);
    agent.wait_for("the fixed config", Duration::from_secs(5), |text| {
        sample(text, "rewrite_last_apply_success", &[]) == Some(1.0)
    });
    let refused = cli.fails(&["map", "del", "10.200.0.2"]);
    assert!(refused.contains(&format!("an agent (pid {})", agent.pid())), "{refused}");
    let layout = rewrite_user::dataplane::pins::PinLayout::new(cli.pins().path());
    rewrite_user::table::live::MappingTable::open(&layout)
        .expect("open the maps")
        .remove_mapping("10.200.0.2".parse().expect("address"))
        .expect("drift: the mapping removed behind the agent's back");
    agent.signal(Signal::SIGHUP);
    wait_until("the mapping restored by SIGHUP", Duration::from_secs(5), || {
        listing().contains("10.200.0.2 -> 10.100.0.2")
    });

    // kill -9: the dataplane goes on; a new agent adopts it without attaching again.
    // Interfaces, program ids and the table: everything but the agent's own line.
    let dataplane =
        || cli.ok(&["status"]).lines().filter(|line| !line.starts_with("agent:")).collect::<Vec<_>>().join("\n");
    let status = dataplane();
    assert!(status.contains("egress_tc_prog\tid "), "status shows program ids:\n{status}");
    agent.kill();
    let report = udp_echo(&hosts.b, sock("0.0.0.0", 7101), &hosts.a, sock(B_VIRTUAL, 7101), 20, Duration::from_secs(2));
    assert_eq!(report.echoed, 20, "traffic flows with no agent: {report:?}");
    let agent = AgentProcess::start(&hosts.a, cli.pins().path(), &config, 9465);
    assert_eq!(dataplane(), status, "the new agent adopts the attachment as it is: same programs, same ids");
    assert!(cli.ok(&["status"]).contains(&format!("agent: running (pid {})", agent.pid())), "status names the agent");
    let log = agent.log();
    assert!(log.contains("\"attached\":0"), "the new agent attaches nothing:\n{log}");
}

/// A config with the mapping the traffic uses and `others` more; the first `changed`
/// of those point at other REALs.
fn big_config(others: u32, changed: u32) -> String {
    let mut text = BASE.to_owned();
    for index in 0..others {
        let (high, low) = (index / 250, index % 250 + 1);
        let real_net = if index < changed { 120 } else { 110 };
        text.push_str(&format!(
            "\n[[mapping]]\nvirtual = \"10.210.{high}.{low}\"\nreal = \"10.{real_net}.{high}.{low}\"\n"
        ));
    }
    text
}

/// No datagram is lost while the agent is killed and replaced, the programs are
/// upgraded to another build, and the agent applies a 10,000-entry config that changes
/// 1,000 entries.
#[test]
fn no_datagram_is_lost_across_agent_restart_upgrade_and_a_big_apply() {
    let object = std::env::var("REWRITE_UPGRADE_OBJECT").unwrap_or_else(|_| {
        panic!("REWRITE_UPGRADE_OBJECT is not set: run the tests with `cargo xtask test`, which builds a second object")
    });
    let hosts = two_hosts();
    let cli = RewriteCli::new(&hosts.a);
    let config = ConfigFile::new("agent-no-loss", &big_config(9_999, 0));
    let agent = AgentProcess::start(&hosts.a, cli.pins().path(), &config, 9467);
    let version_before = cli.ok(&["status", "--json"]);

    let report = rewrite_tests::traffic::udp_stream_during(
        &hosts.b,
        sock("0.0.0.0", 7200),
        &hosts.a,
        sock(B_VIRTUAL, 7200),
        Duration::from_micros(200),
        || {
            std::thread::sleep(Duration::from_millis(300));
            // kill -9 and a new agent.
            agent.kill();
            std::thread::sleep(Duration::from_millis(300));
            let agent = AgentProcess::start(&hosts.a, cli.pins().path(), &config, 9467);
            std::thread::sleep(Duration::from_millis(300));
            // Another build of the programs, swapped in under the traffic.
            let upgraded = cli.ok(&["upgrade", "--object", &object]);
            assert!(upgraded.contains("va: rewrite_tc_egress id "), "upgrade output:\n{upgraded}");
            std::thread::sleep(Duration::from_millis(300));
            // 1,000 of 10,000 entries change.
            config.write(&big_config(9_999, 1_000));
            agent.wait_for("the big apply", Duration::from_secs(90), |text| {
                sample(text, "rewrite_applies_total", &[("result", "success")]) == Some(2.0)
            });
            std::thread::sleep(Duration::from_millis(300));
            let log = agent.log();
            let applied = log.lines().find(|line| line.contains("\"changed\":1000"));
            let applied = applied.unwrap_or_else(|| panic!("the agent changed 1,000 entries:\n{log}"));
            eprintln!("the big apply: {applied}");
        },
    );
    eprintln!("stream: {report:?}");
    assert!(report.sent > 1_000, "the stream must run long enough to mean something: {report:?}");
    assert!(report.missing.is_empty() && report.received == report.sent, "datagrams were lost: {report:?}");
    let listing = cli.ok(&["map", "list"]);
    assert!(listing.contains("10.210.0.1 -> 10.120.0.1") && listing.contains("10.210.36.1 -> 10.110.36.1"));
    let version_after = cli.ok(&["status", "--json"]);
    let ids = |json: &str| -> Vec<u64> {
        let value: serde_json::Value = serde_json::from_str(json).expect("status --json");
        value["interfaces"][0]["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .collect()
    };
    let (before, after) = (ids(&version_before), ids(&version_after));
    assert!(
        !before.is_empty() && before.iter().all(|id| !after.contains(id)),
        "new program ids: {before:?} -> {after:?}"
    );
    // The version status reports is the digest of the object now running.
    let version = |json: &str| -> String {
        let value: serde_json::Value = serde_json::from_str(json).expect("status --json");
        value["interfaces"][0]["version"].as_str().expect("a recorded version").to_owned()
    };
    let digest: String = {
        use sha2::Digest as _;
        let bytes = std::fs::read(&object).expect("read the second object");
        sha2::Sha256::digest(&bytes).iter().take(6).map(|byte| format!("{byte:02x}")).collect()
    };
    assert_ne!(version(&version_before), digest, "the second build must be another version");
    assert_eq!(version(&version_after), digest, "status must report the upgraded build");
}

/// An agent started with a wrong config stays up, shows the refusal in its metrics,
/// and applies the file once it is fixed.
#[test]
fn an_agent_started_with_a_wrong_config_waits_for_a_fixed_one() {
    let hosts = two_hosts();
    let cli = RewriteCli::new(&hosts.a);
    let config = ConfigFile::new("agent-wrong-start", &BASE.replace("10.100.0.2", "10.100.0.300"));
    let agent = AgentProcess::start(&hosts.a, cli.pins().path(), &config, 9468);
    let text = agent.scrape().expect("metrics");
    assert_eq!(sample(&text, "rewrite_last_apply_success", &[]), Some(0.0), "metrics:\n{text}");
    assert_eq!(sample(&text, "rewrite_applies_total", &[("result", "failure")]), Some(1.0), "metrics:\n{text}");
    assert!(sample(&text, "rewrite_last_apply_timestamp_seconds", &[]).is_some_and(|at| at > 1.0e9), "{text}");
    assert!(cli.ok(&["status"]).starts_with("no interface attached"), "nothing is applied");
    config.write(BASE);
    agent.wait_for("the fixed config", Duration::from_secs(5), |text| {
        sample(text, "rewrite_last_apply_success", &[]) == Some(1.0)
    });
    assert!(cli.ok(&["status"]).contains("va\tingress: tc"), "applied once fixed");
    // `down` would be undone by the agent: it refuses while one runs.
    let refused = cli.fails(&["down"]);
    assert!(refused.contains(&format!("an agent (pid {})", agent.pid())), "{refused}");
    agent.kill();
    assert!(cli.ok(&["down"]).contains("detached from va"));
    assert!(cli.ok(&["status"]).contains("agent: not running"));
}

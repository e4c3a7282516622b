//! What an unlucky operator or an attacker does to a node: a pin directory others can
//! write into, two writers at once, a CLI write under a running agent, an interface
//! deleted and created again, the systemd unit on a fresh boot, and the gate's `all`
//! over the host's own client ports.

use std::{
    net::{SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    time::Duration,
};

use rewrite_tests::{
    agent::{AgentProcess, ConfigFile},
    cli::{RewriteCli, rewrite_binary},
    hosts::{A_MAC, B_MAC, B_REAL, B_VIRTUAL, two_hosts},
    netns::{VethEnd, veth},
    traffic::udp_echo,
    wait::wait_until,
};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("test address"), port)
}

/// A pin directory that is not root's alone is refused by every command, with what is
/// wrong and how to fix it; once it is fixed, it is used.
#[test]
fn a_pin_directory_others_can_write_into_is_refused() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    let dir = rewrite.pins().path();
    std::fs::create_dir(dir).expect("create the pin directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod 777");
    for args in [&["status"][..], &["attach", "--iface", "va"], &["map", "list"]] {
        let error = rewrite.fails(args);
        assert!(error.contains("mode 0777") && error.contains("root's alone"), "{args:?}: {error}");
        assert_eq!(error.trim().lines().count(), 1, "one line: {error}");
    }
    std::os::unix::fs::chown(dir, Some(65534), Some(65534)).expect("chown nobody");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod 700");
    let error = rewrite.fails(&["status"]);
    assert!(error.contains("owner uid 65534"), "{error}");
    std::os::unix::fs::chown(dir, Some(0), Some(0)).expect("chown root");
    rewrite.ok(&["attach", "--iface", "va"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
}

/// Two CLI writers at once (a loop adding and deleting mappings, and another adding
/// and deleting others over the same REALs) never leave the table inconsistent: the
/// write lock serialises them, and every write refuses an entry that exists.
#[test]
fn concurrent_writers_never_leave_the_table_inconsistent() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va"]);
    let writer = |virtual_net: &'static str| {
        let pins = rewrite.pins().path().to_owned();
        let netns = hosts.a.name().to_owned();
        move || {
            let mut refused = 0;
            for round in 0..40 {
                // Both writers claim the same REALs: only one of them may hold each.
                let real = format!("10.150.0.{}", round % 8 + 1);
                let virtual_addr = format!("{virtual_net}.{}", round % 8 + 1);
                for args in [vec!["map", "add", &virtual_addr, &real], vec!["map", "del", &virtual_addr]] {
                    let out = std::process::Command::new("nsenter")
                        .arg(format!("--net=/run/netns/{netns}"))
                        .arg("--")
                        .arg(rewrite_binary())
                        .arg("--pin-dir")
                        .arg(&pins)
                        .args(&args)
                        .output()
                        .expect("run rewrite");
                    if !out.status.success() {
                        let error = String::from_utf8_lossy(&out.stderr);
                        // A REAL the other writer holds, or a mapping already gone: refused whole.
                        assert!(
                            error.contains("already the target") || error.contains("no mapping for VIRTUAL"),
                            "unexpected refusal: {error}"
                        );
                        refused += 1;
                    }
                }
            }
            refused
        }
    };
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(writer("10.201.0"));
        let second = scope.spawn(writer("10.202.0"));
        (first.join().expect("first writer"), second.join().expect("second writer"))
    });
    eprintln!("refusals: {first} and {second} of 80 commands each");
    // Consistent: every reverse entry has its forward entry (no half-applied warning),
    // and no REAL is claimed by two VIRTUALs.
    let out = hosts
        .a
        .command(rewrite_binary().to_str().expect("path"))
        .arg("--pin-dir")
        .arg(rewrite.pins().path())
        .args(["map", "list", "--json"])
        .output()
        .expect("map list");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("half-applied"), "no half-applied entry: {stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let reals: Vec<&str> = rows.as_array().expect("rows").iter().filter_map(|row| row["real"].as_str()).collect();
    let mut unique = reals.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), reals.len(), "each REAL once: {rows}");
}

/// Two `apply`s at once whose configs claim the same REALs through different VIRTUALs.
/// An apply makes the table equal to its config, so the later one replaces the earlier
/// one: the table must end as exactly one of the two configs, each REAL claimed once.
/// Without one writer at a time each planned from the table as it read it, and their
/// writes interleaved into a mix of both, with REALs claimed twice.
#[test]
fn concurrent_applies_never_claim_a_real_twice() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va"]);
    let config = |virtual_net: &str| {
        let mut text = String::new();
        for host in 1..=200 {
            text.push_str(&format!(
                "[[mapping]]\nvirtual = \"{virtual_net}.{}.{}\"\nreal = \"10.150.{}.{}\"\n",
                host / 250,
                host % 250 + 1,
                host / 250,
                host % 250 + 1
            ));
        }
        ConfigFile::new(&format!("apply-{virtual_net}"), &text)
    };
    let (first, second) = (config("10.201"), config("10.202"));
    let empty = ConfigFile::new("apply-empty", "");
    for round in 0..5 {
        let apply = |file: &ConfigFile| {
            let pins = rewrite.pins().path().to_owned();
            let netns = hosts.a.name().to_owned();
            let file = file.as_arg().to_owned();
            move || {
                std::process::Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{netns}"))
                    .arg("--")
                    .arg(rewrite_binary())
                    .arg("--pin-dir")
                    .arg(&pins)
                    .args(["apply", &file])
                    .output()
                    .expect("run rewrite apply")
            }
        };
        let (one, two) = std::thread::scope(|scope| {
            let one = scope.spawn(apply(&first));
            let two = scope.spawn(apply(&second));
            (one.join().expect("first apply"), two.join().expect("second apply"))
        });
        for out in [&one, &two] {
            assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let listing = rewrite.ok(&["map", "list"]);
        let mut reals: Vec<&str> = listing.lines().filter_map(|line| line.split(" -> ").nth(1)).collect();
        let count = reals.len();
        reals.sort_unstable();
        reals.dedup();
        assert_eq!((reals.len(), count), (200, 200), "round {round}: 200 mappings, each REAL once:\n{listing}");
        let from = |prefix: &str| listing.lines().filter(|line| line.starts_with(prefix)).count();
        assert!(
            matches!((from("10.201."), from("10.202.")), (200, 0) | (0, 200)),
            "round {round}: one config whole, not a mix:\n{listing}"
        );
        rewrite.ok(&["apply", empty.as_arg()]);
    }
}

/// While an agent keeps the dataplane, a CLI write is refused with the agent's pid and
/// config named, and the table is left alone; `upgrade` and read-only commands work.
#[test]
fn a_cli_write_under_a_running_agent_is_refused_and_names_it() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    let config = ConfigFile::new(
        "hardening-agent",
        &format!(
            "[[interface]]\nname = \"va\"\ningress = \"tc\"\n\n[[mapping]]\nvirtual = \"{B_VIRTUAL}\"\nreal = \"{B_REAL}\"\n"
        ),
    );
    let agent = AgentProcess::start(&hosts.a, rewrite.pins().path(), &config, 9470);
    for args in
        [&["map", "add", "10.200.0.9", "10.100.0.9"][..], &["detach", "--iface", "va"], &["gate", "mode", "monitor"]]
    {
        let error = rewrite.fails(args);
        assert!(error.contains(&format!("an agent (pid {})", agent.pid())), "{args:?}: {error}");
        assert!(error.contains(config.as_arg()), "the agent's config is named: {error}");
    }
    assert_eq!(rewrite.ok(&["map", "list"]), format!("{B_VIRTUAL} -> {B_REAL}\n"), "nothing changed");
    rewrite.ok(&["status"]);
    rewrite.ok(&["upgrade"]);
    drop(agent);
    rewrite.ok(&["map", "add", "10.200.0.9", "10.100.0.9"]);
}

/// An interface deleted and created again has none of rewrite's programs: `status`
/// says its pins are stale, `attach` replaces them, and an agent attaches it again by
/// itself.
#[test]
fn a_recreated_interface_is_detected_and_attached_again() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    let recreate = || {
        hosts.a.ip(&["link", "del", "va"]);
        veth(
            VethEnd { netns: &hosts.a, name: "va", mac: A_MAC },
            "10.100.0.1/24",
            VethEnd { netns: &hosts.b, name: "vb", mac: B_MAC },
            "10.100.0.2/24",
        );
        hosts.a.ip(&["route", "replace", "10.200.0.0/24", "via", B_REAL]);
        hosts.a.offload("va", false, false);
        hosts.b.offload("vb", false, false);
    };
    let echoes = |port: u16| {
        udp_echo(&hosts.b, addr("0.0.0.0", port), &hosts.a, addr(B_VIRTUAL, port), 10, Duration::from_millis(800))
            .echoed
    };
    for tc_attach in ["tcx", "netlink"] {
        let kernel_has_tcx = {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
            let mut numbers = release.trim().split(['.', '-']).map(|part| part.parse::<u32>().unwrap_or(0));
            (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 6)
        };
        if tc_attach == "tcx" && !kernel_has_tcx {
            continue;
        }
        rewrite.ok(&["attach", "--iface", "va", "--ingress", "xdp", "--tc-attach", tc_attach]);
        rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
        assert_eq!(echoes(7400), 10, "{tc_attach}: rewritten before");
        recreate();
        let status = rewrite.ok(&["status"]);
        assert!(status.contains("STALE"), "{tc_attach}: status shows the stale pins:\n{status}");
        assert_eq!(echoes(7401), 0, "{tc_attach}: nothing runs on the new device");
        rewrite.ok(&["attach", "--iface", "va", "--ingress", "xdp", "--tc-attach", tc_attach]);
        assert!(!rewrite.ok(&["status"]).contains("STALE"));
        assert_eq!(echoes(7402), 10, "{tc_attach}: rewritten again after attach");
        rewrite.ok(&["detach", "--iface", "va"]);
        rewrite.ok(&["map", "del", B_VIRTUAL]);
    }

    // The agent notices by itself.
    let config = ConfigFile::new(
        "hardening-recreate",
        &format!(
            "[[interface]]\nname = \"va\"\ningress = \"tc\"\n\n[[mapping]]\nvirtual = \"{B_VIRTUAL}\"\nreal = \"{B_REAL}\"\n"
        ),
    );
    let agent = AgentProcess::start(&hosts.a, rewrite.pins().path(), &config, 9471);
    assert_eq!(echoes(7403), 10, "the agent attached va");
    recreate();
    wait_until("the agent attaches the new va", Duration::from_secs(20), || echoes(7404) == 10);
    let log = agent.log();
    assert!(log.contains("an interface was created again"), "the agent says why it applied:\n{log}");
}

/// The shipped unit passes `systemd-analyze verify`, and starts on a fresh boot: the
/// paths it makes writable exist then (it creates /run/rewrite itself and keeps it
/// across restarts, as the records there describe pins that outlive the agent).
#[test]
fn the_systemd_unit_verifies_and_needs_nothing_a_fresh_boot_lacks() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rewrite-agent.service"))
        .expect("read the unit");
    let dir = std::env::temp_dir().join(format!("rewrite-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the unit");
    let installed = unit.replace("/usr/local/bin/rewrite", rewrite_binary().to_str().expect("path"));
    let path = dir.join("rewrite-agent.service");
    std::fs::write(&path, installed).expect("write the unit");
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let setting =
        |name: &str| unit.lines().filter_map(move |line| line.strip_prefix(&format!("{name}="))).collect::<Vec<_>>();
    assert_eq!(setting("RuntimeDirectory"), ["rewrite"], "the unit creates /run/rewrite at every start");
    assert_eq!(setting("RuntimeDirectoryPreserve"), ["yes"], "and keeps it when the agent stops");
    for paths in setting("ReadWritePaths") {
        for path in paths.split_whitespace() {
            let optional = path.starts_with('-');
            assert!(
                optional || path == "/sys/fs/bpf",
                "{path}: a writable path must exist on a fresh boot (or be optional with '-')"
            );
        }
    }
}

/// `gate protect all` in enforce mode leaves the ports where replies to the host's own
/// clients arrive: its NTP client (udp/123) hears the server, and TCP through it works
/// as before.
#[test]
fn protect_all_leaves_the_hosts_own_client_ports_open() {
    let hosts = two_hosts();
    hosts.b.ip(&["addr", "add", "10.100.0.66/24", "dev", "vb"]);
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc"]);
    rewrite.ok(&["gate", "protect", "all"]);
    rewrite.ok(&["gate", "mode", "enforce"]);
    // An "NTP server" on B's unknown address answers to port 123, as NTP servers do.
    let server = hosts.b.run(|| UdpSocket::bind(addr("10.100.0.66", 123)).expect("bind the server"));
    server.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let client = hosts.a.run(|| UdpSocket::bind(addr("0.0.0.0", 123)).expect("bind the client port"));
    client.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    client.send_to(b"ntp request", addr("10.100.0.66", 123)).expect("send");
    let mut buffer = [0u8; 64];
    let (_, from) = server.recv_from(&mut buffer).expect("the server hears the client");
    server.send_to(b"ntp reply", from).expect("answer");
    let (length, _) = client.recv_from(&mut buffer).expect("the reply to udp/123 passes the gate");
    assert_eq!(&buffer[..length], b"ntp reply");
    let shown = rewrite.ok(&["gate", "show", "--json"]);
    assert!(!shown.contains("\"udp/123\""), "udp/123 is not protected: {shown}");
    // A protected TCP port stays closed to the unknown source.
    let listener = hosts.a.run(|| std::net::TcpListener::bind(addr("0.0.0.0", 9200)).expect("listen"));
    hosts.b.ip(&["route", "replace", "10.100.0.1/32", "dev", "vb", "src", "10.100.0.66"]);
    assert!(!rewrite_tests::traffic::tcp_connects(&hosts.b, addr("10.100.0.1", 9200), Duration::from_millis(700)));
    drop(listener);
}

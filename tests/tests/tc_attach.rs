//! TC programs attached through netlink (cls_bpf filters on a clsact qdisc), as on
//! kernels before 6.6 where tcx links do not exist: `attach --tc-attach netlink` forces
//! it on newer kernels, so these tests run on every kernel of the matrix and on the
//! host. What is attached is read back with `tc -j` (iproute2), not with rewrite's own
//! netlink code.

use std::{net::SocketAddr, time::Duration};

use rewrite_tests::{
    cli::RewriteCli,
    hosts::{B_REAL, B_VIRTUAL, TwoHosts, two_hosts},
    netns::{Netns, PinDir},
    traffic::{tcp_exchange, udp_echo},
};

/// rewrite's fixed place among the clsact filters, as `tc` prints it.
const PRIORITY: u64 = 0x5257;
const BOUNCE_PRIORITY: u64 = 0x5258;
const HANDLE: &str = "0x5257";

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().expect("test address"), port)
}

/// One filter of `tc -j filter show`: its priority, handle, and the name and id of the
/// eBPF program it runs (empty and 0 for classic BPF).
#[derive(Debug, PartialEq, Eq)]
struct Filter {
    priority: u64,
    handle: String,
    name: String,
    id: u64,
}

fn filters(netns: &Netns, iface: &str, hook: &str) -> Vec<Filter> {
    let out = netns.command("tc").args(["-j", "filter", "show", "dev", iface, hook]).output().expect("run tc");
    if !out.status.success() {
        // No clsact qdisc: tc cannot list its hooks.
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let listing: serde_json::Value = serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text })
        .unwrap_or_else(|error| {
            panic!("tc -j filter show printed {text}: {error}");
        });
    listing
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|entry| {
            let options = entry.get("options")?;
            Some(Filter {
                priority: entry["pref"].as_u64()?,
                handle: options["handle"].as_str()?.to_owned(),
                name: options["bpf_name"].as_str().unwrap_or_default().to_owned(),
                id: options["prog"]["id"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

fn has_clsact(netns: &Netns, iface: &str) -> bool {
    let out = netns.must("tc", &["-j", "qdisc", "show", "dev", iface]);
    String::from_utf8_lossy(&out.stdout).contains("\"clsact\"")
}

fn status(rewrite: &RewriteCli<'_>) -> serde_json::Value {
    serde_json::from_str(&rewrite.ok(&["status", "--json"])).expect("status --json is JSON")
}

/// What `status --json` says of the program pinned as `pin` on the first interface.
fn program<'a>(status: &'a serde_json::Value, pin: &str) -> &'a serde_json::Value {
    status["interfaces"][0]["programs"]
        .as_array()
        .and_then(|programs| programs.iter().find(|program| program["pin"] == pin))
        .unwrap_or_else(|| panic!("no program pinned as {pin}: {status}"))
}

/// TCP both ways and 50 UDP echoes through the mapping B_VIRTUAL -> B_REAL.
fn traffic_flows(hosts: &TwoHosts, port: u16) {
    let report = tcp_exchange(&hosts.b, sock("0.0.0.0", port), &hosts.a, sock(B_VIRTUAL, port), 64 * 1024);
    assert_eq!(report.client_seen_by_server.ip().to_string(), "10.100.0.1", "B sees A's own address");
    let udp =
        udp_echo(&hosts.b, sock("0.0.0.0", port + 1), &hosts.a, sock(B_VIRTUAL, port + 1), 50, Duration::from_secs(2));
    assert_eq!(udp.echoed, 50, "every datagram comes back: {udp:?}");
}

#[test]
fn netlink_filters_carry_traffic_and_go_with_detach() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    assert!(!has_clsact(&hosts.a, "va"), "the fresh interface has no clsact qdisc");
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc", "--tc-attach", "netlink"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);

    let status = status(&rewrite);
    for (pin, hook, name) in
        [("egress_tc_prog", "egress", "rewrite_tc_egress"), ("ingress_tc_prog", "ingress", "rewrite_tc_ingress")]
    {
        let attached = program(&status, pin);
        assert_eq!(
            attached["attached"],
            format!("netlink ({hook} priority {PRIORITY} handle {HANDLE})").as_str(),
            "status: {status}"
        );
        let listed = filters(&hosts.a, "va", hook);
        assert_eq!(
            listed,
            vec![Filter {
                priority: PRIORITY,
                handle: HANDLE.into(),
                // The filter keeps the whole name; the kernel's program name stops at 15.
                name: name.into(),
                id: attached["id"].as_u64().expect("an id"),
            }],
            "tc lists exactly rewrite's filter on {hook}"
        );
    }
    traffic_flows(&hosts, 7300);

    // Bounce mode joins the interface the way its other programs are attached.
    hosts.a.sysctl("net.ipv4.ip_forward", "1");
    rewrite.ok(&["bounce", "add", "10.100.0.1:9999/tcp", "10.100.0.2:9999", "--max-flows", "1024"]);
    let status = self::status(&rewrite);
    assert_eq!(
        program(&status, "ingress_tc_bounce_prog")["attached"],
        format!("netlink (ingress priority {BOUNCE_PRIORITY} handle {HANDLE})").as_str()
    );
    let ingress = filters(&hosts.a, "va", "ingress");
    assert_eq!(ingress.iter().map(|filter| filter.priority).collect::<Vec<_>>(), vec![PRIORITY, BOUNCE_PRIORITY]);
    traffic_flows(&hosts, 7310);

    rewrite.ok(&["detach", "--iface", "va"]);
    assert_eq!(filters(&hosts.a, "va", "ingress"), Vec::new());
    assert_eq!(filters(&hosts.a, "va", "egress"), Vec::new());
    assert!(!has_clsact(&hosts.a, "va"), "the clsact qdisc rewrite added goes with its last filter");
    // Without the programs, B_VIRTUAL is routed to B, which does not answer for it.
    let udp = udp_echo(&hosts.b, sock("0.0.0.0", 7320), &hosts.a, sock(B_VIRTUAL, 7320), 5, Duration::from_millis(500));
    assert_eq!(udp.echoed, 0, "nothing is rewritten after detach: {udp:?}");
}

/// A clsact qdisc with someone else's filters: rewrite adds its own beside them and
/// takes only its own away.
#[test]
fn netlink_attach_and_detach_leave_other_filters_and_the_qdisc_alone() {
    let hosts = two_hosts();
    hosts.a.must("tc", &["qdisc", "add", "dev", "va", "clsact"]);
    // Classic BPF "return 0": a filter that never matches, so every packet goes on.
    for hook in ["ingress", "egress"] {
        hosts.a.must(
            "tc",
            &["filter", "add", "dev", "va", hook, "prio", "100", "handle", "7", "bpf", "bytecode", "1,6 0 0 0,"],
        );
    }
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc", "--tc-attach", "netlink"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    let listed = filters(&hosts.a, "va", "ingress");
    assert_eq!(listed.iter().map(|filter| filter.priority).collect::<Vec<_>>(), vec![100, PRIORITY]);
    traffic_flows(&hosts, 7330);

    rewrite.ok(&["down"]);
    for hook in ["ingress", "egress"] {
        assert_eq!(
            filters(&hosts.a, "va", hook),
            vec![Filter { priority: 100, handle: "0x7".into(), name: String::new(), id: 0 }],
            "only rewrite's {hook} filter is gone"
        );
    }
    assert!(has_clsact(&hosts.a, "va"), "a qdisc rewrite did not add stays");
}

/// Someone else's filter at rewrite's own priority and handle is never replaced: the
/// attach is refused whole, with a message that says what holds the place.
#[test]
fn a_foreign_filter_at_rewrites_place_is_refused_and_kept() {
    let hosts = two_hosts();
    hosts.a.must("tc", &["qdisc", "add", "dev", "va", "clsact"]);
    let (priority, handle) = (PRIORITY.to_string(), HANDLE.to_owned());
    hosts.a.must(
        "tc",
        &[
            "filter",
            "add",
            "dev",
            "va",
            "egress",
            "prio",
            &priority,
            "handle",
            &handle,
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
        ],
    );
    let rewrite = RewriteCli::new(&hosts.a);
    let error = rewrite.fails(&["attach", "--iface", "va", "--ingress", "tc", "--tc-attach", "netlink"]);
    assert!(
        error.contains(&format!(
            "egress priority {PRIORITY} handle {HANDLE} on va holds a filter this dataplane did not attach"
        )),
        "{error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "one line: {error}");
    assert_eq!(
        filters(&hosts.a, "va", "egress"),
        vec![Filter { priority: PRIORITY, handle: HANDLE.into(), name: String::new(), id: 0 }]
    );
    assert_eq!(filters(&hosts.a, "va", "ingress"), Vec::new(), "the refused attach left nothing behind");
    let status = rewrite.ok(&["status"]);
    assert!(status.contains("no interface attached"), "{status}");
}

/// A second dataplane (another pin directory) on the same interface finds rewrite's
/// places taken: its attach is refused, and its failure takes none of the first one's
/// filters with it, although they run programs of rewrite's names.
#[test]
fn a_second_pin_directory_neither_takes_nor_removes_the_first_ones_filters() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc", "--tc-attach", "netlink"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    let before = (filters(&hosts.a, "va", "ingress"), filters(&hosts.a, "va", "egress"));
    let other = PinDir::new("second");
    let error = rewrite
        .fails_with_pin_dir(other.path(), &["attach", "--iface", "va", "--ingress", "tc", "--tc-attach", "netlink"]);
    assert!(error.contains("holds a filter this dataplane did not attach"), "{error}");
    assert_eq!((filters(&hosts.a, "va", "ingress"), filters(&hosts.a, "va", "egress")), before);
    traffic_flows(&hosts, 7360);
}

/// `upgrade` replaces each netlink filter's program in place, and traffic flows on.
#[test]
fn upgrade_replaces_netlink_filters_in_place() {
    let object = std::env::var("REWRITE_UPGRADE_OBJECT").unwrap_or_else(|_| {
        panic!("REWRITE_UPGRADE_OBJECT is not set: run the tests with `cargo xtask test`, which builds a second object")
    });
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "xdp", "--tc-attach", "netlink"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    let before = filters(&hosts.a, "va", "egress");
    let icmp_before = filters(&hosts.a, "va", "ingress");
    assert_eq!(icmp_before.len(), 1, "the ICMP-error program beside XDP: {icmp_before:?}");
    assert_eq!(icmp_before[0].name, "rewrite_tc_icmp_errors");
    let output = rewrite.ok(&["upgrade", "--object", &object]);
    let after = filters(&hosts.a, "va", "egress");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!((after[0].priority, after[0].handle.as_str()), (PRIORITY, HANDLE), "the same place");
    assert_ne!(after[0].id, before[0].id, "a new program: {output}");
    let icmp_after = filters(&hosts.a, "va", "ingress");
    assert_ne!(icmp_after[0].id, icmp_before[0].id, "the ICMP-error program too: {output}");
    let status = status(&rewrite);
    assert_eq!(program(&status, "egress_tc_prog")["id"].as_u64(), Some(after[0].id), "status shows the new id");
    assert_eq!(program(&status, "ingress_xdp_prog")["attached"], "xdp link", "{status}");
    traffic_flows(&hosts, 7340);

    rewrite.ok(&["detach", "--iface", "va"]);
    let link = hosts.a.ip(&["-j", "link", "show", "dev", "va"]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("\"xdp\""), "no XDP program is left on va");
    assert_eq!(filters(&hosts.a, "va", "egress"), Vec::new());
    assert!(!has_clsact(&hosts.a, "va"), "the clsact qdisc goes with rewrite's filters");
}

/// Where the kernel has no tcx links, asking for them is one clear line and changes
/// nothing; where it has them, they are used.
#[test]
fn tcx_is_refused_in_one_line_where_the_kernel_lacks_it() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut numbers = release.trim().split(['.', '-']).map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if (major, minor) < (6, 6) {
        let error = rewrite.fails(&["attach", "--iface", "va", "--ingress", "tc", "--tc-attach", "tcx"]);
        assert_eq!(error.trim().lines().count(), 1, "one line: {error}");
        assert!(error.contains("tcx links need Linux >= 6.6, and this kernel is"), "{error}");
        assert!(error.contains("use --tc-attach netlink"), "{error}");
        assert!(rewrite.ok(&["status"]).contains("no interface attached"));
        assert!(!has_clsact(&hosts.a, "va"), "nothing was added");
    } else {
        rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc", "--tc-attach", "tcx"]);
        let status = status(&rewrite);
        assert_eq!(program(&status, "egress_tc_prog")["attached"], "tcx link", "{status}");
        assert!(filters(&hosts.a, "va", "egress").is_empty(), "tcx needs no filter");
        rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
        traffic_flows(&hosts, 7350);
        rewrite.ok(&["detach", "--iface", "va"]);
        assert!(rewrite.ok(&["status"]).contains("no interface attached"));
    }
}

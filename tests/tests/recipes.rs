//! The README's first mapping and the recipes in docs/recipes/, run as written (see
//! `rewrite_tests::recipe`): each test builds the network the page describes, and the
//! page's own blocks do the rest. Editing a page's commands changes what is tested.

use rewrite_tests::{
    fleet::{Certificates, Etcd},
    netns::{Netns, VethEnd, must, veth},
    recipe::Recipe,
};

/// Two namespaces joined by one link, `eth0` at both ends.
fn pair(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) {
    veth(
        VethEnd { netns: a, name: "eth0", mac: [0x02, 0, 0, 0, 0x0b, 1] },
        a_addr,
        VethEnd { netns: b, name: "eth0", mac: [0x02, 0, 0, 0, 0x0b, 2] },
        b_addr,
    );
}

#[test]
fn the_readme_first_mapping_runs_as_written() {
    let node = Netns::new("readme-node");
    let moved = Netns::new("readme-moved");
    pair(&node, "192.0.2.1/24", &moved, "192.0.2.5/24");
    let outputs = Recipe::new("README.md", &[("node", &node)]).run();
    let session = &outputs[0];
    assert!(session.contains("3 received"), "the ping reaches 10.0.0.5 at 192.0.2.5:\n{session}");
}

#[test]
fn glusterfs_peers_keep_their_old_addresses() {
    let a = Netns::new("gluster-a");
    let b = Netns::new("gluster-b");
    pair(&a, "172.16.0.1/24", &b, "172.16.0.2/24");
    Recipe::new("docs/recipes/glusterfs.md", &[("gluster-a", &a), ("gluster-b", &b)]).run();
}

/// Hosts on one Ethernet segment: a bridge in a namespace of its own, and for each host
/// an interface on a port of it with its addresses.
fn segment(switch: &Netns, hosts: &[(&Netns, &str, Vec<String>)]) {
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    for (index, (host, iface, addrs)) in hosts.iter().enumerate() {
        let port = format!("p{index}");
        let mac = format!("02:00:00:{:02x}:0c:{:02x}", switch.name().len() % 256, index + 1);
        must(
            "ip",
            &[
                "link",
                "add",
                iface,
                "address",
                &mac,
                "netns",
                host.name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                switch.name(),
            ],
        );
        switch.ip(&["link", "set", &port, "master", "br0", "up"]);
        for addr in addrs {
            host.ip(&["addr", "add", addr, "dev", iface]);
        }
        host.ip(&["link", "set", iface, "up"]);
    }
}

#[test]
fn a_transition_host_bounces_with_one_interface_and_with_two() {
    let (switch, client, old, new) =
        (Netns::new("tr-switch"), Netns::new("tr-client"), Netns::new("tr-old"), Netns::new("tr-new"));
    segment(
        &switch,
        &[
            (&client, "eth0", vec!["10.0.0.10/24".to_owned()]),
            (&old, "eth0", vec!["10.0.0.1/24".to_owned()]),
            (&new, "eth0", vec!["10.0.0.7/24".to_owned()]),
        ],
    );
    // The second layout: the old host routes between the clients' and the new host's
    // subnets, and neither end has a route to the other.
    let (client2, old2, new2) = (Netns::new("tr-client2"), Netns::new("tr-old2"), Netns::new("tr-new2"));
    veth(
        VethEnd { netns: &client2, name: "eth0", mac: [0x02, 0, 0, 0, 0x0d, 1] },
        "10.1.0.10/24",
        VethEnd { netns: &old2, name: "eth0", mac: [0x02, 0, 0, 0, 0x0d, 2] },
        "10.1.0.1/24",
    );
    veth(
        VethEnd { netns: &old2, name: "eth1", mac: [0x02, 0, 0, 0, 0x0d, 3] },
        "10.2.0.1/24",
        VethEnd { netns: &new2, name: "eth0", mac: [0x02, 0, 0, 0, 0x0d, 4] },
        "10.2.0.7/24",
    );
    let outputs = Recipe::new(
        "docs/recipes/transition-host.md",
        &[
            ("client", &client),
            ("old-host", &old),
            ("new-host", &new),
            ("client-2", &client2),
            ("old-host-2", &old2),
            ("new-host-2", &new2),
        ],
    )
    .run();
    let log = outputs.iter().find(|output| output.contains("disconnect")).expect("a log with the disconnect");
    eprintln!("{log}");
    assert!(log.contains(" connect ") && log.contains("10.0.0.10"), "the log names the client:\n{log}");
}

#[test]
fn an_elasticsearch_cluster_spans_two_sites_and_a_node_moves_across() {
    let (switch_a, switch_b, router) = (Netns::new("es-swa"), Netns::new("es-swb"), Netns::new("es-router"));
    let names = ["es-a1", "es-a2", "es-a3", "es-b1", "es-b2", "es-b3", "es-a3-moved"];
    let nodes: Vec<Netns> = names.iter().map(|name| Netns::new(name)).collect();
    let node = |name: &str| &nodes[names.iter().position(|candidate| *candidate == name).expect("a node")];
    // Both LANs are 10.0.0.0/24; the transit addresses are routed between the sites.
    let a_hosts = [("es-a1", 11), ("es-a2", 12), ("es-a3", 13)];
    let b_hosts = [("es-b1", 21), ("es-b2", 22), ("es-b3", 23), ("es-a3-moved", 13)];
    let members = |site: u8, hosts: &[(&str, u8)]| -> Vec<(&Netns, &str, Vec<String>)> {
        hosts
            .iter()
            .map(|(name, number)| {
                (node(name), "eth0", vec![format!("10.0.0.{number}/24"), format!("100.64.{site}.{number}/24")])
            })
            .collect()
    };
    let mut site_a = members(1, &a_hosts);
    site_a.push((&router, "eth0", vec!["100.64.1.1/24".to_owned()]));
    let mut site_b = members(2, &b_hosts);
    site_b.push((&router, "eth1", vec!["100.64.2.1/24".to_owned()]));
    segment(&switch_a, &site_a);
    segment(&switch_b, &site_b);
    router.sysctl("net.ipv4.ip_forward", "1");
    for (name, _) in a_hosts {
        node(name).ip(&["route", "add", "100.64.0.0/16", "via", "100.64.1.1"]);
    }
    for (name, _) in b_hosts {
        node(name).ip(&["route", "add", "100.64.0.0/16", "via", "100.64.2.1"]);
    }
    let hosts: Vec<(&str, &Netns)> = names.iter().map(|name| (*name, node(name))).collect();
    Recipe::new("docs/recipes/elasticsearch.md", &hosts).run();
}

#[test]
fn a_neti_style_fleet_follows_etcd_over_tls_and_the_gate_goes_to_enforce() {
    let switch = Netns::new("fl-switch");
    let hub = Netns::new("fl-hub");
    let names = ["node1", "node2", "node3", "outsider"];
    let hosts: Vec<Netns> = names.iter().map(|name| Netns::new(&format!("fl-{name}"))).collect();
    let mut members = vec![(&hub, "eth0", vec!["10.210.0.1/24".to_owned()])];
    for (host, number) in hosts.iter().zip([11, 12, 13, 99]) {
        members.push((host, "eth0", vec![format!("10.210.0.{number}/24")]));
    }
    segment(&switch, &members);
    // The gateway routes the nodes' overlay traffic back onto the subnet.
    hub.sysctl("net.ipv4.ip_forward", "1");
    for scope in ["all", "default", "eth0"] {
        hub.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0");
    }
    let certificates = Certificates::new("10.210.0.1");
    let tls = [("--cert-file", "server.pem"), ("--key-file", "server.key"), ("--trusted-ca-file", "ca.pem")]
        .iter()
        .flat_map(|(flag, file)| [(*flag).to_owned(), certificates.path(file)])
        .chain(["--client-cert-auth".to_owned()])
        .collect::<Vec<_>>();
    let _etcd = Etcd::start(&hub, "https://10.210.0.1:2379", &tls);

    let named: Vec<(&str, &Netns)> = names.iter().copied().zip(hosts.iter()).collect();
    let recipe = Recipe::new("docs/recipes/fleet.md", &named);
    for name in ["node1", "node2", "node3"] {
        for (from, to) in [("ca.pem", "ca.pem"), ("client.pem", "node.pem"), ("client.key", "node.key")] {
            std::fs::copy(certificates.path(from), recipe.dir(name).join(to)).expect("give the node its credentials");
        }
    }
    recipe.run();
}

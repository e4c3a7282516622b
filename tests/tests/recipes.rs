//! The README's first mapping and the recipes in docs/recipes/, run as written (see
//! `rewrite_tests::recipe`): each test builds the network the page describes, and the
//! page's own blocks do the rest. Editing a page's commands changes what is tested.

use rewrite_tests::{
    netns::{Netns, VethEnd, veth},
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

//! The .deb that `cargo xtask dist` builds, installed with the README's own command: into a fresh
//! Debian 11 root (glibc 2.31, no Rust anywhere), where `rewrite` then attaches to an
//! interface, takes a mapping, and carries a ping through it.
//!
//! `cargo xtask test` builds the package and the root and names them in
//! REWRITE_DIST_DEB and REWRITE_DEBIAN_ROOT; without them this test fails and says so.
//! The root is used from a copy, with /dev, /proc, /sys and a bpffs of its own mounted
//! in a private mount namespace that ends with the test's shell: nothing is left
//! mounted, and the copy is removed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use rewrite_tests::{
    netns::{Netns, VethEnd, veth},
    recipe::texts_where,
};

fn required(variable: &str) -> PathBuf {
    let value = std::env::var_os(variable).unwrap_or_else(|| {
        panic!("{variable} is not set: run this test through `cargo xtask test`, which builds the .deb and the root")
    });
    let path = PathBuf::from(value);
    assert!(path.exists(), "{variable}={} does not exist", path.display());
    path
}

/// A copy of the pristine root, removed on drop unless something is still mounted in it.
struct RootCopy(PathBuf);

impl RootCopy {
    fn new(pristine: &Path) -> Self {
        let path = std::env::temp_dir().join(format!("rewrite-test-{}-debian-root", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let out = Command::new("cp").arg("-a").arg(pristine).arg(&path).output().expect("run cp");
        assert!(out.status.success(), "copy the Debian root: {}", String::from_utf8_lossy(&out.stderr));
        Self(path)
    }
}

impl Drop for RootCopy {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = self.0.to_string_lossy().into_owned();
        if mounts.lines().any(|line| line.split_whitespace().nth(1).is_some_and(|at| at.starts_with(&prefix))) {
            eprintln!("{} still has mounts; left in place", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_deb_installs_into_a_fresh_debian_11_and_rewrites_there() {
    let deb = required("REWRITE_DIST_DEB");
    let root = RootCopy::new(&required("REWRITE_DEBIAN_ROOT"));
    // The README's install block, as written, run in /root next to the .deb under its
    // own name: a README that names another file or command fails here.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("read README.md");
    let install = texts_where(&readme, "chroot", "debian-11");
    assert_eq!(install.len(), 1, "README.md has one install block marked chroot=debian-11");
    std::fs::write(root.0.join("root/install.sh"), &install[0]).expect("write the install block into the root");
    std::fs::copy(&deb, root.0.join("root").join(deb.file_name().expect("a file name")))
        .expect("copy the .deb into the root");

    // The node, and a peer that owns the REAL address 192.0.2.5.
    let node = Netns::new("install-node");
    let peer = Netns::new("install-peer");
    veth(
        VethEnd { netns: &node, name: "veth0", mac: [0x02, 0, 0, 0, 0x0a, 1] },
        "192.0.2.1/24",
        VethEnd { netns: &peer, name: "veth0", mac: [0x02, 0, 0, 0, 0x0a, 2] },
        "192.0.2.5/24",
    );
    node.ip(&["route", "add", "10.0.0.5/32", "via", "192.0.2.5"]);

    let script = r#"
set -eu
R="$1"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t bpf bpf "$R/sys/fs/bpf"
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
echo "== glibc in the root: $(in_root ldd --version | head -n 1)"
echo "== the README's install block"
in_root sh -ec 'cd /root && sh -e install.sh' </dev/null
if in_root sh -c 'command -v cargo || command -v rustc'; then echo "Rust is on the root's path"; exit 1; fi
in_root rewrite --version
for file in /usr/bin/rewrite /lib/systemd/system/rewrite-agent.service /etc/rewrite/rewrite.toml \
    /usr/share/bash-completion/completions/rewrite /usr/share/zsh/vendor-completions/_rewrite \
    /usr/share/fish/vendor_completions.d/rewrite.fish /usr/share/man/man1/rewrite.1.gz \
    /usr/share/man/man1/rewrite-map.1.gz /usr/share/doc/rewrite/copyright /usr/share/doc/rewrite/LICENSE-MIT; do
    test -s "$R$file" || { echo "missing from the package: $file"; exit 1; }
done
in_root rewrite check /etc/rewrite/rewrite.toml
in_root rewrite attach --iface veth0 --ingress tc
in_root rewrite map add 10.0.0.5 192.0.2.5
echo "== map list"
in_root rewrite map list --json
ping -c 3 -W 2 10.0.0.5
echo "== stats"
in_root rewrite stats --json
in_root rewrite detach --iface veth0
in_root rewrite down
in_root dpkg --purge rewrite
test ! -e "$R/usr/bin/rewrite" || { echo "purge left /usr/bin/rewrite"; exit 1; }
echo "== done"
"#;
    let out = node
        .command("timeout")
        .args(["120", "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "install-test"])
        .arg(&root.0)
        .output()
        .expect("run the install script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "installing and running the .deb failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout.contains("glibc in the root: ldd (Debian GLIBC 2.31"),
        "the root is Debian 11's glibc 2.31:\n{stdout}"
    );
    assert!(
        stdout.contains("\"10.0.0.5\"") && stdout.contains("\"192.0.2.5\""),
        "map list shows the mapping:\n{stdout}"
    );
    assert!(stdout.contains("3 received"), "the ping goes through the mapping:\n{stdout}");
    assert!(stdout.contains("== done"), "{stdout}");
    drop(peer);
}

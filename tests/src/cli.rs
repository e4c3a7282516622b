//! The `rewrite` binary, run as a separate process inside a test namespace, exactly as
//! an operator runs it.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use crate::netns::{Netns, PinDir};

/// The `rewrite` binary next to the test executables (target/<profile>/rewrite).
pub fn rewrite_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/rewrite
    let binary =
        exe.parent().and_then(|deps| deps.parent()).map(|profile| profile.join("rewrite")).expect("target layout");
    assert!(
        binary.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        binary.display()
    );
    binary
}

/// `rewrite --pin-dir <test pin dir>` inside one namespace. Dropping it removes the
/// pins, which detaches the programs.
#[derive(Debug)]
pub struct RewriteCli<'a> {
    netns: &'a Netns,
    pins: PinDir,
}

impl<'a> RewriteCli<'a> {
    pub fn new(netns: &'a Netns) -> Self {
        Self { netns, pins: PinDir::new(netns.name()) }
    }

    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Runs `rewrite args...` and returns its output, whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_pin_dir(self.pins.path(), args)
    }

    fn run_with_pin_dir(&self, pin_dir: &Path, args: &[&str]) -> Output {
        self.netns
            .command(rewrite_binary().to_str().expect("utf-8 path"))
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(args)
            .output()
            .expect("run rewrite")
    }

    /// Like [`Self::ok`] with another pin directory than the test's own.
    pub fn run_with_pin_dir_ok(&self, pin_dir: &Path, args: &[&str]) -> String {
        let out = self.run_with_pin_dir(pin_dir, args);
        assert!(
            out.status.success(),
            "rewrite {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Self::fails`] with another pin directory than the test's own.
    pub fn fails_with_pin_dir(&self, pin_dir: &Path, args: &[&str]) -> String {
        let out = self.run_with_pin_dir(pin_dir, args);
        assert!(
            !out.status.success(),
            "rewrite {args:?} should have failed, but printed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs `rewrite args...`, panics unless it succeeds, and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.run_with_pin_dir_ok(self.pins.path(), args)
    }

    /// Runs `rewrite args...`, panics unless it exits with `code`, and returns its stdout.
    pub fn exits_with(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "rewrite {args:?} must exit with {code}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `rewrite args...`, panics if it succeeds, and returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        self.fails_with_pin_dir(self.pins.path(), args)
    }
}

//! `rewrite apply` and `rewrite export` with real pinned maps: a config is checked as a
//! whole, every problem is reported with its line, nothing is applied when anything is
//! wrong, and a valid config is applied as a difference.

use rewrite_tests::{agent::ConfigFile, cli::RewriteCli, netns::Netns};

const BASE: &str = r#"max_mappings = 8

[[mapping]]
virtual = "10.200.0.2"
real = "10.100.0.2"
label = "es-data-1"

[[mapping]]
virtual = "10.200.0.3:5000-5001/udp"
real = "10.100.0.31:6000-6001/udp"

[[mapping]]
virtual = "10.201.0.0/16"
real = "172.20.0.0/16"
"#;

fn listing(cli: &RewriteCli<'_>) -> String {
    cli.ok(&["map", "list", "--json"])
}

#[test]
fn invalid_configs_name_each_problem_by_line_and_change_nothing() {
    let netns = Netns::new("config-invalid");
    let cli = RewriteCli::new(&netns);
    let base = ConfigFile::new("base", BASE);
    cli.ok(&["apply", base.as_arg()]);
    let before = listing(&cli);
    assert!(before.contains("10.100.0.2") && before.contains("172.20.0.0/16"), "the base config is applied: {before}");

    let mapping = |virtual_side: &str, real_side: &str| {
        format!("\n[[mapping]]\nvirtual = \"{virtual_side}\"\nreal = \"{real_side}\"\n")
    };
    // (what is wrong, the config, the line the error must name, words it must use)
    let cases: Vec<(&str, String, usize, &str)> = vec![
        (
            "a duplicate VIRTUAL",
            format!("{BASE}{}", mapping("10.200.0.2", "10.100.0.9")),
            17,
            "already mapped on line 4",
        ),
        // Each problem at its value's own line: the REAL's, one below its VIRTUAL's.
        ("a REAL claimed twice", format!("{BASE}{}", mapping("10.200.0.9", "10.100.0.2")), 18, "10.100.0.2"),
        ("a bad address", format!("{BASE}{}", mapping("10.200.0.300", "10.100.0.9")), 17, "10.200.0.300"),
        (
            "a range of another width",
            format!("{BASE}{}", mapping("10.200.0.4:1-10/tcp", "10.100.0.4:1-11/tcp")),
            18,
            "same width",
        ),
        ("an unknown key", format!("{BASE}lable = \"typo\"\n"), 15, "lable"),
        (
            "a table that would overflow",
            format!(
                "{BASE}{}",
                (0..8).map(|i| mapping(&format!("10.202.0.{i}"), &format!("10.102.0.{i}"))).collect::<String>()
            ),
            45,
            "overflow",
        ),
    ];
    for (what, text, line, words) in &cases {
        let file = ConfigFile::new("invalid", text);
        let stderr = cli.fails(&["apply", file.as_arg()]);
        let located = format!("{}:{line}:", file.as_arg());
        assert!(stderr.contains(&located), "{what}: the error must name line {line} ({located}), got:\n{stderr}");
        assert!(stderr.contains(words), "{what}: the error must say {words:?}, got:\n{stderr}");
        assert!(stderr.contains("nothing was applied"), "{what}: the error must say nothing was applied:\n{stderr}");
        assert_eq!(listing(&cli), before, "{what}: the live maps must be unchanged");
        let stderr = cli.fails(&["apply", "--dry-run", file.as_arg()]);
        assert!(stderr.contains(&located), "{what}: --dry-run reports the same problem:\n{stderr}");
    }
    // Several problems at once are all reported.
    let two = ConfigFile::new(
        "two",
        &format!("{BASE}{}{}", mapping("10.200.0.300", "10.100.0.9"), mapping("10.200.0.9", "10.100.0.2")),
    );
    let stderr = cli.fails(&["apply", two.as_arg()]);
    assert!(
        stderr.contains("2 problems") && stderr.contains(":17:11:") && stderr.contains(":22:8:"),
        "both problems:\n{stderr}"
    );
}

#[test]
fn apply_prints_and_applies_the_difference_and_export_round_trips() {
    let netns = Netns::new("config-apply");
    let cli = RewriteCli::new(&netns);
    let base = ConfigFile::new("apply-base", BASE);
    let first = cli.ok(&["apply", base.as_arg()]);
    for line in
        ["added 10.200.0.2 -> 10.100.0.2", "added 10.201.0.0/16 -> 172.20.0.0/16", "added 10.200.0.3:5000-5001/udp"]
    {
        assert!(first.contains(line), "first apply must print {line:?}:\n{first}");
    }
    // Change one REAL, drop the prefix, add a mapping.
    let changed = BASE.replace("real = \"10.100.0.2\"", "real = \"10.100.0.7\"").replace(
        "[[mapping]]\nvirtual = \"10.201.0.0/16\"\nreal = \"172.20.0.0/16\"\n",
        "[[mapping]]\nvirtual = \"fd00::2\"\nreal = \"2001:db8::2\"\n",
    );
    let next = ConfigFile::new("apply-next", &changed);
    // A dry run with changes pending exits with 2, for a pipeline to tell.
    let dry = cli.exits_with(2, &["apply", "--dry-run", next.as_arg()]);
    assert!(dry.contains("would be changed 10.200.0.2 -> 10.100.0.7 (was 10.100.0.2)"), "dry run:\n{dry}");
    assert!(dry.contains("dry run: nothing changed; 1 added, 1 removed, 1 changed"), "dry run:\n{dry}");
    let report: serde_json::Value =
        serde_json::from_str(&cli.exits_with(2, &["apply", "--dry-run", "--json", next.as_arg()]))
            .expect("apply --dry-run --json prints one JSON object");
    assert_eq!(report["pending"], true, "{report}");
    assert_eq!(report["applied"], false, "{report}");
    assert_eq!(report["added"], serde_json::json!(["fd00::2 -> 2001:db8::2"]), "{report}");
    assert_eq!(report["removed"], serde_json::json!(["10.201.0.0/16 -> 172.20.0.0/16"]), "{report}");
    assert_eq!(
        report["changed"],
        serde_json::json!([{ "from": "10.200.0.2 -> 10.100.0.2", "to": "10.200.0.2 -> 10.100.0.7" }]),
        "{report}"
    );
    assert!(listing(&cli).contains("10.100.0.2"), "a dry run changes nothing");
    let applied = cli.ok(&["apply", next.as_arg()]);
    for line in [
        "changed 10.200.0.2 -> 10.100.0.7 (was 10.100.0.2)",
        "removed 10.201.0.0/16 -> 172.20.0.0/16",
        "added fd00::2 -> 2001:db8::2",
        "applied: 1 added, 1 removed, 1 changed",
    ] {
        assert!(applied.contains(line), "apply must print {line:?}:\n{applied}");
    }
    let live = listing(&cli);
    assert!(live.contains("10.100.0.7") && !live.contains("10.100.0.2\"") && !live.contains("172.20.0.0"), "{live}");
    // Applied: nothing pending any more, and `--quiet` prints the summary alone.
    let settled = cli.exits_with(0, &["apply", "--dry-run", next.as_arg()]);
    assert!(settled.contains("dry run: nothing changed; nothing to change"), "{settled}");
    let quiet = cli.ok(&["apply", "--quiet", next.as_arg()]);
    assert_eq!(quiet.lines().count(), 1, "--quiet prints one line:\n{quiet}");
    assert!(quiet.starts_with("applied: 0 added, 0 removed, 0 changed"), "{quiet}");
    // Applying it again changes nothing; so does applying the export.
    let again = cli.ok(&["apply", next.as_arg()]);
    assert!(again.contains("applied: 0 added, 0 removed, 0 changed"), "a second apply is a no-op:\n{again}");
    let exported = ConfigFile::new("exported", &cli.ok(&["export"]));
    let from_export = cli.ok(&["apply", exported.as_arg()]);
    assert!(from_export.contains("applied: 0 added, 0 removed, 0 changed"), "export round-trips:\n{from_export}");
    assert_eq!(listing(&cli), live);
    // Dropping an address mapping removes both its entries.
    let without_v6 = ConfigFile::new(
        "apply-without-v6",
        &changed.replace("\n[[mapping]]\nvirtual = \"fd00::2\"\nreal = \"2001:db8::2\"\n", ""),
    );
    let removed = cli.ok(&["apply", without_v6.as_arg()]);
    assert!(
        removed.contains("removed fd00::2 -> 2001:db8::2") && removed.contains("applied: 0 added, 1 removed"),
        "{removed}"
    );
    let live = listing(&cli);
    assert!(!live.contains("fd00::2") && !live.contains("2001:db8::2") && live.contains("10.100.0.7"), "{live}");
}

/// The unit file in deploy/ starts the agent with a command line the CLI accepts.
#[test]
fn the_systemd_unit_runs_a_command_line_the_cli_accepts() {
    use clap::Parser as _;
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rewrite-agent.service"))
        .expect("read deploy/rewrite-agent.service");
    let exec = unit.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("an ExecStart line");
    let mut words = exec.split_whitespace();
    assert!(words.next().is_some_and(|binary| binary.ends_with("/rewrite")), "ExecStart runs rewrite: {exec}");
    let cli = rewrite_user::cli::Cli::try_parse_from(std::iter::once("rewrite").chain(words))
        .unwrap_or_else(|error| panic!("ExecStart={exec} is not a valid command line: {error}"));
    assert!(matches!(cli.command, rewrite_user::cli::Command::Agent { .. }), "the unit runs the agent: {cli:?}");
}

/// `rewrite check` validates a file as `apply` does, with no root and no dataplane:
/// exit status 0 for a valid file, 1 with every problem at its line and column.
#[test]
fn check_validates_a_file_without_root() {
    // A copy of the binary that an unprivileged user may run, wherever the checkout is.
    let dir = TempDir::new("check");
    let binary = dir.0.join("rewrite");
    std::fs::copy(rewrite_tests::cli::rewrite_binary(), &binary).expect("copy the rewrite binary");
    let as_nobody = |file: &ConfigFile| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&binary)
            .args(["check", file.as_arg()])
            .output()
            .expect("run setpriv (util-linux)")
    };
    let valid = ConfigFile::new("check-valid", BASE);
    let out = as_nobody(&valid);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "a valid file: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("valid (3 mappings)"), "{stdout}");

    let invalid = ConfigFile::new("check-invalid", &BASE.replace("real = \"10.100.0.2\"", "real = \"10.100.0.300\""));
    let out = as_nobody(&invalid);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an invalid file: {stderr}");
    assert!(stderr.contains(&format!("{}:5:8:", invalid.as_arg())), "the problem at line 5, column 8:\n{stderr}");
    assert!(!stderr.contains("root"), "check must not ask for root:\n{stderr}");
}

/// A directory removed when the test ends, however it ends.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rewrite-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a temp directory");
        // Readable and searchable by the unprivileged user the test runs as.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod the temp directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

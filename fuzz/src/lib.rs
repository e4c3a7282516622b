//! The fuzz targets' bodies. Each takes any bytes and panics only on a bug: libFuzzer
//! runs them (`cargo xtask fuzz`), and the regression test replays the seeds and every
//! input that once crashed (`fuzz/seeds/TARGET`, `fuzz/regressions/TARGET`) on the
//! stable toolchain in `cargo xtask test`.

use std::sync::OnceLock;

use clap::Parser as _;
use rewrite_common::{
    counters::REWRITTEN,
    model::ModelTable,
    reference::{self, Datagram, Program},
    spec::{MappingSpec, Side},
};
use rewrite_user::{cli::Cli, config};

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `cargo fuzz` and the corpus directories call them.
pub const TARGETS: [(&str, Target); 4] = [
    ("reference_model", reference_model),
    ("mapping_syntax", mapping_syntax),
    ("cli_arguments", cli_arguments),
    ("config_file", config_file),
];

/// A table with every kind of mapping in both families.
fn table() -> &'static ModelTable {
    static TABLE: OnceLock<ModelTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ModelTable::default();
        let mappings = [
            ("10.200.0.2", "10.100.0.2"),
            ("fd00::2", "2001:db8::2"),
            ("10.200.0.2:9200/tcp", "10.100.0.30:9400/tcp"),
            ("[fd00::3]:5000-5009/udp", "[2001:db8::31]:6000-6009/udp"),
            ("10.201.0.0/16", "172.20.0.0/16"),
        ];
        for (virtual_side, real_side) in mappings {
            let spec = MappingSpec::parse(virtual_side, real_side).expect("a valid mapping");
            table.add_spec(&spec).expect("the mappings do not conflict");
        }
        table
    })
}

/// The parts of a parse that a rewrite must never change: every offset and length.
fn shape(datagram: &Datagram) -> (usize, usize, usize, Option<usize>, bool) {
    (datagram.ip.l3, datagram.ip.end, datagram.l4, datagram.quote, datagram.later_fragment)
}

/// The model's parser and rewrite on any frame, through every program: no panic, the
/// length kept, a frame that is not rewritten left byte-identical, and a rewritten
/// frame that parses exactly as the input did.
pub fn reference_model(data: &[u8]) {
    let parsed = reference::parse(data);
    for program in Program::ALL {
        let run = reference::run(table(), program, data);
        assert_eq!(run.frame.len(), data.len(), "{program:?} changed the frame's length");
        if run.outcome == Some(REWRITTEN) {
            let again = reference::parse(&run.frame);
            assert_eq!(again.as_ref().map(shape), parsed.as_ref().map(shape), "{program:?} changed the parse");
        } else {
            assert_eq!(run.frame, data, "{program:?} changed a frame it did not rewrite");
        }
    }
}

/// The mapping syntax (`VIRTUAL REAL`, as `map add` takes it) and the table's checks:
/// no panic, every refusal has a message, and a side (or a whole mapping) that parses is
/// written back in a form that parses to the same.
pub fn mapping_syntax(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (virtual_text, real_text) = text.split_once(' ').unwrap_or((text, ""));
    for side_text in [virtual_text, real_text] {
        if let Ok(side) = side_text.parse::<Side>() {
            let written = side.to_string();
            let again = written.parse::<Side>().unwrap_or_else(|error| panic!("{written:?} does not parse: {error}"));
            assert_eq!(again, side, "{side_text:?} is written as {written:?}, which means something else");
        }
    }
    // Families, host bits and conflicts are the table's to check: whichever stage
    // refuses, it must say why without panicking.
    match MappingSpec::parse(virtual_text, real_text) {
        Ok(spec) => {
            let written = spec.to_string();
            assert_eq!(written.parse::<MappingSpec>().as_ref(), Ok(&spec), "{text:?} is written as {written:?}");
            if let Err(error) = ModelTable::default().add_spec(&spec) {
                assert!(!error.to_string().is_empty(), "an empty message for {text:?}");
            }
        }
        Err(error) => assert!(!error.to_string().is_empty(), "an empty message for {text:?}"),
    }
}

/// The command line, arguments separated by NUL bytes: parsing never panics, and an
/// error renders to a message.
pub fn cli_arguments(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let arguments = std::iter::once("rewrite").chain(text.split('\0'));
    match Cli::try_parse_from(arguments) {
        Ok(cli) => drop(format!("{cli:?}")),
        Err(error) => drop(error.render().to_string()),
    }
}

/// The config file parser: no panic, every problem located inside the text, and a
/// valid config written back by `render` (as `rewrite export` does) parses to the same
/// config.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("fuzz.toml");
    match config::parse(path, text) {
        Ok(parsed) => {
            let written = config::render(&parsed);
            let again = config::parse(path, &written)
                .unwrap_or_else(|error| panic!("the written config does not parse: {error}\n{written}"));
            assert_eq!(again, parsed, "written as:\n{written}");
        }
        Err(config::ConfigError::Invalid { problems, .. }) => {
            let lines = text.lines().count().max(1);
            for problem in problems {
                assert!(problem.line >= 1 && problem.line <= lines + 1, "line {} of {lines}", problem.line);
                assert!(problem.column >= 1 && !problem.message.is_empty(), "{problem:?}");
            }
        }
        Err(error) => panic!("parse cannot fail to read: {error}"),
    }
}

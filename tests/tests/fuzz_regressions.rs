//! Replays the fuzz targets' seeds and every input that once made a target fail
//! (`fuzz/seeds/TARGET`, `fuzz/regressions/TARGET`) through the same target bodies,
//! on the stable toolchain, so that a fixed bug stays fixed without libFuzzer.
//! `cargo xtask fuzz` runs the targets themselves under libFuzzer.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/lib.rs"]
mod targets;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The regular files of `dir`, sorted; none if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("read a corpus directory entry").path())
        .filter(|path| path.is_file() && !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

#[test]
fn seeds_and_regressions_pass_every_fuzz_target() {
    for (name, target) in targets::TARGETS {
        let seeds = inputs(&fuzz_dir().join("seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} holds no seed: the target would start from nothing");
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for path in seeds.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
            if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("fuzz target {name} fails on {}: {message}", path.display());
            }
        }
        eprintln!("{name}: {} seeds and {} regressions pass", seeds.len(), regressions.len());
    }
}

//! `cargo xtask bench` (metrics): what one scrape of the agent's `/metrics` costs with N
//! address mappings installed, for each `--metrics-mappings` setting: the time to render
//! it (median of the passes, [min–max]), its series (sample lines) and its size. Writes
//! docs/metrics-benchmarks.md (`--quick`: target/bench-quick/, smaller N).

#![allow(clippy::cast_precision_loss, reason = "durations and sizes of a benchmark, shown as f64")]

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use rewrite_common::mapping::AddressMapping;
use rewrite_tests::programs::LoadedObject;
use rewrite_user::agent::metrics::{ApplyStatus, MappingSeries, render};

fn nth(base: [u8; 4], index: u32) -> IpAddr {
    Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + index).into()
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let (sizes, passes, out_dir): (&[u32], usize, _) =
        if quick { (&[1_000], 3, root.join("target/bench-quick")) } else { (&[1_000, 100_000], 5, root.join("docs")) };
    let settings = [MappingSeries::None, MappingSeries::DEFAULT, MappingSeries::All];
    let mut rows = Vec::new();
    for &size in sizes {
        let loaded = LoadedObject::new("bench-metrics", None, &[]);
        let mut table = loaded.table();
        let mappings: Vec<AddressMapping> = (0..size)
            .map(|index| AddressMapping {
                virtual_addr: nth([10, 0, 0, 0], index),
                real_addr: nth([100, 64, 0, 0], index),
            })
            .collect();
        table.insert_new_unchecked(&mappings).expect("install the mappings");
        for series in settings {
            let mut times = Vec::new();
            let mut text = String::new();
            for _ in 0..passes {
                let started = Instant::now();
                text = render(&loaded.layout, &ApplyStatus::default(), series).expect("render the metrics");
                times.push(started.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let samples = text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()).count();
            eprintln!(
                "metrics: {size} mappings, {series}: {samples} series, {} bytes, {:.3} s",
                text.len(),
                times[passes / 2]
            );
            rows.push((size, series, samples, text.len(), times[passes / 2], times[0], times[passes - 1]));
        }
    }
    let mut report = String::from(
        "# Metrics: the cost of one scrape\n\n`cargo xtask bench` writes this file. One rendering of `/metrics` (what a \
         scrape costs the agent's rendering thread; concurrent scrapes share one) with N address mappings installed, \
         for each `--metrics-mappings` setting. Median of the passes, [min–max].\n\n\
         | N | --metrics-mappings | series | bytes | seconds |\n|---:|---|---:|---:|---:|\n",
    );
    for (size, series, samples, bytes, median, min, max) in rows {
        let _ = writeln!(report, "| {size} | {series} | {samples} | {bytes} | {median:.3} [{min:.3}–{max:.3}] |");
    }
    std::fs::create_dir_all(&out_dir).expect("create the report directory");
    let path = out_dir.join("metrics-benchmarks.md");
    std::fs::write(&path, report).expect("write the report");
    eprintln!("metrics: wrote {}", path.display());
}

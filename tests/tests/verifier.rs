//! Every program of both objects passes this kernel's verifier, and what it cost: the
//! instructions the verifier processed (reported by kernels from 5.16 on) and the time
//! the load took. The kernel matrix runs this on each kernel it boots, so a program
//! that grows past an older verifier's limits fails here, with the verifier's reason.

use std::time::{Duration, Instant};

use aya::programs::Program;
use rewrite_common::pinned::{
    PROG_TC_BOUNCE, PROG_TC_EGRESS, PROG_TC_EGRESS_ICMP_ERRORS, PROG_TC_ICMP_ERRORS, PROG_TC_INGRESS, PROG_XDP_BOUNCE,
    PROG_XDP_INGRESS,
};
use rewrite_tests::netns::PinDir;
use rewrite_user::dataplane::{objects, pins::PinLayout};

/// One program's load, as the report prints it.
struct Cost {
    program: &'static str,
    load_time: Duration,
    verified_instructions: Option<u32>,
    /// The verifier's reason when it refused the program: its last lines.
    refused: Option<String>,
}

fn load_each(ebpf: &mut aya::Ebpf, programs: &[&'static str]) -> Vec<Cost> {
    programs
        .iter()
        .map(|&name| {
            let started = Instant::now();
            let program = ebpf.program_mut(name).unwrap_or_else(|| panic!("{name} is missing from the object"));
            let loaded = match program {
                Program::Xdp(program) => program.load(),
                Program::SchedClassifier(program) => program.load(),
                other => panic!("{name} is neither XDP nor TC: {other:?}"),
            };
            let load_time = started.elapsed();
            if let Err(error) = loaded {
                let text = format!("{error:?}");
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let refused = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                return Cost { program: name, load_time, verified_instructions: None, refused: Some(refused) };
            }
            let info = program.info().unwrap_or_else(|error| panic!("no info for {name}: {error}"));
            Cost { program: name, load_time, verified_instructions: info.verified_instruction_count(), refused: None }
        })
        .collect()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|text| text.trim().to_owned()).unwrap_or_default()
}

#[test]
fn every_program_passes_this_kernels_verifier() {
    let pins = PinDir::new("verifier");
    let layout = PinLayout::new(pins.path());
    layout.create_dir(&layout.maps_dir()).expect("create the pin directory on bpffs");
    let mut rewrite = objects::load(&layout.maps_dir(), Some(1024)).expect("load the rewrite object");
    let mut costs = load_each(
        &mut rewrite,
        &[PROG_XDP_INGRESS, PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_TC_ICMP_ERRORS, PROG_TC_EGRESS_ICMP_ERRORS],
    );
    let mut bounce = objects::load_bounce(&layout.maps_dir(), Some(1024)).expect("load the bounce object");
    costs.extend(load_each(&mut bounce, &[PROG_XDP_BOUNCE, PROG_TC_BOUNCE]));
    eprintln!("verifier cost on Linux {}:", kernel_release());
    eprintln!("{:<24} {:>14} {:>10}", "program", "instructions", "load ms");
    for cost in &costs {
        let instructions = match (&cost.refused, cost.verified_instructions) {
            (Some(_), _) => "REFUSED".to_owned(),
            (None, Some(count)) => count.to_string(),
            (None, None) => "n/a".to_owned(),
        };
        eprintln!("{:<24} {:>14} {:>10.1}", cost.program, instructions, cost.load_time.as_secs_f64() * 1000.0);
    }
    // A machine-readable line per program, for the matrix's summary.
    for cost in &costs {
        println!(
            "verifier-cost kernel={} program={} instructions={} load_ms={:.1}",
            kernel_release(),
            cost.program,
            cost.verified_instructions.map_or_else(|| "n/a".to_owned(), |count| count.to_string()),
            cost.load_time.as_secs_f64() * 1000.0
        );
    }
    let refused: Vec<String> =
        costs.iter().filter_map(|cost| cost.refused.as_ref().map(|why| format!("{}:\n{why}", cost.program))).collect();
    assert!(refused.is_empty(), "the verifier of Linux {} refuses:\n{}", kernel_release(), refused.join("\n\n"));
}

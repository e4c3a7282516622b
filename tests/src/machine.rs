//! A description of the machine, for benchmark reports: figures mean little without it.

/// CPU count and model, memory, kernel: "2 × Intel(R) Xeon(R) Processor, 24 GiB, Linux 6.18.44".
pub fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo.lines().filter(|line| line.starts_with("processor")).count();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown CPU");
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().next().and_then(|line| line.split_whitespace().nth(1)).map(str::to_owned))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or_else(|| "unknown memory".to_owned(), |kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} × {model}, {memory}, Linux {}", kernel.trim())
}

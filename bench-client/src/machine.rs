//! Facts about the machine a run happened on, for the report: CPU, cores, kernel, the kernel
//! settings that decide how many connections fit, and the open-file limits.

use serde_json::{json, Value};

/// Kernel settings worth recording (under /proc/sys), when present.
const SYSCTLS: &[&str] = &[
    "fs/file-max",
    "fs/nr_open",
    "net/core/somaxconn",
    "net/core/netdev_max_backlog",
    "net/ipv4/tcp_max_syn_backlog",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/tcp_mem",
    "net/ipv4/tcp_rmem",
    "net/ipv4/tcp_wmem",
    "net/ipv4/tcp_tw_reuse",
    "net/ipv4/tcp_fin_timeout",
    "net/netfilter/nf_conntrack_max",
];

pub fn describe() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let mut sysctl = serde_json::Map::new();
    for key in SYSCTLS {
        if let Ok(v) = std::fs::read_to_string(format!("/proc/sys/{key}")) {
            sysctl.insert(key.replace('/', "."), Value::String(v.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
    }
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
    let mem_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()))
    });
    json!({
        "cpu_model": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": mem_kb.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "sysctl": sysctl,
        "fd_limit": { "soft": soft, "hard": hard },
    })
}

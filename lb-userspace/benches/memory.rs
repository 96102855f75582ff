//! `cargo xtask bench memory`: what the real daemon holds in memory for configs of growing size,
//! and what its kernel maps take. The release daemon runs in a fresh network namespace (XDP on
//! its loopback), once per config; after it is ready and has settled, and again after a reload,
//! its `/proc/PID/smaps` is split into heap and other anonymous memory, the binary's pages and
//! the `RINGS` windows it maps, and the kernel memory of every BPF map it holds is summed from
//! `/proc/PID/fdinfo` (`memlock`, each map once). The figures are sizes, not timings: one run
//! says what a config costs.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use understudy_testbed::{Daemon, Netns, require_root};

/// A config with `services` NAT services of `backends` backends each, at `table_size` (the
/// default, 65,537, when `None`) and the default TCP checks (the backends do not exist: every
/// check fails at once, as they would for backends down).
fn config(ns: &Netns, services: usize, backends: usize, table_size: Option<u32>) -> PathBuf {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\ninstance = \"{}\"\n\n[admin]\nlisten = \"off\"\n",
        ns.name()
    );
    let mut n = 0usize;
    for s in 0..services {
        text.push_str(&format!(
            "\n[[service]]\nname = \"s{s}\"\nvip = \"10.0.0.10:{}\"\n",
            1000 + s
        ));
        if let Some(size) = table_size {
            text.push_str(&format!("table_size = {size}\n"));
        }
        for _ in 0..backends {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"10.200.{}.{}:8080\"\n",
                n / 250,
                n % 250 + 1
            ));
            n += 1;
        }
    }
    let path = std::env::temp_dir().join(format!(
        "understudy-bench-memory-{services}x{backends}-{}.toml",
        table_size.unwrap_or(0)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Kilobytes of the process's memory, by kind.
#[derive(Default)]
struct Resident {
    total: u64,
    /// mimalloc's arena and other anonymous memory (thread stacks).
    anonymous: u64,
    /// The daemon's own binary (its text and data, shared with any other copy running).
    binary: u64,
    /// Kernel memory of BPF maps mapped into the process (the `RINGS` windows, the log ring).
    bpf_maps: u64,
    other: u64,
}

fn resident(pid: u32) -> Resident {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default();
    let mut r = Resident::default();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            name = line.split_whitespace().nth(5).unwrap_or("").to_string();
            continue;
        }
        if first != "Rss:" {
            continue;
        }
        let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        r.total += kb;
        if name.is_empty() || name.starts_with("[stack") || name == "[heap]" {
            r.anonymous += kb;
        } else if name == exe {
            r.binary += kb;
        } else if name.starts_with("anon_inode:bpf-map") {
            r.bpf_maps += kb;
        } else {
            r.other += kb;
        }
    }
    r
}

/// Kernel memory of each BPF map the process holds a descriptor of (by map id, so a map behind
/// two descriptors counts once): its name, max entries, and bytes. A map reached only through a
/// memory mapping has no descriptor here (builds before the `RINGS` windows held none for it).
fn kernel_maps(pid: u32) -> BTreeMap<u32, (String, u64, u64)> {
    let mut maps = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let (Some(id), Some(entries), Some(memlock)) =
            (field("map_id:"), field("max_entries:"), field("memlock:"))
        else {
            continue;
        };
        let id: u32 = id.parse().unwrap_or(0);
        let name = aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|m| m.name_as_str().map(str::to_string))
            .unwrap_or_else(|| format!("map {id}"));
        maps.insert(
            id,
            (
                name,
                entries.parse().unwrap_or(0),
                memlock.parse().unwrap_or(0),
            ),
        );
    }
    maps
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn main() {
    require_root("the memory benchmark");
    Netns::remove_stale();
    // Another build of the daemon can be measured the same way (`UNDERSTUDY_BENCH_DAEMON=PATH`),
    // to compare versions in one run.
    let bin = std::env::var("UNDERSTUDY_BENCH_DAEMON")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_understudy").to_string());
    println!("daemon: {bin}");
    let settle = Duration::from_secs(5);
    println!(
        "daemon memory, MiB (RSS = heap and stacks + binary + mapped BPF maps + other); kernel \
         memory of its BPF maps apart"
    );
    println!(
        "{:<26} {:>7} {:>7} {:>7} {:>7} {:>7} | {:>10}",
        "config", "RSS", "heap", "binary", "maps", "other", "kernel maps"
    );
    let mut kernel = BTreeMap::new();
    for (services, backends, table_size) in [
        (1, 2, None),
        (10, 10, None),
        (100, 10, None),
        (100, 10, Some(4099)),
        (1, 4096, None),
    ] {
        let ns = Netns::new("membench");
        ns.ip(&["link", "set", "lo", "up"]);
        let config = config(&ns, services, backends, table_size);
        let daemon = Daemon::start(&ns, bin.as_ref(), &config);
        std::thread::sleep(settle);
        let pid = daemon.pid();
        let label = match table_size {
            None => format!("{services} × {backends} backends"),
            Some(size) => format!("{services} × {backends}, {size} entries"),
        };
        let show = |when: &str| {
            let r = resident(pid);
            let k: u64 = kernel_maps(pid).values().map(|(_, _, b)| b).sum();
            println!(
                "{:<26} {:>7} {:>7} {:>7} {:>7} {:>7} | {:>10}",
                format!("{label}{when}"),
                mib(r.total),
                mib(r.anonymous),
                mib(r.binary),
                mib(r.bpf_maps),
                mib(r.other),
                mib(k / 1024)
            );
        };
        show("");
        // A reload that changes nothing but is planned and applied in full.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        assert!(
            daemon.notify().wait_ready(Duration::from_secs(60)),
            "the reload did not finish; the daemon's output:\n{}",
            daemon.output()
        );
        std::thread::sleep(settle);
        show(", reloaded");
        kernel = kernel_maps(pid);
        assert!(daemon.stop(), "the daemon did not stop cleanly");
    }
    // The kernel's maps are sized by compile-time capacities, not by the config: one listing.
    println!("\nkernel maps (the same for every config: capacities are fixed at build time)");
    println!("{:<22} {:>10} {:>10}", "map", "entries", "MiB");
    let mut total = 0;
    for (kind, entries, bytes) in kernel.values() {
        total += bytes;
        if *bytes >= 64 * 1024 {
            println!(
                "{:<22} {:>10} {:>10.1}",
                kind,
                entries,
                *bytes as f64 / 1048576.0
            );
        }
    }
    println!(
        "{:<22} {:>10} {:>10.1}",
        "all maps",
        kernel.len(),
        total as f64 / 1048576.0
    );
}

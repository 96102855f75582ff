//! A bounded mutation fuzzer for the config path, TOML → validated config → plan, run in CI.
//! It mutates the shipped configs (values swapped for hostile ones, lines deleted, duplicated,
//! swapped or inserted, bytes changed) and checks two properties on every input:
//! - nothing panics, neither validation nor planning (a fresh plan, and a reload's plan against
//!   the unmutated config);
//! - every refusal says where: a line and a column.
//!
//! The seed is printed; `UNDERSTUDY_FUZZ_SEED=N` replays a run, `UNDERSTUDY_FUZZ_CASES=N` sets
//! its length (default 20,000 cases, stopping early after 60 s).

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    time::{Duration, Instant},
};

use understudy::{
    config::Config,
    plan::{plan, plan_update},
};

/// Each seed's name is the path it is parsed as: gateway.toml's key files are read beside it.
const SEEDS: [(&str, &str); 7] = [
    ("demo.toml", include_str!("../../config/demo.toml")),
    ("failover.toml", include_str!("../../config/failover.toml")),
    ("http.toml", include_str!("../../config/http.toml")),
    ("edge.toml", include_str!("../../config/edge.toml")),
    ("dsr.toml", include_str!("../../config/dsr.toml")),
    ("tunnel.toml", include_str!("../../config/tunnel.toml")),
    (
        "../config/gateway.toml",
        include_str!("../../config/gateway.toml"),
    ),
];

/// Values that have broken parsers and validators before: bounds, zero, overflow, odd types.
const HOSTILE: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "1e309",
    "-0.0",
    "nan",
    "inf",
    "1.5",
    "true",
    "[]",
    "[0]",
    "[99999]",
    "[500, 404]",
    "{}",
    "\"\"",
    "\"x\"",
    "\"0s\"",
    "\"0ms\"",
    "\"1ns\"",
    "\"100years\"",
    "\"18446744073709551615s\"",
    "\"25h\"",
    "\"24h\"",
    "\"10.0.0.10:80\"",
    "\"10.0.0.10:0\"",
    "\"10.0.0.10:99999\"",
    "\"999.999.999.999:1\"",
    "\"[::1]:80\"",
    "\"[fd00::10]:80\"",
    "\"0.0.0.0:80\"",
    "\"lo\"",
    "\"nat\"",
    "\"http\"",
    "\"udp\"",
    "\"source_ip\"",
    "\"reject\"",
    "\"fail_open\"",
    "\"10.0.0.0/33\"",
    "[\"10.0.0.0/8\"]",
    "[\"x\"]",
    "\"∞\"",
    "\"a\\u0000b\"",
    "\"/nonexistent\"",
    "65537",
    "3",
    "100",
    "101",
    "1000001",
];

/// Lines that are valid somewhere, inserted anywhere.
const INSERTS: &[&str] = &[
    "[[service]]",
    "[[service.backend]]",
    "[service.health]",
    "[service.passive]",
    "[service.http]",
    "[service.retry]",
    "[service.circuit]",
    "[service.tls]",
    "[admin]",
    "[dataplane]",
    "name = \"dup\"",
    "vip = \"10.0.0.10:80\"",
    "address = \"10.0.11.2:8080\"",
    "mode = \"http\"",
    "tier = 7",
    "weight = 0",
    "kind = \"udp\"",
    "deadline = \"100years\"",
    "max_ejection_percent = 101",
    "table_size = 2",
    "certificates = []",
    "failure_statuses = [404]",
    "trusted_proxies = [\"300.0.0.0/8\"]",
];

/// A seed with small Maglev tables, so planning (the cost of an accepted case) stays cheap in a
/// debug build; mutations still set `table_size` to large and odd values.
fn small_tables(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("table_size"))
        .map(|l| {
            if l.trim() == "[[service]]" {
                format!("{l}\ntable_size = 1021")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..rng.usize(1..=4) {
        if lines.is_empty() {
            lines.push(INSERTS[rng.usize(..INSERTS.len())].to_string());
        }
        let i = rng.usize(..lines.len());
        match rng.u8(..10) {
            0..=3 => {
                if let Some((key, _)) = lines[i].split_once('=') {
                    let v = HOSTILE[rng.usize(..HOSTILE.len())];
                    lines[i] = format!("{}= {v}", key);
                }
            }
            4 => {
                lines.remove(i);
            }
            5 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            6 => {
                let j = rng.usize(..lines.len());
                lines.swap(i, j);
            }
            7 | 8 => lines.insert(i, INSERTS[rng.usize(..INSERTS.len())].to_string()),
            _ => {
                let mut bytes = lines[i].clone().into_bytes();
                let at = rng.usize(..=bytes.len());
                const BYTES: &[u8] = b"=[]{}\"',.:#\\\n0x9 ";
                let b = BYTES[rng.usize(..BYTES.len())];
                if at < bytes.len() && rng.bool() {
                    bytes[at] = b;
                } else {
                    bytes.insert(at, b);
                }
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    lines.join("\n")
}

#[test]
fn mutated_configs_never_panic_and_every_refusal_says_where() {
    let seed = std::env::var("UNDERSTUDY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cases: usize = std::env::var("UNDERSTUDY_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    println!("config fuzz: seed {seed} (replay with UNDERSTUDY_FUZZ_SEED={seed}), {cases} cases");
    let mut rng = fastrand::Rng::with_seed(seed);
    let seeds: Vec<String> = SEEDS.iter().map(|(_, text)| small_tables(text)).collect();
    let originals: Vec<Config> = SEEDS
        .iter()
        .zip(&seeds)
        .map(|((name, _), text)| Config::parse(Path::new(name), text).expect("a shipped config"))
        .collect();
    let previous_plans: Vec<_> = originals.iter().map(plan).collect();
    let started = Instant::now();
    let (mut accepted, mut refused, mut ran) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for case in 0..cases {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        ran += 1;
        let which = rng.usize(..SEEDS.len());
        let (name, _) = SEEDS[which];
        let input = mutate(&mut rng, &seeds[which]);
        let result = catch_unwind(AssertUnwindSafe(|| {
            match Config::parse(Path::new(name), &input) {
                Ok(config) => {
                    let fresh = plan(&config);
                    let previous = &previous_plans[which];
                    let mut generations: Vec<u32> =
                        previous.backends.iter().map(|b| b.generation).collect();
                    let _ = plan_update(&config, Some(previous), &mut generations);
                    drop(fresh);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }));
        match result {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) if e.line > 0 && e.column > 0 => refused += 1,
            Ok(Err(e)) => failures.push(format!(
                "case {case}: an error without a place: {e}\n{input}"
            )),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("case {case}: panicked: {why}\n{input}"));
            }
        }
        if failures.len() >= 5 {
            break;
        }
    }
    println!(
        "config fuzz: {ran} cases in {:?}: {accepted} accepted, {refused} refused with a place",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}:\n\n{}",
        failures.join("\n\n---\n\n")
    );
    assert!(
        accepted > ran / 50,
        "the mutations still reach validation and planning: {accepted} accepted"
    );
}

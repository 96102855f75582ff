//! `cargo xtask soak --minutes N`: the real daemon under N minutes of churn, with checkers.
//!
//! Namespaces (client, balancer, 4 backends), the release daemon, and two services on the same
//! backends: `echo`, NAT on 10.0.0.10:81 (greeting echo servers on :8080, TCP health checks),
//! and `api`, HTTP on 10.0.0.10:80 (HTTP servers on :8090, retries on 502/503/504). Backends be1
//! and be2 stay healthy throughout; be3 and be4 are the ones that flap. All at once:
//!
//! - every 3–7 s a flapping backend changes state at random: killed (both servers), refusing
//!   (its echo port closed), answering 503, or back to healthy;
//! - every 10 s a reload (SIGHUP) with a new config: be4 added or removed, weights changed;
//! - every 30 s a drain of be1 or be2 through the CLI, and its enable 10 s later;
//! - every 2 minutes the daemon killed with SIGKILL and started again (it adopts its pins);
//! - steady load: short echo connections (4 workers), 20 long-lived byte-checked streams
//!   (opened again every 5 minutes), and HTTP GETs (2 workers).
//!
//! Checkers, each of which must be 0 for the soak to pass:
//! - broken streams on be1/be2 (which never failed);
//! - failed short connections outside the window around a backend going down: from 1 s before
//!   (a connection's own timeout) to `DETECTION` after (the health checks' fall × interval plus
//!   a timeout and a margin);
//! - HTTP errors (any status but 200, or no answer) while the daemon was running, since be1 and
//!   be2 were always healthy; requests that ended while the daemon was down (SIGKILL → ready,
//!   so a request the kill cut included) are counted apart: the proxy lives in the daemon, and
//!   nothing listens on its port until it is back;
//! - pins or namespaces left after the run.
//!
//! Daemon RSS and open descriptors are sampled every 5 s; the report gives each daemon life's
//! slope (KiB and descriptors per minute) and the range.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use understudy_testbed::{
    Daemon, EchoServer, HttpBackend, Netns, Topology, backend_v4, cli, http_get,
    traffic::{Load, Stream, close, open_stream, short_connection},
};

#[derive(Args)]
pub struct Options {
    /// How long to churn.
    #[arg(long, default_value_t = 3)]
    pub minutes: u64,
    /// Seed for the flapping's random choices (printed, to replay a run).
    #[arg(long)]
    pub seed: Option<u64>,
}

const NAT_VIP: &str = "10.0.0.10:81";
const HTTP_VIP: &str = "10.0.0.10:80";
/// How long after a backend goes down a failed new connection is excused: health checks every
/// 300 ms, down after 2 failures with a 200 ms timeout (≈ 0.8 s), plus the writer and a margin.
const DETECTION: Duration = Duration::from_millis(2500);
const STABLE: [usize; 2] = [1, 2];
const FLAPPING: [usize; 2] = [3, 4];

/// What a flapping backend is doing.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Healthy,
    Killed,
    Refusing,
    Answering503,
}

struct Host {
    index: usize,
    echo: Option<EchoServer>,
    http: Option<HttpBackend>,
}

impl Host {
    fn start(topo: &Topology, index: usize) -> Host {
        let mut h = Host {
            index,
            echo: None,
            http: None,
        };
        h.set(topo, State::Healthy);
        h
    }

    fn set(&mut self, topo: &Topology, state: State) {
        let ns = &topo.backends[self.index - 1];
        let echo_up = matches!(state, State::Healthy | State::Answering503);
        let http_up = matches!(
            state,
            State::Healthy | State::Answering503 | State::Refusing
        );
        if !echo_up {
            if let Some(e) = self.echo.take() {
                e.kill();
            }
        } else if self.echo.is_none() {
            self.echo = Some(EchoServer::start_greeting(
                ns,
                SocketAddr::new(topo.backend_addr(self.index, false), 8080),
                Some(format!("be{}\n", self.index)),
            ));
        }
        if !http_up {
            if self.http.take().is_some() {
                // Its listener closes within its 200 ms accept poll.
                std::thread::sleep(Duration::from_millis(300));
            }
        } else if self.http.is_none() {
            self.http = Some(HttpBackend::start(
                ns,
                SocketAddr::new(topo.backend_addr(self.index, false), 8090),
                format!("be{}", self.index),
            ));
        }
        if let Some(h) = &self.http {
            let code = if state == State::Answering503 {
                503
            } else {
                200
            };
            h.status.store(code, Ordering::SeqCst);
        }
    }
}

/// A small xorshift generator: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The config of reload generation `gen`: be4 in the pools on even generations, weights of
/// be1/be2 moving between 1 and 3.
fn config_text(topo: &Topology, generation: u64) -> String {
    let mut members = vec![1, 2, 3];
    if generation.is_multiple_of(2) {
        members.push(4);
    }
    let weight = |i: usize| match i {
        1 => 1 + generation % 3,
        2 => 1 + (generation + 1) % 3,
        _ => 1,
    };
    let health = "[service.health]\nkind = \"tcp\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n";
    let mut text = format!(
        "{}\n[[service]]\nname = \"echo\"\nvip = \"{NAT_VIP}\"\n{health}\n",
        topo.dataplane_toml()
    );
    for &i in &members {
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"{}:8080\"\nweight = {}\n\n",
            backend_v4(i),
            weight(i)
        ));
    }
    text.push_str(&format!(
        "[[service]]\nname = \"api\"\nvip = \"{HTTP_VIP}\"\nmode = \"http\"\n\
         [service.health]\nkind = \"http\"\npath = \"/\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\n\
         fall = 2\nrise = 2\n\
         [service.retry]\nattempts = 3\non_status = [502, 503, 504]\nbudget_ratio = 1.0\n\
         budget_min_per_second = 100\n\n"
    ));
    for &i in &members {
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"{}:8090\"\nweight = {}\n\n",
            backend_v4(i),
            weight(i)
        ));
    }
    text
}

/// Rounds of a long-lived stream (20 ms apart): 5 minutes, then a new set opens.
const STREAM_ROUNDS: u64 = 5 * 60 * 1000 / 20;

/// Timestamped outcomes of one kind of client traffic.
type Log = Arc<Mutex<Vec<(Instant, Result<String, String>)>>>;

pub fn run(o: &Options) -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!("the soak builds network namespaces and attaches XDP: run it as root");
    }
    Netns::remove_stale();
    let binary = crate::build::run(&crate::build::Options { release: true })?;
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    println!(
        "soak: {} minutes, seed {seed} (`cargo xtask soak --minutes {} --seed {seed}` replays \
         the choices)",
        o.minutes, o.minutes
    );
    let report = soak(&binary, Duration::from_secs(o.minutes * 60), seed)?;
    println!("{report}");
    if !report.failures.is_empty() {
        bail!("soak failed: {}", report.failures.join("; "));
    }
    println!("soak: passed");
    Ok(())
}

#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lines {
            writeln!(f, "soak: {l}")?;
        }
        Ok(())
    }
}

impl Report {
    fn check(&mut self, what: &str, bad: usize, detail: impl std::fmt::Display) {
        self.lines.push(format!("{what}: {bad} {detail}"));
        if bad > 0 {
            self.failures.push(format!("{what}: {bad}"));
        }
    }
}

fn soak(binary: &Path, length: Duration, seed: u64) -> anyhow::Result<Report> {
    let mut rng = Rng(seed);
    let topo = Topology::build(4);
    // The HTTP service's VIP is an address of the balancer host; the NAT one is XDP's.
    topo.lb.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
    // Where the daemon pins its state (`understudy::config::pin_dir`).
    let pins = Path::new("/sys/fs/bpf/understudy").join(topo.lb.name());
    let config_path = std::env::temp_dir().join(format!("{}-soak.toml", topo.lb.name()));
    let mut generation = 0;
    std::fs::write(&config_path, config_text(&topo, generation))?;
    let mut hosts: Vec<Host> = (1..=4).map(|i| Host::start(&topo, i)).collect();
    let mut states = [State::Healthy; 4];
    let mut daemon = Some(Daemon::start(&topo.lb, binary, &config_path));
    // Every backend up in both services before the clock starts: the daemon is ready before its
    // first checks have passed, and a start is not what this measures.
    let (nat_vip, http_vip): (SocketAddr, SocketAddr) = (NAT_VIP.parse()?, HTTP_VIP.parse()?);
    wait_all_up(&topo, nat_vip, http_vip)?;
    let mut daemon_logs: Vec<String> = Vec::new();
    // What the churn did when, to read a failure against.
    let mut timeline: Vec<(Instant, String)> = Vec::new();
    let started = Instant::now();
    let started_wall = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .args(["-u", "+%H:%M:%S.%N"])
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    let end = started + length;
    // When a flapping backend went down (killed or refusing), and when the daemon was down.
    let downs: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let daemon_down: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    // Short connections: 4 workers, 10 ms apart, bounded well past the soak's length.
    let per_worker = length.as_millis() as u64 / 10 + 1000;
    let load = Load::bounded(&topo.client, nat_vip, Duration::from_millis(10), per_worker);
    let http: Log = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (log, stop) = (http.clone(), stop.clone());
        workers.push(topo.client.thread(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = match http_get(http_vip, "/", Duration::from_secs(5)) {
                    Ok((200, body)) => Ok(body),
                    Ok((code, body)) => Err(format!("{code} {body}")),
                    Err(e) => Err(e),
                };
                // When it ended: a request cut by the daemon's SIGKILL ends while the daemon is
                // down, though it began before.
                log.lock().unwrap().push((Instant::now(), r));
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }

    // Long-lived streams, in sets of 5 minutes (each stream is bounded in rounds).
    let mut streams: Vec<Stream> = Vec::new();
    let mut unopened = 0;
    let mut open_set = |streams: &mut Vec<Stream>| {
        for i in 0..20 {
            match open_stream(&topo.client, nat_vip, i, STREAM_ROUNDS) {
                Ok(s) => streams.push(s),
                // Landed on a backend that went down before its check noticed: not a break.
                Err(_) => unopened += 1,
            }
        }
    };
    open_set(&mut streams);
    let mut streams_opened = Instant::now();

    let mut samples: Vec<(usize, f64, u64, u64)> = Vec::new(); // (life, minutes, rss KiB, fds)
    let mut life = 0;
    let mut next_flap = Instant::now() + Duration::from_secs(3);
    let mut next_reload = Instant::now() + Duration::from_secs(10);
    let mut next_drain = Instant::now() + Duration::from_secs(30);
    let mut enable_at: Option<(Instant, usize)> = None;
    let mut next_restart = Instant::now() + Duration::from_secs(120);
    let mut next_sample = Instant::now();
    let mut events = (0u32, 0u32, 0u32, 0u32); // flaps, reloads, drains, restarts
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_flap {
            let i = FLAPPING[rng.below(2) as usize];
            let state = match rng.below(4) {
                0 => State::Killed,
                1 => State::Refusing,
                2 => State::Answering503,
                _ => State::Healthy,
            };
            if matches!(state, State::Killed | State::Refusing) {
                downs.lock().unwrap().push(Instant::now());
            }
            hosts[i - 1].set(&topo, state);
            states[i - 1] = state;
            events.0 += 1;
            timeline.push((Instant::now(), format!("be{i} {state:?}")));
            next_flap = Instant::now() + Duration::from_millis(3000 + rng.below(4000));
        }
        if now >= next_reload {
            generation += 1;
            std::fs::write(&config_path, config_text(&topo, generation))?;
            if let Some(d) = &daemon {
                // A backend removed from the pools is, for its flows, a backend gone.
                downs.lock().unwrap().push(Instant::now());
                unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
            }
            events.1 += 1;
            timeline.push((now, format!("reload, generation {generation}")));
            next_reload = now + Duration::from_secs(10);
        }
        if now >= next_drain && enable_at.is_none() {
            let i = STABLE[rng.below(2) as usize];
            drain(binary, &topo.lb, "drain", i)?;
            enable_at = Some((now + Duration::from_secs(10), i));
            events.2 += 1;
            timeline.push((now, format!("drain be{i}")));
            next_drain = now + Duration::from_secs(30);
        }
        if let Some((at, i)) = enable_at
            && now >= at
        {
            drain(binary, &topo.lb, "enable", i)?;
            timeline.push((now, format!("enable be{i}")));
            enable_at = None;
        }
        if now >= next_restart {
            let down = Instant::now();
            if let Some(d) = daemon.take() {
                daemon_logs.push(d.output());
                d.kill9();
            }
            daemon = Some(Daemon::start(&topo.lb, binary, &config_path));
            daemon_down.lock().unwrap().push((down, Instant::now()));
            // The new daemon's first health verdicts come after its first checks.
            downs.lock().unwrap().push(Instant::now());
            life += 1;
            events.3 += 1;
            timeline.push((down, "daemon killed (SIGKILL) and restarted".to_string()));
            next_restart = Instant::now() + Duration::from_secs(120);
        }
        if now >= next_sample
            && let Some(d) = &daemon
        {
            if let Some((rss, fds)) = process_use(d.pid()) {
                samples.push((life, started.elapsed().as_secs_f64() / 60.0, rss, fds));
            }
            next_sample = now + Duration::from_secs(5);
        }
        if now.duration_since(streams_opened) >= Duration::from_secs(5 * 60 - 5) {
            open_set(&mut streams);
            streams_opened = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let short = load.results.lock().unwrap().clone();
    load.finish();

    let mut report = Report::default();
    report.lines.push(format!(
        "{} flaps, {} reloads, {} drains, {} daemon restarts (SIGKILL) in {:.1} minutes",
        events.0,
        events.1,
        events.2,
        events.3,
        started.elapsed().as_secs_f64() / 60.0
    ));
    // Streams on the backends that never failed must all have run, byte for byte.
    let mut broken = Vec::new();
    let (mut on_stable, mut rounds) = (0, 0);
    for s in &streams {
        let on = s
            .name
            .trim_start_matches("be")
            .parse::<usize>()
            .unwrap_or(0);
        if STABLE.contains(&on) {
            on_stable += 1;
            rounds += s.rounds.load(Ordering::Relaxed);
            if let Some(e) = s.error.lock().unwrap().clone() {
                broken.push(format!("{}: {e}", s.name));
            }
        }
    }
    close(&streams);
    report.check(
        "broken streams on be1/be2",
        broken.len(),
        format!(
            "of {on_stable} ({rounds} rounds of 512 bytes checked; {} streams in all, {unopened} \
             more could not open) {:?}",
            streams.len(),
            &broken[..broken.len().min(3)]
        ),
    );
    let downs = downs.lock().unwrap().clone();
    let daemon_down = daemon_down.lock().unwrap().clone();
    // A connection started up to its 1 s timeout before a backend went down can meet the
    // change too: the window opens 1 s before the event.
    let excused = |t: Instant| {
        downs
            .iter()
            .any(|d| t + Duration::from_secs(1) >= *d && t < *d + DETECTION)
    };
    let failed: Vec<&(Instant, Result<String, String>)> =
        short.iter().filter(|(_, r)| r.is_err()).collect();
    let unexcused: Vec<String> = failed
        .iter()
        .filter(|(t, _)| !excused(*t))
        .map(|(t, r)| {
            format!(
                "{:.1}s: {}",
                t.duration_since(started).as_secs_f64(),
                r.as_ref().unwrap_err()
            )
        })
        .collect();
    report.check(
        "failed new connections outside detection windows",
        unexcused.len(),
        format!(
            "of {} ({} failed inside a {:?} window after a backend went down) {:?}",
            short.len(),
            failed.len() - unexcused.len(),
            DETECTION,
            &unexcused[..unexcused.len().min(3)]
        ),
    );
    let http = http.lock().unwrap().clone();
    let daemon_was_down = |t: Instant| daemon_down.iter().any(|(a, b)| t >= *a && t <= *b);
    let (mut errors, mut while_down) = (Vec::new(), 0);
    for (t, r) in &http {
        if let Err(e) = r {
            if daemon_was_down(*t) {
                while_down += 1;
            } else {
                errors.push(format!(
                    "{:.1}s: {e}",
                    t.duration_since(started).as_secs_f64()
                ));
            }
        }
    }
    report.check(
        "HTTP errors while be1/be2 were healthy and the daemon ran",
        errors.len(),
        format!(
            "of {} requests ({while_down} refused while the daemon was down, for {:.1} s in \
             all) {:?}",
            http.len(),
            daemon_down
                .iter()
                .map(|(a, b)| b.duration_since(*a).as_secs_f64())
                .sum::<f64>(),
            &errors[..errors.len().min(3)]
        ),
    );
    for l in 0..=life {
        let s: Vec<(f64, f64, f64)> = samples
            .iter()
            .filter(|x| x.0 == l)
            .map(|x| (x.1, x.2 as f64, x.3 as f64))
            .collect();
        if s.len() < 3 {
            continue;
        }
        let rss: Vec<(f64, f64)> = s.iter().map(|x| (x.0, x.1)).collect();
        let fds: Vec<(f64, f64)> = s.iter().map(|x| (x.0, x.2)).collect();
        let range = |v: &[(f64, f64)]| {
            let lo = v.iter().map(|x| x.1).fold(f64::MAX, f64::min);
            let hi = v.iter().map(|x| x.1).fold(f64::MIN, f64::max);
            (lo, hi)
        };
        let (rl, rh) = range(&rss);
        let (fl, fh) = range(&fds);
        report.lines.push(format!(
            "daemon life {}: {} samples over {:.1} min; RSS {:.1}–{:.1} MiB, slope {:+.0} KiB/min; \
             descriptors {fl}–{fh}, slope {:+.1}/min",
            l + 1,
            s.len(),
            s.last().unwrap().0 - s[0].0,
            rl / 1024.0,
            rh / 1024.0,
            slope(&rss),
            slope(&fds),
        ));
    }

    // A clean stop, then nothing may be left behind.
    if let Some(d) = daemon.take() {
        daemon_logs.push(d.output());
        let ok = d.stop();
        report.check(
            "unclean daemon stops",
            usize::from(!ok),
            "at the end (SIGTERM)",
        );
    }
    drop(hosts);
    let lb_name = topo.lb.name().to_string();
    drop(topo);
    let _ = std::fs::remove_file(&config_path);
    let left_pins = usize::from(pins.exists());
    let namespaces = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .context("ip netns list")?
            .stdout,
    )
    .into_owned();
    let left_ns = namespaces
        .lines()
        .filter(|l| l.contains(&format!("-{}-", std::process::id())))
        .count();
    report.check(
        "leftover pins and namespaces",
        left_pins + left_ns,
        format!("(pins of {lb_name}: {left_pins}, namespaces of this run: {left_ns})"),
    );
    if !report.failures.is_empty() {
        report.lines.push(format!(
            "started at {} (daemon logs are in UTC); the churn, seconds from the start:",
            started_wall
        ));
        for (t, what) in &timeline {
            report.lines.push(format!(
                "  {:7.1}s {what}",
                t.duration_since(started).as_secs_f64()
            ));
        }
        for (i, log) in daemon_logs.iter().enumerate() {
            let path =
                std::env::temp_dir().join(format!("understudy-soak-{seed}-life{}.log", i + 1));
            std::fs::write(&path, log)?;
            report
                .lines
                .push(format!("daemon life {}'s log: {}", i + 1, path.display()));
        }
    }
    Ok(report)
}

/// Waits until every backend is in rotation: 40 short connections in a row reach all four
/// backends, and 20 GETs in a row answer 200.
fn wait_all_up(topo: &Topology, nat_vip: SocketAddr, http_vip: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + understudy_testbed::scaled(Duration::from_secs(30));
    topo.client.enter(|| {
        loop {
            let mut seen = std::collections::BTreeSet::new();
            let nat_ok = (0..40).all(|_| {
                short_connection(nat_vip)
                    .map(|name| seen.insert(name))
                    .is_ok()
            }) && seen.len() == 4;
            let http_ok = (0..20).all(|_| {
                matches!(
                    http_get(http_vip, "/", Duration::from_secs(2)),
                    Ok((200, _))
                )
            });
            if nat_ok && http_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the backends did not all come up within 30 s of the daemon's start");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// Least-squares slope of y over x (per minute, as x is in minutes).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// The process's resident memory (KiB) and open descriptors.
fn process_use(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

fn drain(binary: &Path, lb: &Netns, verb: &str, i: usize) -> anyhow::Result<()> {
    let bin = binary.to_str().context("binary path")?;
    for service in ["echo", "api"] {
        let port = if service == "echo" { 8080 } else { 8090 };
        let addr = format!("{}:{port}", backend_v4(i));
        let (ok, _, err) = cli(bin, lb, &[verb, service, &addr]);
        if !ok {
            bail!("understudy {verb} {service} {addr} failed: {err}");
        }
    }
    Ok(())
}

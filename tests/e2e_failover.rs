//! End to end, failover: the real daemon with HTTP health checks, two primary backends and one
//! backup, a client that keeps opening short connections and holds long-lived streams, and
//! backends killed and restored under that load. Bounds are generous on purpose: the precise
//! figures belong in `cargo xtask bench failover`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use understudy_testbed::{Daemon, EchoServer, Netns, Topology, require_root};

const VIP: &str = "10.0.0.10:80";
/// Health checks every 100 ms, down after 2 failures: a dead backend is out within about
/// 2 x 110 ms + the 80 ms timeout. The tests allow a full second.
const DETECTION: Duration = Duration::from_millis(1000);

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

/// A backend host: a TCP echo server that greets with its name, and an HTTP health endpoint
/// (Python's http.server on 8081). Killing it stops both, as a crashed host would.
struct Backend {
    index: usize,
    name: String,
    echo: Option<EchoServer>,
    health: Option<Child>,
}

impl Backend {
    fn new(index: usize) -> Backend {
        Backend {
            index,
            name: format!("be{index}"),
            echo: None,
            health: None,
        }
    }

    fn start(&mut self, topo: &Topology, web_root: &PathBuf, echo: bool) {
        let ns = &topo.backends[self.index - 1];
        if echo {
            let addr = SocketAddr::new(topo.backend_addr(self.index, false), 8080);
            self.echo = Some(EchoServer::start_greeting(
                ns,
                addr,
                Some(format!("{}\n", self.name)),
            ));
        }
        self.health = Some(
            ns.command("python3")
                .args([
                    "-m",
                    "http.server",
                    "8081",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                ])
                .arg(web_root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start python3 http.server"),
        );
    }

    fn kill(&mut self) {
        if let Some(e) = self.echo.take() {
            e.kill();
        }
        if let Some(mut h) = self.health.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_name(s: &mut TcpStream) -> std::io::Result<String> {
    let mut name = Vec::new();
    let mut b = [0u8; 1];
    while name.len() < 16 {
        s.read_exact(&mut b)?;
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&name).into_owned());
        }
        name.push(b[0]);
    }
    Err(std::io::Error::other("no greeting"))
}

/// One short connection: greeting, 4 bytes echoed, close. Returns the backend's name.
fn short_connection() -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&vip(), Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let name = read_name(&mut s).map_err(|e| e.to_string())?;
    s.write_all(b"ping").map_err(|e| e.to_string())?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back).map_err(|e| e.to_string())?;
    if &back != b"ping" {
        return Err("echo mismatch".into());
    }
    Ok(name)
}

/// Short connections from 4 client threads, back to back, each result timestamped.
struct Load {
    results: Arc<Mutex<Vec<(Instant, Result<String, String>)>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(client: &Netns) -> Load {
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..4)
            .map(|_| {
                let (r, s) = (results.clone(), stop.clone());
                client.thread(move || {
                    // Bounded: at most 50,000 connections per worker.
                    for _ in 0..50_000 {
                        if s.load(Ordering::Relaxed) {
                            return;
                        }
                        let started = Instant::now();
                        let res = short_connection();
                        r.lock().unwrap().push((started, res));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            results,
            stop,
            workers,
        }
    }

    /// Results of connections started at or after `since`.
    fn since(&self, since: Instant) -> Vec<Result<String, String>> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.join().unwrap();
        }
    }
}

/// A long-lived stream: 512-byte rounds every 20 ms, each checked byte for byte.
struct Stream {
    name: String,
    rounds: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

fn open_streams(client: &Netns, n: usize) -> Vec<Stream> {
    (0..n)
        .map(|i| {
            let (tx, rx) = std::sync::mpsc::channel();
            let rounds = Arc::new(AtomicU64::new(0));
            let error = Arc::new(Mutex::new(None));
            let stop = Arc::new(AtomicBool::new(false));
            let (r, e, s) = (rounds.clone(), error.clone(), stop.clone());
            client.thread(move || {
                let mut conn = match TcpStream::connect_timeout(&vip(), Duration::from_secs(2)) {
                    Ok(c) => c,
                    Err(err) => {
                        let _ = tx.send(Err(err.to_string()));
                        return;
                    }
                };
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                match read_name(&mut conn) {
                    Ok(name) => tx.send(Ok(name)).unwrap(),
                    Err(err) => {
                        let _ = tx.send(Err(err.to_string()));
                        return;
                    }
                }
                // Bounded: at most 10 minutes of rounds.
                for round in 0..30_000u64 {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    let chunk: Vec<u8> = (0..512)
                        .map(|j| (round as usize * 7 + j + i) as u8)
                        .collect();
                    let mut back = vec![0u8; 512];
                    let res = conn
                        .write_all(&chunk)
                        .and_then(|_| conn.read_exact(&mut back));
                    match res {
                        Ok(()) if back == chunk => {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {
                            *e.lock().unwrap() = Some(format!("round {round}: bytes differ"));
                            return;
                        }
                        Err(err) => {
                            *e.lock().unwrap() = Some(format!("round {round}: {err}"));
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let name = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("stream opened")
                .unwrap_or_else(|e| panic!("stream {i} could not open: {e}"));
            Stream {
                name,
                rounds,
                error,
                stop,
            }
        })
        .collect()
}

fn close(streams: &[Stream]) {
    for s in streams {
        s.stop.store(true, Ordering::Relaxed);
    }
}

/// Every stream on one of `names` has had no error and made progress since `before`.
fn assert_streams_healthy(streams: &[Stream], names: &[&str], before: &[u64], what: &str) {
    for (i, s) in streams.iter().enumerate() {
        if !names.contains(&s.name.as_str()) {
            continue;
        }
        assert_eq!(
            *s.error.lock().unwrap(),
            None,
            "{what}: stream {i} on {} broke",
            s.name
        );
        assert!(
            s.rounds.load(Ordering::Relaxed) > before[i] + 10,
            "{what}: stream {i} on {} stalled",
            s.name
        );
    }
}

fn rounds(streams: &[Stream]) -> Vec<u64> {
    streams
        .iter()
        .map(|s| s.rounds.load(Ordering::Relaxed))
        .collect()
}

fn write_config(topo: &Topology, interval: &str, passive: &str) -> PathBuf {
    let interfaces: Vec<String> = topo
        .lb_interfaces()
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    let mut text = format!(
        r#"[dataplane]
interfaces = [{}]
xdp_mode = "native"

[[service]]
name = "echo"
vip = "{VIP}"
table_size = 1021
passive = {{ {passive} }}

[service.health]
kind = "http"
port = 8081
path = "/"
interval = "{interval}"
timeout = "80ms"
rise = 2
fall = 2
"#,
        interfaces.join(", ")
    );
    for i in 1..=topo.backends.len() {
        let tier = if i == 3 { 1 } else { 0 };
        text.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}:8080\"\ntier = {tier}\n",
            topo.backend_addr(i, false)
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, text).unwrap();
    path
}

fn web_root(topo: &Topology) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-www", topo.lb.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "ok\n").unwrap();
    dir
}

/// Waits (up to 15 s) until short connections reach every backend in `names`.
fn wait_for(client: &Netns, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = std::collections::BTreeSet::new();
    while Instant::now() < deadline {
        let got: Vec<Result<String, String>> =
            client.enter(|| (0..20).map(|_| short_connection()).collect());
        seen.extend(got.into_iter().flatten());
        if names.iter().all(|n| seen.contains(*n)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("backends {names:?} never all answered; saw {seen:?}");
}

/// Waits (up to 10 s) until something listens on `addr`, seen from `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr}");
}

fn assert_all_ok_on(results: &[Result<String, String>], names: &[&str], what: &str) {
    assert!(
        results.len() > 20,
        "{what}: only {} connections made",
        results.len()
    );
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} connections failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(3)]
    );
    let stray: Vec<&String> = results
        .iter()
        .flatten()
        .filter(|n| !names.contains(&n.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "{what}: connections reached {stray:?}, expected only {names:?}"
    );
}

#[test]
fn failover_to_the_backup_and_back_under_load() {
    require_root("the failover end-to-end test");
    let topo = Topology::build(3);
    let root = web_root(&topo);
    let mut backends: Vec<Backend> = (1..=3).map(Backend::new).collect();
    for b in &mut backends {
        b.start(&topo, &root, true);
    }
    let config = write_config(&topo, "100ms", "");
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    wait_for(&topo.client, &["be1", "be2"]);

    let streams = open_streams(&topo.client, 20);
    let on: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    assert!(
        on.iter().all(|n| *n == "be1" || *n == "be2"),
        "a stream opened on the backup: {on:?}"
    );
    let load = Load::start(&topo.client);
    std::thread::sleep(Duration::from_millis(500));
    assert_all_ok_on(
        &load.since(Instant::now() - Duration::from_millis(400)),
        &["be1", "be2"],
        "all up",
    );

    // 1. One primary dies: after detection, nothing fails and nothing reaches it; the other
    //    primary's streams go on byte for byte.
    let before = rounds(&streams);
    let killed = Instant::now();
    backends[0].kill();
    std::thread::sleep(DETECTION + Duration::from_millis(1000));
    assert_all_ok_on(&load.since(killed + DETECTION), &["be2"], "be1 killed");
    assert_streams_healthy(&streams, &["be2"], &before, "be1 killed");

    // 2. Both primaries die: the backup takes every new connection.
    let killed = Instant::now();
    backends[1].kill();
    std::thread::sleep(DETECTION + Duration::from_millis(1000));
    assert_all_ok_on(
        &load.since(killed + DETECTION),
        &["be3"],
        "be1 and be2 killed",
    );
    let backup_streams = open_streams(&topo.client, 5);
    assert!(backup_streams.iter().all(|s| s.name == "be3"));

    // 3. The primaries return: new connections go back to them, and the streams opened on the
    //    backup carry on.
    let before = rounds(&backup_streams);
    let restored = Instant::now();
    backends[0].start(&topo, &root, true);
    backends[1].start(&topo, &root, true);
    // Python's start-up, then rise 2 x 100 ms.
    let recovery = Duration::from_millis(2500);
    std::thread::sleep(recovery + Duration::from_millis(1000));
    assert_all_ok_on(
        &load.since(restored + recovery),
        &["be1", "be2"],
        "primaries restored",
    );
    assert_streams_healthy(&backup_streams, &["be3"], &before, "primaries restored");

    load.finish();
    close(&streams);
    close(&backup_streams);
    let output = daemon.output();
    assert!(output.contains("backend down"), "{output}");
    assert!(daemon.stop(), "understudy did not exit cleanly");
    std::fs::remove_file(config).ok();
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn a_backend_refusing_connections_is_ejected_before_its_next_probe() {
    require_root("the passive-detection end-to-end test");
    let topo = Topology::build(2);
    let root = web_root(&topo);
    // be1's health endpoint answers, but nothing listens on its traffic port: SYNs get RSTs.
    let mut be1 = Backend::new(1);
    be1.start(&topo, &root, false);
    let mut be2 = Backend::new(2);
    be2.start(&topo, &root, true);
    // Probes every 5 s: the next one after start-up is far beyond what the test waits. Both
    // health endpoints listen before the daemon starts, so both pass their first probe.
    for i in 1..=2 {
        wait_listening(&topo.lb, SocketAddr::new(topo.backend_addr(i, false), 8081));
    }
    let config = write_config(&topo, "5s", "events_to_eject = 3");
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let results: Vec<(Instant, Result<String, String>)> = topo.client.enter(|| {
        let mut v = Vec::new();
        let mut streak = 0;
        while streak < 100 && started.elapsed() < Duration::from_secs(4) {
            let r = short_connection();
            streak = if r.is_ok() { streak + 1 } else { 0 };
            v.push((Instant::now(), r));
        }
        v
    });
    let failures: Vec<&(Instant, Result<String, String>)> =
        results.iter().filter(|(_, r)| r.is_err()).collect();
    let last_failure = failures.last().map(|(t, _)| t.duration_since(started));
    assert!(
        results.iter().rev().take(100).all(|(_, r)| r.is_ok()),
        "connections kept failing: {} of {} failed, last at {last_failure:?}\n{}",
        failures.len(),
        results.len(),
        daemon.output()
    );
    assert!(
        last_failure.is_none_or(|t| t < Duration::from_millis(2500)),
        "ejection took until {last_failure:?}, too close to the next probe"
    );
    assert!(
        failures.len() <= 10,
        "{} connections failed before the ejection",
        failures.len()
    );
    let output = daemon.output();
    assert!(
        output.contains("passive: rst_to_syn"),
        "no passive ejection logged:\n{output}"
    );
    eprintln!(
        "{} of {} connections refused before the passive ejection; last at {last_failure:?}",
        failures.len(),
        results.len()
    );
    assert!(daemon.stop());
    drop((be1, be2));
    std::fs::remove_file(config).ok();
    std::fs::remove_dir_all(root).ok();
}

//! Client traffic and killable backend hosts for failover tests and benchmarks: short
//! connections with a timestamped record of each result, long-lived byte-checked streams, and a
//! backend host (greeting echo server plus an HTTP health endpoint) that can die and return.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{EchoServer, Netns, Topology};

/// A backend host: a TCP echo server that greets with its name, and an HTTP health endpoint
/// (Python's http.server on 8081). Killing it stops both, as a crashed host would.
pub struct Backend {
    index: usize,
    pub name: String,
    echo: Option<EchoServer>,
    health: Option<Child>,
}

impl Backend {
    pub fn new(index: usize) -> Backend {
        Backend {
            index,
            name: format!("be{index}"),
            echo: None,
            health: None,
        }
    }

    /// Starts the health endpoint, and the echo server unless `echo` is false (then the traffic
    /// port refuses connections).
    pub fn start(&mut self, topo: &Topology, web_root: &Path, echo: bool) {
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

    /// Stops both, as a crashed host would.
    pub fn kill(&mut self) {
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

pub fn read_name(s: &mut TcpStream) -> std::io::Result<String> {
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
pub fn short_connection(vip: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&vip, Duration::from_secs(1)).map_err(|e| e.to_string())?;
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

/// Short connections from 4 client threads, each result timestamped.
/// When a connection started, and the backend that answered or why it failed.
pub type Outcome = (Instant, Result<String, String>);

pub struct Load {
    pub results: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Four workers, each pausing `pause` between connections.
    pub fn start(client: &Netns, vip: SocketAddr, pause: Duration) -> Load {
        Load::bounded(client, vip, pause, 50_000)
    }

    /// As [`Load::start`], each worker making at most `per_worker` connections.
    pub fn bounded(client: &Netns, vip: SocketAddr, pause: Duration, per_worker: u64) -> Load {
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..4)
            .map(|_| {
                let (r, s) = (results.clone(), stop.clone());
                client.thread(move || {
                    // Bounded: at most `per_worker` connections.
                    for _ in 0..per_worker {
                        if s.load(Ordering::Relaxed) {
                            return;
                        }
                        let started = Instant::now();
                        let res = short_connection(vip);
                        r.lock().unwrap().push((started, res));
                        std::thread::sleep(pause);
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
    pub fn since(&self, since: Instant) -> Vec<Result<String, String>> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.join().unwrap();
        }
    }
}

/// A long-lived stream: 512-byte rounds every 20 ms, each checked byte for byte.
pub struct Stream {
    pub name: String,
    pub rounds: Arc<AtomicU64>,
    pub error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

pub fn open_streams(client: &Netns, vip: SocketAddr, n: usize) -> Vec<Stream> {
    open_streams_for(client, vip, n, 30_000)
}

/// As [`open_streams`], each stream ending after `max_rounds` rounds (20 ms apart).
pub fn open_streams_for(client: &Netns, vip: SocketAddr, n: usize, max_rounds: u64) -> Vec<Stream> {
    (0..n)
        .map(|i| {
            open_stream(client, vip, i, max_rounds)
                .unwrap_or_else(|e| panic!("stream {i} could not open: {e}"))
        })
        .collect()
}

/// One stream (number `i`, which seeds its bytes), or why it could not open: no connection, or
/// no greeting within 2 s.
pub fn open_stream(
    client: &Netns,
    vip: SocketAddr,
    i: usize,
    max_rounds: u64,
) -> Result<Stream, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let rounds = Arc::new(AtomicU64::new(0));
    let error = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, e, s) = (rounds.clone(), error.clone(), stop.clone());
    client.thread(move || {
        let mut conn = match TcpStream::connect_timeout(&vip, Duration::from_secs(2)) {
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
        // Bounded: at most `max_rounds` rounds.
        for round in 0..max_rounds {
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
        .map_err(|_| "no answer within 5 s".to_string())??;
    Ok(Stream {
        name,
        rounds,
        error,
        stop,
    })
}

pub fn close(streams: &[Stream]) {
    for s in streams {
        s.stop.store(true, Ordering::Relaxed);
    }
}

/// Every stream on one of `names` has had no error and made progress since `before`.
pub fn assert_streams_healthy(streams: &[Stream], names: &[&str], before: &[u64], what: &str) {
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

pub fn rounds(streams: &[Stream]) -> Vec<u64> {
    streams
        .iter()
        .map(|s| s.rounds.load(Ordering::Relaxed))
        .collect()
}

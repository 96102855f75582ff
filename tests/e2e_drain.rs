//! End to end, graceful drain of HTTP listeners: requests in flight finish when the daemon stops
//! (SIGTERM) and when a reload removes their listener, while new connections are refused from
//! the moment the drain begins. The backend takes 500 ms per request, so every request is in
//! flight when the drain starts.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use understudy_testbed::{Daemon, HttpBackend, Topology, cli, require_root};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// What a keep-alive request got: status, and whether the response said `Connection: close`.
type Got = Result<(u16, bool), String>;

/// One keep-alive HTTP/1.1 GET: reads the response head and its `Content-Length` body.
fn keep_alive_get(to: SocketAddr) -> Got {
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: api.example\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut close, mut length) = (false, 0usize);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| e.to_string())?;
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if h == "connection: close" {
            close = true;
        }
        if let Some(v) = h.strip_prefix("content-length: ") {
            length = v.parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, close))
}

/// `n` requests in flight from the client namespace, started once the backend has seen them all.
fn in_flight(
    topo: &Topology,
    backend: &HttpBackend,
    to: SocketAddr,
    n: u32,
) -> Vec<JoinHandle<Got>> {
    let before = backend.hits.load(Ordering::SeqCst);
    let threads: Vec<_> = (0..n)
        .map(|_| topo.client.thread(move || keep_alive_get(to)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.hits.load(Ordering::SeqCst) < before + n {
        assert!(
            Instant::now() < deadline,
            "the requests never all reached the backend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    threads
}

fn refused(topo: &Topology, to: SocketAddr) -> bool {
    topo.client.enter(|| {
        matches!(
            TcpStream::connect_timeout(&to, Duration::from_secs(1)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    })
}

fn config(topo: &Topology, ports: &[u16]) -> String {
    let mut text = topo.dataplane_toml();
    for port in ports {
        text.push_str(&format!(
            "\n[[service]]\nname = \"api{port}\"\nvip = \"10.0.0.10:{port}\"\nmode = \"http\"\n\
             [service.http]\ndrain_timeout = \"10s\"\n[[service.backend]]\naddress = \"{}:8080\"\n",
            topo.backend_addr(1, false)
        ));
    }
    text
}

fn start(ports: &[u16]) -> (Topology, HttpBackend, Daemon, std::path::PathBuf) {
    let topo = Topology::build(1);
    let mut backends = HttpBackend::on_every_backend(&topo);
    let backend = backends.remove(0);
    backend.delay_ms.store(500, Ordering::SeqCst);
    topo.lb.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, config(&topo, ports)).unwrap();
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    (topo, backend, daemon, path)
}

#[test]
fn a_stop_lets_100_requests_in_flight_finish_and_refuses_new_connections() {
    require_root("the HTTP drain test");
    let (topo, backend, daemon, _) = start(&[80]);
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let threads = in_flight(&topo, &backend, vip, 100);
    let stop_at = Instant::now();
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    // The listener closes at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !refused(&topo, vip) {
        assert!(
            Instant::now() < deadline,
            "still accepting after the stop began"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused_after = stop_at.elapsed();
    assert!(
        refused_after < Duration::from_millis(450),
        "refused only after {refused_after:?}: the requests would be over"
    );
    let got: Vec<Got> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = got.iter().filter(|g| matches!(g, Ok((200, true)))).count();
    assert_eq!(
        ok, 100,
        "every request finished with 200 and Connection: close: {got:?}"
    );
    let out = daemon.output();
    assert!(daemon.stop(), "clean stop");
    assert!(out.contains("HTTP listener draining"), "{out}");
}

#[test]
fn a_reload_that_removes_a_listener_lets_its_requests_finish() {
    require_root("the HTTP drain test");
    let (topo, backend, daemon, path) = start(&[80, 82]);
    let kept: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let removed: SocketAddr = "10.0.0.10:82".parse().unwrap();
    let threads = in_flight(&topo, &backend, removed, 20);
    std::fs::write(&path, config(&topo, &[80])).unwrap();
    let (ok, out, err) = cli(BIN, &topo.lb, &["reload"]);
    assert!(ok, "{out}{err}");
    assert!(
        refused(&topo, removed),
        "the removed listener still accepts"
    );
    let got: Vec<Got> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        got.iter().all(|g| matches!(g, Ok((200, true)))),
        "a reload cut a request in flight: {got:?}"
    );
    // The kept listener serves on, keep-alive included.
    let kept_got = topo.client.enter(|| keep_alive_get(kept));
    assert_eq!(kept_got, Ok((200, false)));
    assert!(daemon.stop(), "clean stop");
}

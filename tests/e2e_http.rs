//! End to end, L7: the daemon serving an HTTP service from the balancer's namespace, in front of
//! HTTP backends in their own namespaces, next to an L4 service on the same backends.
//! - A backend that fails HTTP requests is ejected by the proxy's circuit, and the shared health
//!   engine takes it out of the L4 service too.
//! - A 100 MB upload streams through without the daemon's memory growing by more than a few MB.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use understudy::status::Snapshot;
use understudy_testbed::{Daemon, Topology, require_root};
use understudy_testbed::{HttpBackend, admin};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// One HTTP/1.1 request on its own connection; returns the status and body.
fn request(to: SocketAddr, method: &str, body_len: usize) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} /upload HTTP/1.1\r\nHost: api.example\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n;
    }
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| e.to_string())?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut rest = String::new();
    reader
        .read_to_string(&mut rest)
        .map_err(|e| e.to_string())?;
    let body = rest.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

struct Setup {
    topo: Topology,
    backends: Vec<HttpBackend>,
    daemon: Daemon,
}

/// Two HTTP backends; service "api" (HTTP) on VIP:80 and "tcp" (L4) on VIP:81 share them.
fn setup() -> Setup {
    setup_wrapped(&[])
}

/// As [`setup`], with the daemon started through `wrapper`.
fn setup_wrapped(wrapper: &[String]) -> Setup {
    let topo = Topology::build(2);
    let backends = HttpBackend::on_every_backend(&topo);
    // The proxy listens on the VIP: it must be an address of the balancer.
    topo.lb.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, config_text(&topo, &[1, 2], "")).unwrap();
    let daemon = Daemon::start_wrapped(&topo.lb, wrapper, BIN.as_ref(), &path, &[]);
    Setup {
        topo,
        backends,
        daemon,
    }
}

/// The config: "api" (HTTP, with `http_extra` lines in its [service.http]) on `api_backends`,
/// and "tcp" (L4) on both backends.
fn config_text(topo: &Topology, api_backends: &[usize], http_extra: &str) -> String {
    let mut text = format!(
        "{}\n[[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n\n\
         [service.http]\nattempt_header = \"x-understudy-attempts\"\n{http_extra}\n\
         [service.circuit]\nconsecutive_failures = 3\nbase_ejection = \"30s\"\n",
        topo.dataplane_toml()
    );
    for &i in api_backends {
        text.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}:8080\"\n",
            topo.backend_addr(i, false)
        ));
    }
    text.push_str(
        "\n[[service]]\nname = \"tcp\"\nvip = \"10.0.0.10:81\"\ntable_size = 1021\n\n\
         [service.passive]\nbase_ejection = \"30s\"\n",
    );
    for i in 1..=2 {
        text.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}:8080\"\n",
            topo.backend_addr(i, false)
        ));
    }
    text
}

fn api() -> SocketAddr {
    "10.0.0.10:80".parse().unwrap()
}

fn l4() -> SocketAddr {
    "10.0.0.10:81".parse().unwrap()
}

#[test]
fn an_http_ejection_takes_the_backend_out_of_the_l4_service_too() {
    require_root("the L7 shared-health test");
    let s = setup();
    let answered_by = |to: SocketAddr, n: usize| -> Vec<String> {
        s.topo.client.enter(|| {
            (0..n)
                .map(|_| {
                    let (status, body) = request(to, "GET", 0).expect("request");
                    assert_eq!(status, 200, "{body}");
                    body.split(' ').next().unwrap().to_string()
                })
                .collect()
        })
    };
    // Both backends serve both services.
    let l7 = answered_by(api(), 20);
    let l4_before = answered_by(l4(), 40);
    for name in ["be1", "be2"] {
        assert!(l7.iter().any(|b| b == name), "api reaches {name}: {l7:?}");
        assert!(l4_before.iter().any(|b| b == name), "tcp reaches {name}");
    }

    // be1 fails every HTTP request: the proxy retries each on be2, and its circuit opens after
    // three failures in a row.
    s.backends[0].status.store(503, Ordering::SeqCst);
    let after = answered_by(api(), 20);
    assert!(after.iter().all(|b| b == "be2"), "{after:?}");

    // The health engine heard it: be1 is down in the L4 service, which sends it no new flow.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = admin(&s.topo.lb, None, "GET", "/status");
        assert_eq!(code, 200);
        let snap: Snapshot = serde_json::from_str(&body).unwrap();
        let api = snap.services.iter().find(|x| x.name == "api").unwrap();
        assert_eq!(
            (api.vip.as_str(), api.protocol),
            ("10.0.0.10:80", understudy::status::ServedProtocol::Http)
        );
        let tcp = snap.services.iter().find(|x| x.name == "tcp").unwrap();
        let be1 = tcp
            .backends
            .iter()
            .find(|b| b.address.starts_with("10.0.11."))
            .unwrap();
        if !be1.healthy {
            assert!(
                be1.last_change
                    .as_deref()
                    .unwrap_or("")
                    .contains("http: 3 consecutive failures"),
                "{be1:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "be1 still healthy in tcp: {body}\n{}",
            s.daemon.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let hits_before = s.backends[0].hits.load(Ordering::SeqCst);
    let l4_after = answered_by(l4(), 40);
    assert!(l4_after.iter().all(|b| b == "be2"), "{l4_after:?}");
    assert_eq!(s.backends[0].hits.load(Ordering::SeqCst), hits_before);

    let (_, metrics) = admin(&s.topo.lb, None, "GET", "/metrics");
    assert!(
        metrics.contains(
            "understudy_http_requests_total{service=\"api\",code=\"200\",attempts=\"2\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "understudy_http_ejections_total{service=\"api\",backend=\"10.0.11.2:8080\"} 1"
        )
    );
}

#[test]
fn a_100_mb_upload_streams_through_in_a_few_mb() {
    require_root("the L7 upload test");
    let s = setup();
    let pid = s.daemon.pid();
    // Warm up with 8 MB uploads: connections, pools, buffers and the allocator's segments exist
    // before the baseline, so what the 100 MB upload adds is what it buffers.
    s.topo.client.enter(|| {
        for _ in 0..4 {
            let (status, _) = request(api(), "POST", 8 << 20).unwrap();
            assert_eq!(status, 200);
        }
    });
    let before = rss_kib(pid);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let size = 100 << 20;
    let (status, body) = s
        .topo
        .client
        .enter(|| request(api(), "POST", size))
        .unwrap();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        body.ends_with(&format!(" {size}")),
        "the backend got every byte: {body}"
    );
    let growth = peak.saturating_sub(before);
    eprintln!(
        "daemon RSS {before} KiB before, peak {peak} KiB during a 100 MB upload (+{growth} KiB)"
    );
    assert!(
        growth < 8 * 1024,
        "RSS grew by {growth} KiB during the upload"
    );
}

#[test]
fn drain_and_reload_change_the_http_pool_and_a_bad_reload_changes_nothing() {
    require_root("the L7 reload test");
    let s = setup();
    let path = std::env::temp_dir().join(format!("{}.toml", s.topo.lb.name()));
    let names = |n: usize| -> Vec<String> {
        s.topo.client.enter(|| {
            (0..n)
                .map(|_| {
                    let (status, body) = request(api(), "GET", 0).expect("request");
                    assert_eq!(status, 200, "{body}");
                    body.split(' ').next().unwrap().to_string()
                })
                .collect()
        })
    };
    assert!(names(10).iter().any(|b| b == "be1"));

    // Draining be1 in the HTTP service takes it out of the proxy's rotation; enabling restores it.
    let q = understudy::admin::client::drain_query("api", "10.0.11.2:8080");
    let (code, body) = admin(&s.topo.lb, None, "POST", &format!("/drain?{q}"));
    assert_eq!(code, 200, "{body}");
    let drained = names(10);
    assert!(drained.iter().all(|b| b == "be2"), "{drained:?}");
    let (code, body) = admin(&s.topo.lb, None, "POST", &format!("/enable?{q}"));
    assert_eq!(code, 200, "{body}");
    assert!(names(10).iter().any(|b| b == "be1"));

    // A certificate that does not exist: refused, with the file named; nothing changes.
    std::fs::write(
        &path,
        config_text(&s.topo, &[2], "").replace(
            "[service.circuit]",
            "[service.tls]\ncertificates = [{ cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }]\n\n[service.circuit]",
        ),
    )
    .unwrap();
    let (code, body) = admin(&s.topo.lb, None, "POST", "/reload");
    assert_ne!(code, 200);
    assert!(body.contains("/nonexistent.pem"), "{body}");
    let before = names(10);
    assert!(
        before.iter().any(|b| b == "be1"),
        "the old pool still serves: {before:?}"
    );

    // A good one: the HTTP service drops be1; the L4 service keeps both.
    std::fs::write(&path, config_text(&s.topo, &[2], "via = \"understudy\"")).unwrap();
    let (code, body) = admin(&s.topo.lb, None, "POST", "/reload");
    assert_eq!(code, 200, "{body}\n{}", s.daemon.output());
    let after = names(10);
    assert!(after.iter().all(|b| b == "be2"), "{after:?}");
    let via = s.topo.client.enter(|| {
        let mut c = TcpStream::connect(api()).unwrap();
        write!(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text
    });
    assert!(
        via.to_ascii_lowercase().contains("via: 1.1 understudy"),
        "{via}"
    );
}

/// The capabilities the shipped systemd unit leaves the daemon (`CapabilityBoundingSet=`), as
/// setpriv's list: `+bpf,+perfmon,...`.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/understudy.service"
    ))
    .expect("the shipped unit");
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect()
}

fn setpriv(caps: &[String]) -> Vec<String> {
    vec![
        "setpriv".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--".into(),
    ]
}

/// The daemon with exactly the unit's capabilities serves an HTTP service on port 80; without
/// CAP_NET_BIND_SERVICE the same start fails, naming the address (so the test can fail).
#[test]
fn the_units_capabilities_serve_http_on_port_80() {
    require_root("the systemd capability test");
    let caps = unit_capabilities();
    assert!(
        caps.iter().any(|c| c == "+net_bind_service"),
        "the unit lacks CAP_NET_BIND_SERVICE: {caps:?}"
    );
    let s = setup_wrapped(&setpriv(&caps));
    let status_line = std::fs::read_to_string(format!("/proc/{}/status", s.daemon.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .map(str::to_string);
    let (code, body) = s
        .topo
        .client
        .enter(|| request(api(), "GET", 0))
        .expect("request");
    assert_eq!(code, 200, "{body} (daemon {status_line:?})");
    // And for the map writer's real-time priority.
    assert!(
        s.daemon.output().contains("map writer runs SCHED_FIFO"),
        "{}",
        s.daemon.output()
    );
    // The same capabilities suffice for the redirect-drop counter's tracepoints.
    assert!(
        !s.daemon.output().contains("will not be counted"),
        "{}",
        s.daemon.output()
    );
    let Setup { topo, daemon, .. } = s;
    assert!(daemon.stop());

    let without: Vec<String> = caps
        .into_iter()
        .filter(|c| c != "+net_bind_service")
        .collect();
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    let mut command = topo.lb.command_net_only("setpriv");
    command
        .args(&setpriv(&without)[1..])
        .arg(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("start understudy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("understudy without CAP_NET_BIND_SERVICE kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot listen on 10.0.0.10:80"),
        "the refusal names the address: {stderr}"
    );
}

/// Clients holding idle connections cannot exhaust the daemon: with its descriptors capped at
/// 256, 300 idle clients meet `max_connections = 50` (the rest wait in the accept queue), the
/// health probes keep both backends up, the admin API answers, and once the clients leave,
/// requests are served again.
#[test]
fn a_flood_of_idle_connections_leaves_probes_and_admin_working() {
    require_root("the connection-flood test");
    let topo = Topology::build(2);
    let _backends: Vec<HttpBackend> = HttpBackend::on_every_backend(&topo);
    topo.lb.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
    let check =
        "health = { kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", fall = 1 }\n";
    let text = config_text(&topo, &[1, 2], "max_connections = 50\n")
        .replace("mode = \"http\"\n", &format!("mode = \"http\"\n{check}"))
        .replace(
            "table_size = 1021\n",
            &format!("table_size = 1021\n{check}"),
        );
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, text).unwrap();
    let wrapper: Vec<String> = ["prlimit", "--nofile=256:256", "--"]
        .map(String::from)
        .to_vec();
    let daemon = Daemon::start_wrapped(&topo.lb, &wrapper, BIN.as_ref(), &path, &[]);
    let healthy = || -> usize {
        let (code, body) = admin(&topo.lb, None, "GET", "/status");
        assert_eq!(code, 200, "the admin API answers: {body}");
        let s: Snapshot = serde_json::from_str(&body).unwrap();
        s.services
            .iter()
            .flat_map(|svc| &svc.backends)
            .filter(|b| b.healthy)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthy() < 4 {
        assert!(Instant::now() < deadline, "backends never came up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let flood: Vec<TcpStream> = topo.client.enter(|| {
        (0..300)
            .map_while(|_| TcpStream::connect_timeout(&api(), Duration::from_secs(2)).ok())
            .collect()
    });
    eprintln!("flood: {} connections", flood.len());
    assert!(
        flood.len() > 100,
        "the flood is past max_connections: {}",
        flood.len()
    );
    // Many probe intervals with the listener full.
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            healthy(),
            4,
            "a probe failed under the flood:\n{}",
            daemon.output()
        );
    }
    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    assert!(
        metrics.contains("understudy_http_listener_full_total{service=\"api\"}"),
        "the full listener is counted"
    );
    drop(flood);
    let (code, body) = topo
        .client
        .enter(|| request(api(), "GET", 0))
        .expect("request after the flood");
    assert_eq!(code, 200, "{body}");
    assert!(daemon.stop());
    std::fs::remove_file(path).ok();
}

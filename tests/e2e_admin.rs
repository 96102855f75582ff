//! End to end, operations: the admin listener's metrics against real traffic, its token, and
//! draining through the `understudy` CLI while long-lived streams run.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use understudy::status::{ServiceState, Snapshot};
use understudy_testbed::{
    Daemon, EchoServer, Topology, echo_roundtrip, require_root,
    traffic::{close, open_streams, rounds, short_connection},
};
use understudy_testbed::{admin, chromium_dom, cli, named_echo_servers};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

const ADMIN: &str = understudy::config::DEFAULT_ADMIN_LISTEN;
const TOKEN: &str = "s3cret-token";

fn vip() -> SocketAddr {
    "10.0.0.10:80".parse().unwrap()
}

fn write_config(topo: &Topology, admin: &str) -> PathBuf {
    let backends: Vec<(usize, &str)> = (1..=topo.backends.len()).map(|i| (i, "")).collect();
    topo.echo_config(admin, "table_size = 1021", &backends)
}

#[test]
fn metrics_match_the_traffic_and_the_token_is_enforced() {
    require_root("the admin metrics test");
    let topo = Topology::build(2);
    let servers: Vec<EchoServer> = (1..=2)
        .map(|i| {
            EchoServer::start(
                &topo.backends[i - 1],
                SocketAddr::new(topo.backend_addr(i, false), 8080),
            )
        })
        .collect();
    let token_file = std::env::temp_dir().join(format!("{}.token", topo.lb.name()));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = write_config(
        &topo,
        &format!(
            "[admin]\nlisten = \"{ADMIN}\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
    );
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    // The topology's interfaces are veths: the daemon says once, per interface, what the peer
    // needs so that redirected frames are not dropped.
    for interface in topo.lb_interfaces() {
        let said = daemon.output().lines().any(|l| {
            l.contains("what the interface's peer needs")
                && l.contains(&interface)
                && l.contains("GRO")
        });
        assert!(said, "nothing said about {interface}:\n{}", daemon.output());
    }

    let sent = 100;
    topo.client.enter(|| {
        for i in 0..sent {
            let (back, _) = echo_roundtrip(vip(), format!("hello {i}").as_bytes()).unwrap();
            assert_eq!(back, format!("hello {i}").as_bytes());
        }
    });

    // The token is required on every endpoint, and a wrong one is refused.
    for path in ["/metrics", "/status"] {
        assert_eq!(
            admin(&topo.lb, None, "GET", path).0,
            401,
            "{path} without a token"
        );
        assert_eq!(
            admin(&topo.lb, Some("wrong"), "GET", path).0,
            401,
            "{path} with a wrong token"
        );
    }
    let (code, body) = admin(&topo.lb, Some(TOKEN), "GET", "/metrics");
    assert_eq!(code, 200, "{body}");

    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics parses as Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value("understudy_service_new_flows_total", &[("service", "echo")]),
        sent as f64
    );
    assert_eq!(
        value("understudy_backend_new_flows_total", &[]),
        sent as f64
    );
    let accepted: usize = servers
        .iter()
        .map(|s| s.connections.load(Ordering::Relaxed))
        .sum();
    assert_eq!(accepted, sent, "the backends saw every connection");
    // Each connection: SYN, ACK, data, FIN, ACK at least, towards the VIP.
    let packets = value("understudy_service_packets_total", &[("service", "echo")]);
    assert!(
        packets >= 5.0 * sent as f64,
        "only {packets} packets to the VIP counted"
    );
    // Every connection left one FLOWS entry (the LRU is far from full).
    assert_eq!(
        value("understudy_flows_tracked", &[]),
        sent as f64,
        "{body}\n{}",
        daemon.output()
    );
    assert_eq!(value("understudy_backend_flows_tracked", &[]), sent as f64);
    assert_eq!(
        value("understudy_flows_capacity", &[]),
        f64::from(understudy::config::DEFAULT_MAX_FLOWS)
    );
    assert_eq!(value("understudy_backend_healthy", &[]), 2.0);
    assert_eq!(value("understudy_backend_active", &[]), 2.0);
    assert!(
        value(
            "understudy_datapath_packets_total",
            &[("reason", "reply_translated")]
        ) >= sent as f64
    );
    assert!(scrape.samples.iter().any(|s| {
        s.metric
            .starts_with("understudy_decision_to_visible_seconds")
    }));

    let (code, body) = admin(&topo.lb, Some(TOKEN), "GET", "/status");
    assert_eq!(code, 200);
    let status: Snapshot = serde_json::from_str(&body).expect("/status is the snapshot's JSON");
    assert_eq!(status.services[0].name, "echo");
    assert_eq!(status.services[0].state, ServiceState::Serving);
    assert_eq!(status.services[0].traffic.new_flows, sent as u64);
    let per_backend: BTreeMap<String, u64> = status.services[0]
        .backends
        .iter()
        .map(|b| (b.address.clone(), b.traffic.new_flows))
        .collect();
    assert_eq!(
        per_backend.values().sum::<u64>(),
        sent as u64,
        "{per_backend:?}"
    );

    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
    std::fs::remove_file(token_file).ok();
}

#[test]
fn drain_through_the_cli_stops_new_flows_and_lets_streams_finish() {
    require_root("the drain test");
    let topo = Topology::build(2);
    let _servers = named_echo_servers(&topo);
    let config = write_config(&topo, "");
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    let streams = open_streams(&topo.client, vip(), 16);
    assert!(
        streams.iter().any(|s| s.name == "be1"),
        "no stream on be1 to watch"
    );

    let (ok, stdout, stderr) = cli(BIN, &topo.lb, &["drain", "echo", "10.0.11.2:8080"]);
    assert!(ok, "drain failed: {stderr}");
    assert!(stdout.contains("echo 10.0.11.2:8080: drained"), "{stdout}");
    let before = rounds(&streams);

    let landed: Vec<String> = topo
        .client
        .enter(|| (0..100).map(|_| short_connection(vip()).unwrap()).collect());
    assert!(
        landed.iter().all(|n| n == "be2"),
        "a new flow reached the drained backend"
    );

    // The drained backend's streams carry on until their clients close them.
    std::thread::sleep(Duration::from_millis(800));
    for (i, s) in streams.iter().enumerate() {
        assert_eq!(
            *s.error.lock().unwrap(),
            None,
            "stream {i} on {} broke",
            s.name
        );
        assert!(
            s.rounds.load(Ordering::Relaxed) > before[i] + 10,
            "stream {i} on {} stalled",
            s.name
        );
    }

    // `status --watch` redraws in place: cursor home and clear, then the table, each time.
    let (ok, watched, stderr) = cli(BIN, &topo.lb, &["status", "--watch", "0.1", "--count", "3"]);
    assert!(ok, "{stderr}");
    assert_eq!(watched.matches("\x1b[H\x1b[2J").count(), 3, "{watched}");
    assert_eq!(watched.matches("SERVICE").count(), 3, "{watched}");

    let (ok, json, _) = cli(BIN, &topo.lb, &["status", "--json"]);
    assert!(ok);
    let status: Snapshot = serde_json::from_str(&json).unwrap();
    let be1 = &status.services[0].backends[0];
    assert_eq!(
        (be1.address.as_str(), be1.draining, be1.active, be1.alive),
        ("10.0.11.2:8080", true, false, true)
    );
    let (ok, table, _) = cli(BIN, &topo.lb, &["status"]);
    assert!(ok);
    assert!(
        table
            .lines()
            .any(|l| l.contains("10.0.11.2:8080") && l.contains("draining")),
        "{table}"
    );

    let (ok, stdout, stderr) = cli(BIN, &topo.lb, &["enable", "echo", "10.0.11.2:8080"]);
    assert!(ok && stdout.contains("enabled"), "{stdout}{stderr}");
    let landed: Vec<String> = topo
        .client
        .enter(|| (0..100).map(|_| short_connection(vip()).unwrap()).collect());
    assert!(
        landed.iter().any(|n| n == "be1"),
        "the enabled backend got no new flow"
    );

    // Errors are plain: an unknown backend is named.
    let (ok, _, stderr) = cli(BIN, &topo.lb, &["drain", "echo", "10.9.9.9:80"]);
    assert!(!ok);
    assert!(
        stderr.contains("service echo has no backend 10.9.9.9:80"),
        "{stderr}"
    );

    close(&streams);
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
}

#[test]
fn the_status_page_renders_in_headless_chromium() {
    require_root("the status page test");
    let topo = Topology::build(2);
    // be1 answers; nothing listens on be2, so its TCP check fails.
    let _be1 = EchoServer::start(
        &topo.backends[0],
        SocketAddr::new(topo.backend_addr(1, false), 8080),
    );
    let config = write_config(&topo, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "table_size = 1021\n",
            "table_size = 1021\nhealth = { kind = \"tcp\", interval = \"200ms\", timeout = \"100ms\", fall = 1, rise = 1 }\n",
        );
    std::fs::write(&config, text).unwrap();
    // A third, drained backend shows the third state.
    let text = std::fs::read_to_string(&config).unwrap()
        + "\n[[service.backend]]\naddress = \"10.0.11.2:9090\"\ndrain = true\n";
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    std::thread::sleep(Duration::from_millis(1000));
    // Traffic for be1's history (be2 is down, so every flow lands on be1).
    topo.client.enter(|| {
        for i in 0..20 {
            let payload = format!("flow {i}");
            let (back, _) = echo_roundtrip(vip(), payload.as_bytes()).unwrap();
            assert_eq!(back, payload.as_bytes());
        }
    });

    let dom = chromium_dom(&topo.lb, &format!("http://{ADMIN}/"), &[]);
    assert!(dom.contains("<title>Understudy status</title>"), "{dom}");
    let row = |backend: &str| -> String {
        let at = dom
            .find(&format!("data-backend=\"{backend}\""))
            .unwrap_or_else(|| panic!("no row for {backend} in {dom}"));
        let start = dom[..at].rfind("<tr").unwrap();
        let end = at + dom[at..].find("</tr>").unwrap();
        dom[start..end].to_string()
    };
    let be1 = row("10.0.11.2:8080");
    assert!(
        be1.contains("data-health=\"up\"") && be1.contains("data-active=\"true\""),
        "{be1}"
    );
    // Its last ten minutes: the 20 flows drawn, and its coming up marked.
    let svg_at = be1
        .find("<svg")
        .unwrap_or_else(|| panic!("no history in {be1}"));
    let svg = &be1[svg_at..];
    let attr = |name: &str| -> u64 {
        let at = svg.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        svg[at..at + svg[at..].find('"').unwrap()].parse().unwrap()
    };
    assert!(attr("data-points") >= 1, "{svg}");
    assert!((1..=20).contains(&attr("data-peak")), "{svg}");
    assert_eq!(attr("data-changes"), 1, "{svg}");
    assert!(
        svg.contains("<polyline") && svg.contains("class=\"change up\""),
        "{svg}"
    );
    let be2 = row("10.0.12.2:8080");
    assert!(
        be2.contains("data-health=\"down\"")
            && be2.contains("connect")
            && be2.contains("waiting for first check"),
        "{be2}"
    );
    let drained = row("10.0.11.2:9090");
    assert!(
        drained.contains("data-health=\"draining\"") && drained.contains("no new flows"),
        "{drained}"
    );
    assert!(dom.contains("data-state=\"serving\""), "{dom}");
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
}

/// A page from another origin, opened in the operator's browser, auto-submits a form that would
/// drain a backend through the tokenless loopback admin listener (CSRF). It is refused, and the
/// backend keeps taking new flows.
#[test]
fn a_web_page_cannot_drain_a_backend() {
    require_root("the admin CSRF test");
    let topo = Topology::build(2);
    let _servers = named_echo_servers(&topo);
    let config = write_config(&topo, "");
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);

    // The hostile page, served from another port of the balancer's loopback.
    let page = format!(
        "<html><body><form method=\"POST\" \
         action=\"http://{ADMIN}/drain?service=echo&amp;backend=10.0.11.2:8080\"></form>\
         <script>document.forms[0].submit()</script></body></html>"
    );
    let listener = topo
        .lb
        .enter(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let origin = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for mut conn in listener.incoming().flatten().take(4) {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    let dom = chromium_dom(
        &topo.lb,
        &format!("http://{origin}/"),
        &["--virtual-time-budget=5000"],
    );
    assert!(
        dom.contains("refused"),
        "the admin API did not refuse the form: {dom}"
    );

    let (code, json) = admin(&topo.lb, None, "GET", "/status");
    assert_eq!(code, 200, "{json}");
    let status: Snapshot = serde_json::from_str(&json).unwrap();
    let be1 = &status.services[0].backends[0];
    assert_eq!(
        (be1.address.as_str(), be1.draining, be1.active),
        ("10.0.11.2:8080", false, true),
        "the page drained the backend"
    );
    // The CLI, which sends the header, still drains.
    let (ok, stdout, stderr) = cli(BIN, &topo.lb, &["drain", "echo", "10.0.11.2:8080"]);
    assert!(ok && stdout.contains("drained"), "{stdout}{stderr}");
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
}

/// A rotated token applies on reload, without a restart: the reload is not refused as an
/// `[admin]` change, the old token stops working and the new one works.
#[test]
fn a_rotated_token_applies_on_reload() {
    require_root("the token rotation test");
    let topo = Topology::build(1);
    let _servers = named_echo_servers(&topo);
    let token_file = std::env::temp_dir().join(format!("{}.token", topo.lb.name()));
    std::fs::write(&token_file, "first-token\n").unwrap();
    let config = write_config(
        &topo,
        &format!(
            "[admin]\nlisten = \"{ADMIN}\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
    );
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    assert_eq!(
        admin(&topo.lb, Some("first-token"), "GET", "/status").0,
        200
    );
    std::fs::write(&token_file, "second-token\n").unwrap();
    let (code, body) = admin(&topo.lb, Some("first-token"), "POST", "/reload");
    assert_eq!(code, 200, "the reload is not refused: {body}");
    assert_eq!(
        admin(&topo.lb, Some("first-token"), "GET", "/status").0,
        401
    );
    assert_eq!(
        admin(&topo.lb, Some("second-token"), "GET", "/status").0,
        200
    );
    // Each refusal has its status: an unknown service is a 404, a change that needs a restart
    // a 409, a config that does not validate a 422.
    let token = Some("second-token");
    let (code, body) = admin(
        &topo.lb,
        token,
        "POST",
        "/drain?service=nope&backend=10.0.11.2:8080",
    );
    assert_eq!((code, body.trim()), (404, "no service named nope"));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[admin]\n", "[admin]\nallowed_hosts = [\"lb.example\"]\n"),
    )
    .unwrap();
    let (code, body) = admin(&topo.lb, token, "POST", "/reload");
    assert_eq!(code, 409, "{body}");
    std::fs::write(&config, "[dataplane]\n").unwrap();
    let (code, body) = admin(&topo.lb, token, "POST", "/reload");
    assert_eq!(code, 422, "{body}");
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
    std::fs::remove_file(token_file).ok();
}

/// A backend that answers on the wrong address family (IPv6 only, checked on IPv4) never passes
/// its first check. The log says so with the reason, repeated with backoff rather than every
/// probe; `understudy status` shows it waiting, and /metrics counts it.
#[test]
fn a_backend_that_never_passes_its_first_check_is_explained() {
    require_root("the first-check warning test");
    let topo = Topology::build(2);
    let _v6_only = EchoServer::start(
        &topo.backends[0],
        SocketAddr::new(topo.backend_addr(1, true), 8080),
    );
    let _be2 = EchoServer::start(
        &topo.backends[1],
        SocketAddr::new(topo.backend_addr(2, false), 8080),
    );
    let config = topo.echo_config(
        "",
        "table_size = 1021\n[service.health]\nkind = \"tcp\"\ninterval = \"100ms\"\n\
         timeout = \"50ms\"\nrise = 2",
        &[(1, ""), (2, "")],
    );
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    let warning = "backend has not passed its first check";
    daemon.wait_for_line(warning, Duration::from_secs(10));
    // Some 25 probes fail in 2.5 s; the warning comes after 2, 4, 8 and 16 of them.
    std::thread::sleep(Duration::from_millis(2500));
    let log = daemon.output();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(warning)).collect();
    assert!(
        (2..=5).contains(&lines.len()),
        "{} warnings, not repeated with backoff:\n{log}",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("10.0.11.2:8080") && l.contains("refused")),
        "each warning names the backend and the reason:\n{log}"
    );
    let be2 = format!("{}:8080", topo.backend_addr(2, false));
    assert!(
        !lines.iter().any(|l| l.contains(&be2)),
        "be2 passes its checks:\n{log}"
    );

    let (ok, table, _) = cli(BIN, &topo.lb, &["status"]);
    assert!(ok, "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("10.0.11.2:8080"))
        .unwrap_or_else(|| panic!("no row for be1:\n{table}"));
    assert!(
        row.contains("waiting for first check:") && row.contains("refused"),
        "{row}"
    );
    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    let gauge = |backend: &str, v: u8| {
        format!(
            "understudy_backend_waiting_first_check{{service=\"echo\",backend=\"{backend}\"}} {v}"
        )
    };
    assert!(
        metrics.contains(&gauge("10.0.11.2:8080", 1)) && metrics.contains(&gauge(&be2, 0)),
        "{metrics}"
    );
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
}

/// The first silent failure users met: a backend's veth peer with GRO off and no XDP program.
/// The kernel drops every frame the program redirects into it. The daemon counts those drops per
/// interface, warns naming the interface and the cause, and `status` and /metrics show them.
#[test]
fn frames_the_kernel_drops_after_a_redirect_are_counted_and_explained() {
    require_root("the redirect-drop test");
    let topo = Topology::build(2);
    let _servers = named_echo_servers(&topo);
    topo.backends[0].exec(&["ethtool", "-K", "eth0", "gro", "off"]);
    let config = write_config(&topo, "");
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    let vip = SocketAddr::new(topo.vip(false), 80);
    let failed = topo.client.enter(|| {
        (0..12)
            .filter(|_| {
                std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(400)).is_err()
            })
            .count()
    });
    assert!(
        failed > 0,
        "every connection reached a backend: be1 took none?"
    );
    let warning = "frames redirected into the interface were dropped by the kernel";
    daemon.wait_for_line(warning, Duration::from_secs(5));
    let log = daemon.output();
    let line = log.lines().find(|l| l.contains(warning)).unwrap();
    assert!(
        line.contains("lb-be1") && line.contains("veth") && line.contains("GRO"),
        "{line}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(warning) && l.contains("lb-be2")),
        "{log}"
    );

    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("understudy_redirect_drops_total{interface=\"lb-be1\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no redirect-drop counter for lb-be1:\n{metrics}"));
    assert!(
        dropped >= failed as u64,
        "{dropped} drops for {failed} failed connections"
    );
    let (ok, table, _) = cli(BIN, &topo.lb, &["status"]);
    assert!(
        ok && table.contains("redirected into lb-be1 were dropped"),
        "{table}"
    );
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
}

/// `understudy explain` agrees with where 200 real connections went (each backend greets with
/// its name), finds each one tracked in FLOWS, and explains a drained and a down backend.
#[test]
fn explain_agrees_with_where_connections_went() {
    require_root("the explain test");
    let topo = Topology::build(3);
    let mut servers = named_echo_servers(&topo);
    let config = topo.echo_config(
        "",
        "table_size = 1021\nhealth = { kind = \"tcp\", interval = \"100ms\", timeout = \"50ms\", rise = 1, fall = 1 }",
        &[(1, ""), (2, ""), (3, "")],
    );
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    std::thread::sleep(Duration::from_millis(800));
    let vip = SocketAddr::new(topo.vip(false), 80);
    let landed: Vec<(u16, String)> = topo.client.enter(|| {
        (0..200)
            .map(|_| {
                let mut s = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .expect("connect to the VIP");
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let port = s.local_addr().unwrap().port();
                (
                    port,
                    understudy_testbed::traffic::read_name(&mut s).unwrap(),
                )
            })
            .collect()
    });
    let address = |name: &str| {
        let i: usize = name.trim_start_matches("be").parse().unwrap();
        format!("{}:8080", topo.backend_addr(i, false))
    };
    let explain = |port: u16| -> understudy::explain::Explanation {
        let (code, body) = admin(
            &topo.lb,
            None,
            "GET",
            &format!(
                "/explain?service=echo&client={}:{port}",
                understudy_testbed::CLIENT_V4
            ),
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let mut per_backend = BTreeMap::<String, usize>::new();
    for (port, name) in &landed {
        let e = explain(*port);
        let want = address(name);
        assert_eq!(
            e.chosen.as_ref().map(|c| &c.address),
            Some(&want),
            "port {port}: {e:?}"
        );
        let tracked = e
            .tracked
            .as_ref()
            .unwrap_or_else(|| panic!("port {port} not tracked"));
        assert_eq!(
            (tracked.backend.as_ref(), tracked.holds),
            (Some(&want), true)
        );
        *per_backend.entry(want).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");

    // Drained: new flows pass it over, saying why; its tracked flows stay.
    let be1 = address("be1");
    let port1 = landed.iter().find(|(_, n)| n == "be1").unwrap().0;
    let (ok, _, stderr) = cli(BIN, &topo.lb, &["drain", "echo", &be1]);
    assert!(ok, "{stderr}");
    let e = explain(port1);
    assert_eq!(e.skipped.len(), 1, "{e:?}");
    assert!(
        e.skipped[0].0 == be1 && e.skipped[0].1.starts_with("draining"),
        "{e:?}"
    );
    assert_ne!(e.chosen.as_ref().unwrap().address, be1);
    assert!(
        e.tracked.as_ref().unwrap().holds,
        "a drain keeps established flows"
    );
    let (ok, stdout, _) = cli(
        BIN,
        &topo.lb,
        &[
            "explain",
            "echo",
            &format!("{}:{port1}", understudy_testbed::CLIENT_V4),
        ],
    );
    assert!(
        ok && stdout.contains(&format!("skipped {be1}: draining"))
            && stdout.contains("tracked in FLOWS"),
        "{stdout}"
    );

    // Down: its check fails; new flows pass it over, and its pins no longer hold.
    let be2 = address("be2");
    let port2 = landed.iter().find(|(_, n)| n == "be2").unwrap().0;
    drop(servers.remove(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        let e = explain(port2);
        if e.skipped.iter().any(|(a, why)| *a == be2 && why == "down") {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "be2 never explained as down: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(e.chosen.as_ref().unwrap().address, be2);
    assert!(!e.tracked.as_ref().unwrap().holds, "{e:?}");
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
}

//! End to end, the modes whose replies bypass the balancer: DSR, IPIP and GUE over IPv4 and
//! IPv6. The real `understudy` binary balances in its namespace; three TCP echo backends hold
//! the VIP on their loopback and answer the client over a link of their own (so the balancer's
//! counters show it never sees a reply); in the tunnel modes each backend runs the real
//! `understudy decap`, stopped before the traffic starts, so its pinned program does the work
//! alone. Each case makes 1000 connections echoing a payload, checks the spread and that the
//! backends saw the client's own address, then kills a backend and checks that no new
//! connection fails once the health check has noticed.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

#[path = "peer_xdp/mod.rs"]
mod peer_xdp;

use understudy_testbed::{
    CLIENT_V4, CLIENT_V6, Daemon, Decap, EchoServer, Netns, Topology, echo_connections,
    require_root,
};

/// `understudy decap` on a backend's `eth0`.
fn start_decap(be: &Netns) -> Decap {
    Decap::start(BINARY, be, "eth0", &[])
}

const CONNECTIONS: usize = 1000;
const AFTER_FAILOVER: usize = 200;
const CLIENT_THREADS: usize = 4;
const BINARY: &str = env!("CARGO_BIN_EXE_understudy");

fn config(topo: &Topology, v6: bool, mode: &str, encap: Option<&str>) -> PathBuf {
    let mut text = format!(
        "{}\n[[service]]\nname = \"echo\"\nvip = \"{}\"\nmode = \"{mode}\"\n",
        topo.dataplane_toml(),
        SocketAddr::new(topo.vip(v6), 80)
    );
    if let Some(encap) = encap {
        text.push_str(&format!("tunnel = {{ encap = \"{encap}\" }}\n"));
    }
    text.push_str(
        "health = { kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 2 }\n",
    );
    for i in 1..=topo.backends.len() {
        text.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}\"\n",
            SocketAddr::new(topo.backend_addr(i, v6), 80)
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, text).unwrap();
    path
}

/// `n` echo connections from the client; the failures, described.
fn connections(client: &Netns, vip: SocketAddr, n: usize) -> Vec<String> {
    echo_connections(client, vip, n, CLIENT_THREADS)
}

/// Connections each server accepted from the client itself (the health checks come from the
/// balancer's addresses).
fn from_client(servers: &[EchoServer], client: IpAddr) -> Vec<usize> {
    servers
        .iter()
        .map(|s| {
            s.peers
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.to_canonical() == client)
                .count()
        })
        .collect()
}

/// The kernel counter `reason` as `/metrics` shows it.
fn metric(topo: &Topology, reason: &str) -> u64 {
    let (_, metrics) = understudy_testbed::admin(&topo.lb, None, "GET", "/metrics");
    metrics
        .lines()
        .find(|l| l.contains(&format!("reason=\"{reason}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

fn case(mode: &str, encap: Option<&str>, v6: bool) {
    require_root("the forwarding-mode end-to-end tests");
    let what = format!(
        "{mode}{} over IPv{}",
        encap.map(|e| format!("/{e}")).unwrap_or_default(),
        if v6 { 6 } else { 4 }
    );
    let topo = Topology::build(3);
    topo.add_return_paths(&[topo.vip(false), topo.vip(true)]);
    let mut servers: Vec<EchoServer> = topo
        .backends
        .iter()
        .map(|be| EchoServer::start(be, "[::]:80".parse().unwrap()))
        .collect();
    let mut decaps: Vec<Decap> = if mode == "tunnel" {
        topo.backends.iter().map(start_decap).collect()
    } else {
        Vec::new()
    };
    // The program stays attached, pinned, without its process.
    for d in &mut decaps {
        d.stop_process();
    }
    // The too-big answers are the only packets the balancer sends the client in these modes,
    // with XDP_TX: see `peer_xdp`.
    let _flush = peer_xdp::attach(&topo.client, "eth0");
    let config = config(&topo, v6, mode, encap);
    let daemon = Daemon::start(&topo.lb, BINARY.as_ref(), &config);
    let vip = SocketAddr::new(topo.vip(v6), 80);
    let client: IpAddr = if v6 {
        CLIENT_V6.into()
    } else {
        CLIENT_V4.into()
    };

    // Until every backend's first check has passed.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let warm = connections(&topo.client, vip, 30);
        let spread = from_client(&servers, client);
        if warm.is_empty() && spread.iter().all(|&n| n > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the VIP did not serve all three backends within 15 s: {warm:?} {spread:?}\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = from_client(&servers, client);
    let rx_before: Vec<u64> = (1..=3).map(|i| topo.lb_rx_packets(i)).collect();

    let failures = connections(&topo.client, vip, CONNECTIONS);
    assert!(
        failures.is_empty(),
        "{what}: {} of {CONNECTIONS} connections failed, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        daemon.output()
    );
    let counts: Vec<usize> = from_client(&servers, client)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    // Every connection reached a backend from the client's own address.
    assert_eq!(
        counts.iter().sum::<usize>(),
        CONNECTIONS,
        "{what}: {counts:?}"
    );
    for (i, &c) in counts.iter().enumerate() {
        let share = c as f64 / CONNECTIONS as f64;
        assert!(
            (0.20..=0.45).contains(&share),
            "{what}: backend {} got {:.1}%: {counts:?}",
            i + 1,
            share * 100.0
        );
    }
    // The replies went round the balancer: only health checks came back through it, a few
    // packets each, where 1000 echoed connections would be thousands.
    let rx: u64 = (1..=3)
        .map(|i| topo.lb_rx_packets(i) - rx_before[i - 1])
        .sum();
    assert!(
        rx < CONNECTIONS as u64 / 2,
        "{what}: the balancer received {rx} packets from the backends during {CONNECTIONS} connections"
    );

    // The checks went the clients' way, through the probe interface.
    assert!(
        metric(&topo, "probe_sent") > 0,
        "{what}: no probe sent through the probe interface"
    );

    // The 3000-byte payloads do not fit a 1500-byte link once wrapped: the balancer answered
    // with frag-needed / Packet Too Big, and the client's path-MTU discovery took it.
    if mode == "tunnel" {
        assert!(
            metric(&topo, "too_big_answered") > 0,
            "{what}: no too-big answer counted"
        );
    }

    // Failover: backend 1 dies; long-lived streams on the others carry on, and once the check
    // notices, no new connection fails.
    let opened = from_client(&servers, client);
    let mut streams: Vec<std::net::TcpStream> = topo.client.enter(|| {
        (0..12)
            .map(|_| {
                let s = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .expect("open a stream");
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s
            })
            .collect()
    });
    // Each server's accept loop registers its streams a moment after the client's connect.
    let accepted = |servers: &[EchoServer]| -> Vec<usize> {
        from_client(servers, client)
            .iter()
            .zip(&opened)
            .map(|(a, b)| a - b)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted(&servers).iter().sum::<usize>() < streams.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let on = accepted(&servers);
    assert_eq!(
        on.iter().sum::<usize>(),
        streams.len(),
        "{what}: streams accepted {on:?}"
    );
    servers.remove(0).kill();
    std::thread::sleep(Duration::from_millis(1500));
    let alive = streams
        .iter_mut()
        .map(|s| {
            use std::io::{Read as _, Write as _};
            let mut back = [0u8; 5];
            s.write_all(b"still").is_ok() && s.read_exact(&mut back).is_ok() && &back == b"still"
        })
        .filter(|&ok| ok)
        .count();
    assert_eq!(
        alive,
        on[1] + on[2],
        "{what}: streams per backend {on:?}: those on backends 2 and 3 must carry on, those on 1 not"
    );
    let failures = connections(&topo.client, vip, AFTER_FAILOVER);
    assert!(
        failures.is_empty(),
        "{what}: {} of {AFTER_FAILOVER} connections failed after the failover, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        daemon.output()
    );
    let survivors: usize = servers
        .iter()
        .map(|s| s.connections.load(Ordering::Relaxed))
        .sum();
    assert!(survivors > 0);
    assert!(daemon.stop(), "{what}: the daemon did not stop cleanly");
    drop(decaps);
}

#[test]
fn dsr_ipv4() {
    case("dsr", None, false);
}

#[test]
fn dsr_ipv6() {
    case("dsr", None, true);
}

#[test]
fn ipip_ipv4() {
    case("tunnel", Some("ipip"), false);
}

#[test]
fn ipip_ipv6() {
    case("tunnel", Some("ipip"), true);
}

#[test]
fn gue_ipv4() {
    case("tunnel", Some("gue"), false);
}

#[test]
fn gue_ipv6() {
    case("tunnel", Some("gue"), true);
}

/// A DSR backend that lost its VIP binding passes a plain-IP check (`via = "direct"` here), yet
/// every client flow to it black-holes: its SYNs vanish. The balancer never sees its packets, but it sees the clients
/// retransmit their SYNs with no ACK in between; past `syn_timeout` each is a report, and two
/// eject the backend. Connections then go to the others, and the active check still says "up"
/// for the ejected one, which is why the passive watch matters in these modes.
#[test]
fn a_dsr_backend_without_the_vip_is_ejected_by_stuck_handshakes() {
    require_root("the DSR passive-detection test");
    let topo = Topology::build(3);
    topo.add_return_paths(&[topo.vip(false)]);
    topo.backends[0].ip(&["addr", "del", "10.0.0.10/32", "dev", "lo"]);
    let servers: Vec<EchoServer> = topo
        .backends
        .iter()
        .map(|be| EchoServer::start(be, "[::]:80".parse().unwrap()))
        .collect();
    let mut text = format!(
        "{}\n[[service]]\nname = \"echo\"\nvip = \"10.0.0.10:80\"\nmode = \"dsr\"\n\
         health = {{ kind = \"tcp\", interval = \"10s\", via = \"direct\" }}\n\
         passive = {{ syn_timeout = \"500ms\", events_to_eject = 2, max_ejection = \"60s\", base_ejection = \"60s\" }}\n",
        topo.dataplane_toml()
    );
    for i in 1..=3 {
        text.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}:80\"\n",
            topo.backend_addr(i, false)
        ));
    }
    let config = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&topo.lb, BINARY.as_ref(), &config);
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();

    // Connections hashed to backend 1 hang until their SYNs are retransmitted past the timeout;
    // once it is ejected, a flow's next SYN goes elsewhere.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.output().contains("passive: syn_timeout") {
        assert!(
            Instant::now() < deadline,
            "backend 1 was not ejected within 20 s:\n{}",
            daemon.output()
        );
        let _ = connections(&topo.client, vip, 8);
    }
    let output = daemon.output();
    assert!(
        output.lines().any(|l| l.contains("backend down")
            && l.contains("10.0.11.2:80")
            && l.contains("passive: syn_timeout")),
        "backend 1 not ejected for stuck handshakes:\n{output}"
    );
    let failures = connections(&topo.client, vip, 100);
    assert!(
        failures.is_empty(),
        "{} of 100 connections failed after the ejection: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // None reached backend 1 (its active checks connect to it, but not from the client).
    let client: IpAddr = CLIENT_V4.into();
    assert_eq!(
        servers[0]
            .peers
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.to_canonical() == client)
            .count(),
        0,
        "backend 1 never completes a client handshake"
    );
    assert!(daemon.stop());
}

/// A backend whose VIP binding (DSR) or decapsulation (a tunnel) is missing still answers on its
/// own address, but every client flow to it black-holes. The checks follow the clients' path by
/// default, so they mark it down, with a reason that says the backend answers directly; a plain
/// connect to it succeeds all along, and clients are served by the others.
fn broken_path(mode: &str, encap: Option<&str>) {
    require_root("the path-following health-check tests");
    let what = format!(
        "{mode}{}",
        encap.map(|e| format!("/{e}")).unwrap_or_default()
    );
    let topo = Topology::build(3);
    topo.add_return_paths(&[topo.vip(false)]);
    let _servers: Vec<EchoServer> = topo
        .backends
        .iter()
        .map(|be| EchoServer::start(be, "[::]:80".parse().unwrap()))
        .collect();
    // Backend 1 is the broken one: no VIP (DSR), or no decapsulator (tunnel).
    let mut decaps: Vec<Decap> = Vec::new();
    if mode == "dsr" {
        topo.backends[0].ip(&["addr", "del", "10.0.0.10/32", "dev", "lo"]);
    } else {
        decaps = topo.backends[1..].iter().map(start_decap).collect();
        for d in &mut decaps {
            d.stop_process();
        }
    }
    // The tunnels' too-big answers reach the client by XDP_TX: see `peer_xdp`.
    let _flush = peer_xdp::attach(&topo.client, "eth0");
    let config = config(&topo, false, mode, encap);
    let daemon = Daemon::start(&topo.lb, BINARY.as_ref(), &config);
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let broken = "10.0.11.2:80";

    let deadline = Instant::now() + Duration::from_secs(20);
    let explained = |out: &str| {
        out.lines().any(|l| {
            l.contains(broken)
                && l.contains("answers directly")
                && l.contains(mode_word(mode, encap))
        })
    };
    while !explained(&daemon.output()) {
        assert!(
            Instant::now() < deadline,
            "{what}: backend 1's broken path was not reported within 20 s:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its plain-IP check would pass: it accepts a connection on its own address.
    let direct: SocketAddr = broken.parse().unwrap();
    topo.lb.enter(|| {
        std::net::TcpStream::connect_timeout(&direct, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{what}: backend 1 refuses a direct connection: {e}"))
    });
    let (ok, status, _) = understudy_testbed::cli(BINARY, &topo.lb, &["status"]);
    assert!(ok, "{what}: understudy status failed");
    let line = status
        .lines()
        .find(|l| l.contains(broken))
        .unwrap_or_else(|| panic!("{what}: no status line for backend 1:\n{status}"));
    assert!(
        line.contains("down") || line.contains("waiting"),
        "{what}: backend 1 is not down: {line}\n{status}"
    );
    // Clients are served by backends 2 and 3 once the others are up.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let failures = connections(&topo.client, vip, 100);
        if failures.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of 100 connections failed with backend 1 down: {:?}\n{}",
            failures.len(),
            &failures[..failures.len().min(5)],
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The probe interface and its rule are the daemon's, and go with it.
    let rules = |ns: &Netns| ns.ip(&["rule", "show"]);
    assert!(
        rules(&topo.lb).contains("0x55000000/0xff000000"),
        "{what}: no probe rule"
    );
    assert!(topo.lb.ip(&["link", "show"]).contains("understudy-hc"));
    assert!(daemon.stop(), "{what}: the daemon did not stop cleanly");
    assert!(
        !topo.lb.ip(&["link", "show"]).contains("understudy-hc"),
        "{what}: the probe interface outlived the daemon"
    );
    assert!(
        !rules(&topo.lb).contains("0x55000000"),
        "{what}: the probe rule outlived the daemon"
    );
    drop(decaps);
}

/// The word a reason uses for the mode.
fn mode_word(mode: &str, encap: Option<&str>) -> &'static str {
    match (mode, encap) {
        ("dsr", _) => "via dsr",
        (_, Some("gue")) => "via gue",
        _ => "via ipip",
    }
}

#[test]
fn a_dsr_backend_without_the_vip_fails_its_path_following_check() {
    broken_path("dsr", None);
}

#[test]
fn a_tunnel_backend_without_decapsulation_fails_its_path_following_check() {
    broken_path("tunnel", Some("gue"));
}

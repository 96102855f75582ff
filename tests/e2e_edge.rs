//! End to end, edge protection, with the real daemon between namespaces: a bounded SYN flood
//! (a million spoofed SYNs from a raw socket) against a VIP while 20 long-lived streams and a
//! steady client run; a denied source; a rate-limited source cut at its limit beside an exempt
//! one. Everything is read back the way an operator would: `/status` and `/metrics`.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

#[path = "peer_xdp/mod.rs"]
mod peer_xdp;

use understudy::status::Snapshot;
use understudy_testbed::{
    Daemon, Netns, Topology, VIP_V4, admin, named_echo_servers, require_root, syn_flood,
    traffic::{Load, close, open_streams, read_name},
};

const FLOOD: u32 = 1_000_000;
const STREAMS: usize = 20;

fn status(topo: &Topology) -> Snapshot {
    let (_, body) = admin(&topo.lb, None, "GET", "/status");
    serde_json::from_str(&body).expect("/status is a snapshot")
}

fn metric(topo: &Topology, line_prefix: &str) -> f64 {
    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {line_prefix} in /metrics:\n{metrics}"))
}

#[test]
fn a_syn_flood_leaves_established_streams_and_real_clients_alone() {
    require_root("the SYN-flood end-to-end test");
    let topo = Topology::build(2);
    let _servers = named_echo_servers(&topo);
    // The flood comes in on a link of its own: on a shared veth it would overflow the ring in
    // front of XDP, and the real clients' packets would be lost before the program saw them.
    let attacker = Netns::new("attacker");
    topo.lb.veth_to("lb-flood", &attacker, "eth0");
    topo.lb
        .ip(&["addr", "add", "10.0.99.1/24", "dev", "lb-flood"]);
    topo.lb.ip(&["link", "set", "lb-flood", "up"]);
    attacker.ip(&["addr", "add", "10.0.99.2/24", "dev", "eth0"]);
    attacker.ip(&["link", "set", "eth0", "up"]);
    attacker.ip(&["route", "add", "default", "via", "10.0.99.1"]);
    attacker.exec(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"]);
    // A small flow table: without the guard, a million SYNs would turn it over many times.
    let config = topo.echo_config("", "", &[(1, ""), (2, "")]);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "interfaces = [",
        "max_flows = 65536\ninterfaces = [\"lb-flood\", ",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    let vip = SocketAddr::new(VIP_V4.into(), 80);

    let streams = open_streams(&topo.client, vip, STREAMS);
    let load = Load::start(&topo.client, vip, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let sent = syn_flood(&attacker, SocketAddrV4::new(VIP_V4, 80), FLOOD);
    let flood_took = started.elapsed();
    // The guard steps back within two quiet windows; let the streams run on past it.
    std::thread::sleep(Duration::from_secs(1));
    let steady = load.since(started);
    load.finish();
    let after = status(&topo);
    close(&streams);

    eprintln!(
        "{sent} SYNs in {flood_took:?}; steady client {} connections; datapath {:?}; redirect drops {:?}",
        steady.len(),
        after.datapath,
        after.redirect_drops,
    );
    assert_eq!(sent, FLOOD, "the raw socket took every SYN");
    for (i, s) in streams.iter().enumerate() {
        assert_eq!(
            *s.error.lock().unwrap(),
            None,
            "stream {i} on {} broke during the flood",
            s.name
        );
    }
    let ok = steady.iter().filter(|r| r.is_ok()).count();
    let failed: Vec<&String> = steady.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        steady.len() >= 50,
        "the steady client ran: {}",
        steady.len()
    );
    assert!(
        ok * 100 >= steady.len() * 99,
        "{ok} of {} steady connections succeeded; failures: {failed:?}",
        steady.len()
    );
    // Seen as an operator sees it: flood mode entered and left, SYNs left unwritten.
    assert!(
        after.flood.entered >= 1,
        "flood mode entered: {:?}",
        after.flood
    );
    assert!(after.flood.left >= 1, "and left: {:?}", after.flood);
    assert!(
        after.flood.unwritten >= u64::from(FLOOD) / 2,
        "most of the flood went unwritten: {:?}",
        after.flood
    );
    assert!(
        after.flood.cpus.is_empty(),
        "no CPU still flooded: {:?}",
        after.flood
    );
    assert!(
        metric(
            &topo,
            "understudy_flood_transitions_total{direction=\"enter\"} "
        ) >= 1.0
    );
    assert!(
        metric(
            &topo,
            "understudy_datapath_packets_total{reason=\"flood_unwritten\"} "
        ) >= f64::from(FLOOD) / 2.0
    );
    daemon.wait_for_line("SYN-flood mode", Duration::from_secs(5));
    daemon.wait_for_line("SYN-flood mode over", Duration::from_secs(5));
    assert!(daemon.stop());
}

/// Connects from `source` (an address of the client namespace) within `timeout`; the backend's
/// greeting back, or the error.
fn connect_from(source: Ipv4Addr, vip: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    socket.connect_timeout(&vip.into(), timeout)?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    read_name(&mut stream)
}

#[test]
fn denied_sources_get_nothing_and_rate_limits_cut_only_the_fast_source() {
    require_root("the access-list end-to-end test");
    let topo = Topology::build(1);
    let _servers = named_echo_servers(&topo);
    // Sources beside the client's own 10.0.1.2 on its link.
    for a in ["10.0.1.3/24", "10.0.1.4/24"] {
        topo.client.ip(&["addr", "add", a, "dev", "eth0"]);
    }
    let config = topo.echo_config(
        "",
        "acl = { deny = [\"10.0.1.3/32\"] }\n\
         rate_limit = { connections_per_second = 1, burst = 5, exempt = [\"10.0.1.2/32\"], action = \"reset\" }",
        &[(1, "")],
    );
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    // The refusals' RSTs go back with XDP_TX: see `peer_xdp`.
    let _flush = peer_xdp::attach(&topo.client, "eth0");
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let (exempt, denied, limited) = (
        Ipv4Addr::new(10, 0, 1, 2),
        Ipv4Addr::new(10, 0, 1, 3),
        Ipv4Addr::new(10, 0, 1, 4),
    );

    // Short timeouts for the limited source: its 12 attempts must fit well inside the one
    // second that refills a token.
    let quick = Duration::from_millis(60);
    let results = topo.client.enter(|| {
        let denied = connect_from(denied, vip, Duration::from_millis(700));
        let limited: Vec<std::io::Result<String>> =
            (0..12).map(|_| connect_from(limited, vip, quick)).collect();
        let exempt: Vec<std::io::Result<String>> = (0..12)
            .map(|_| connect_from(exempt, vip, Duration::from_secs(1)))
            .collect();
        (denied, limited, exempt)
    });
    let (denied, limited, exempt) = results;
    match denied {
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a denied source must get nothing, not {other:?}"),
    }
    let admitted = limited.iter().filter(|r| r.is_ok()).count();
    // The burst of 5, and perhaps one token refilled while the 12 ran.
    assert!(
        (5..=6).contains(&admitted),
        "the limited source got {admitted} of 12: {limited:?}"
    );
    // Refused with a RST (the kernel tests check its bytes), or, rarely, one that came after
    // the short timeout.
    for r in limited.iter().filter(|r| r.is_err()) {
        let e = r.as_ref().unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut),
            "refused: {e}"
        );
    }
    assert!(
        limited.iter().any(|r| r
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)),
        "at least one refusal came back as a RST: {limited:?}"
    );
    assert!(
        exempt.iter().all(|r| r.as_deref().ok() == Some("be1")),
        "the exempt source is never limited: {exempt:?}"
    );

    let s = status(&topo);
    let refused = &s.services[0].refused;
    assert!(
        refused.get("deny").copied().unwrap_or(0) >= 1,
        "{refused:?}"
    );
    assert_eq!(
        refused.get("rate_limited").copied().unwrap_or(0),
        (12 - admitted) as u64,
        "{refused:?}"
    );
    assert!(
        metric(
            &topo,
            "understudy_service_refused_total{service=\"echo\",reason=\"rate_limited\"} "
        ) >= 6.0
    );
    assert!(daemon.stop());
}

#[test]
fn the_daemon_renews_cached_next_hops_when_a_neighbour_changes() {
    require_root("the next-hop end-to-end test");
    let topo = Topology::build(1);
    let _servers = named_echo_servers(&topo);
    // No health checks: they would fail through the bogus neighbour too, and take the backend
    // out for a reason of their own.
    let config = topo.echo_config("", "health = { kind = \"none\" }", &[(1, "")]);
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let client = Ipv4Addr::new(10, 0, 1, 2);
    let connect = || {
        topo.client
            .enter(|| connect_from(client, vip, Duration::from_millis(500)))
    };
    assert_eq!(connect().unwrap(), "be1", "the hop is cached");
    let real = topo.backends[0].exec(&["cat", "/sys/class/net/eth0/address"]);
    let backend = understudy_testbed::backend_v4(1).to_string();
    let neigh = |mac: &str| {
        topo.lb.ip(&[
            "neigh",
            "replace",
            &backend,
            "lladdr",
            mac,
            "dev",
            "lb-be1",
            "nud",
            "permanent",
        ]);
    };
    // A neighbour entry that points nowhere: only if the daemon saw the change does the
    // program stop using the cached (right) MAC, and the connection fail.
    neigh("02:00:00:00:99:99");
    std::thread::sleep(Duration::from_millis(200));
    let r = connect();
    assert!(r.is_err(), "the new neighbour entry is used");
    neigh(real.trim());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(connect().unwrap(), "be1", "and the right one again");
    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    assert!(
        metrics.contains("understudy_datapath_packets_total{reason=\"next_hop_lookup\"}"),
        "{metrics}"
    );
    assert!(daemon.stop());
}

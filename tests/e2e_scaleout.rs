//! End to end, two balancer nodes behind a router's ECMP. The router namespace runs BIRD with
//! `merge paths` and 5-tuple multipath hashing; each node runs BIRD and the real `understudy`,
//! announcing the VIP over eBGP with BFD; three backends answer in GUE tunnel mode (each runs
//! `understudy decap` on its link to each node, for its one service address on `lo`), and reply
//! to the client through the router. The two nodes have the same services and backends, so the
//! same table: a flow that ECMP moves to the other node reaches the same backend.
//!
//! Proved: both nodes carry traffic and all three backends get theirs; a clean stop of one node
//! under load loses no new connection and its streams carry on through the other; a hard loss
//! (daemon and BIRD killed with SIGKILL) is withdrawn by BFD in well under the hold time, and the
//! streams that were on it carry on. The figures are printed for the README.

#[path = "peer_xdp/mod.rs"]
mod peer_xdp;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use understudy_testbed::{
    BIRD_TEST_TIMERS, Bird, Daemon, Decap, EchoServer, Netns, admin, bird_routes, echo_connections,
    require_root,
};

const BINARY: &str = env!("CARGO_BIN_EXE_understudy");
const VIP: &str = "10.0.0.10:80";
const BACKENDS: usize = 3;
const CONNECTIONS: usize = 1000;
const STREAMS: usize = 16;

/// A host's end of a link: complete checksums, GRO on (frames XDP redirects into it are taken).
fn host_link(ns: &Netns, dev: &str) {
    ns.exec(&["ethtool", "-K", dev, "tx", "off", "gro", "on"]);
}

fn link(a: &Netns, a_dev: &str, a_addr: &str, b: &Netns, b_dev: &str, b_addr: &str) {
    a.veth_to(a_dev, b, b_dev);
    a.ip(&["addr", "add", a_addr, "dev", a_dev]);
    b.ip(&["addr", "add", b_addr, "dev", b_dev]);
    a.ip(&["link", "set", a_dev, "up"]);
    b.ip(&["link", "set", b_dev, "up"]);
}

struct Node {
    ns: Netns,
    name: &'static str,
    /// The node's address toward the router.
    up: String,
    bird: Bird,
    config: PathBuf,
    daemon: Option<Daemon>,
}

impl Node {
    fn start_daemon(&mut self) {
        self.daemon = Some(Daemon::start(&self.ns, BINARY.as_ref(), &self.config));
    }

    /// Waits until the node's checks hold every backend up.
    fn wait_all_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, status) = admin(&self.ns, None, "GET", "/status");
            if status.matches("\"healthy\": true").count() == BACKENDS {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: not every backend up within 20 s:\n{status}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// New flows the node's program has opened for the service.
    fn new_flows(&self) -> u64 {
        let (_, metrics) = admin(&self.ns, None, "GET", "/metrics");
        metrics
            .lines()
            .find(|l| l.starts_with("understudy_service_new_flows_total{") && l.contains("echo"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// The router's next hops for the VIP.
fn next_hops(router: &Netns) -> Vec<String> {
    let routes = bird_routes(router);
    let mut hops = Vec::new();
    let mut in_vip = false;
    for line in routes.lines() {
        if !line.starts_with(' ') && !line.starts_with('\t') {
            in_vip = line.starts_with("10.0.0.10 ");
        }
        if in_vip && let Some(rest) = line.split("via ").nth(1) {
            hops.push(rest.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    hops.sort();
    hops
}

fn wait_hops(router: &Netns, want: &[&str], secs: u64, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let hops = next_hops(router);
        if hops == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: the router's next hops for the VIP are {hops:?}, not {want:?}, after {secs} s:\n{}",
            bird_routes(router)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Streams opened from the client, each echoing a word now and then.
fn open_streams(client: &Netns, vip: SocketAddr) -> Vec<TcpStream> {
    client.enter(|| {
        (0..STREAMS)
            .map(|_| {
                let s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .expect("open a stream");
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            })
            .collect()
    })
}

/// How many streams still echo.
fn alive(streams: &mut [TcpStream]) -> usize {
    streams
        .iter_mut()
        .map(|s| {
            let mut back = [0u8; 5];
            let r = s.write_all(b"still").and_then(|()| s.read_exact(&mut back));
            if let Err(e) = &r {
                println!("stream {:?}: {e}", s.local_addr());
            }
            r.is_ok() && &back == b"still"
        })
        .filter(|&ok| ok)
        .count()
}

/// Connections made in a loop until `stop`: how many, and their failures.
fn load(client: &Netns, vip: SocketAddr, stop: &AtomicBool) -> (usize, Vec<String>) {
    let mut made = 0;
    let mut failures = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        failures.extend(echo_connections(client, vip, 20, 2));
        made += 20;
    }
    (made, failures)
}

#[test]
fn two_nodes_behind_ecmp_share_the_traffic_and_cover_for_each_other() {
    scenario(true);
}

/// The same hard loss without BFD: only BGP's hold time (6 s here) notices the silence, and the
/// streams on the lost node carry on all the same (its program kept forwarding meanwhile).
#[test]
fn without_bfd_a_hard_loss_waits_for_the_hold_time() {
    scenario(false);
}

/// Builds the two-node topology (with BFD or not) and runs the checks: with BFD all of them,
/// without only the hard loss, whose detection time is what differs.
fn scenario(bfd: bool) {
    require_root("the scale-out test");
    let bfd_word = if bfd { "on" } else { "off" };
    let client = Netns::new("client");
    let router = Netns::new("router");
    let backends: Vec<Netns> = (1..=BACKENDS)
        .map(|i| Netns::new(&format!("be{i}")))
        .collect();
    let dir = std::env::temp_dir().join(format!("scaleout-{}", router.name()));
    std::fs::create_dir_all(&dir).unwrap();

    for ns in std::iter::once(&client).chain([&router]).chain(&backends) {
        ns.ip(&["link", "set", "lo", "up"]);
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
    }
    link(&router, "rc", "10.0.1.1/24", &client, "eth0", "10.0.1.2/24");
    host_link(&client, "eth0");
    client.ip(&["route", "add", "default", "via", "10.0.1.1"]);
    router.sysctl("net.ipv4.ip_forward", "1");
    router.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
    for (i, be) in backends.iter().enumerate() {
        let n = i + 1;
        link(
            &router,
            &format!("r{n}"),
            &format!("10.0.3{n}.1/24"),
            be,
            "ret",
            &format!("10.0.3{n}.2/24"),
        );
        host_link(be, "ret");
        be.ip(&["addr", "add", &format!("10.0.50.{n}/32"), "dev", "lo"]);
        be.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
        be.ip(&["route", "add", "default", "via", &format!("10.0.3{n}.1")]);
    }

    let mut nodes: Vec<Node> = Vec::new();
    let mut decaps: Vec<Decap> = Vec::new();
    for (k, (name, up_net, be_net, local)) in [
        ("a", "100", "1", "10.0.100.2"),
        ("b", "101", "2", "10.0.101.2"),
    ]
    .into_iter()
    .enumerate()
    {
        let ns = Netns::new(&format!("lb{name}"));
        ns.ip(&["link", "set", "lo", "up"]);
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
        let rdev = format!("r{name}");
        link(
            &router,
            &rdev,
            &format!("10.0.{up_net}.1/24"),
            &ns,
            "uplink",
            &format!("{local}/24"),
        );
        host_link(&router, &rdev);
        let mut interfaces = vec!["\"uplink\"".to_string()];
        for (i, be) in backends.iter().enumerate() {
            let n = i + 1;
            let (lb_addr, be_addr) = (format!("10.0.{be_net}{n}.1"), format!("10.0.{be_net}{n}.2"));
            let be_dev = format!("from{name}");
            link(
                &ns,
                &format!("b{n}"),
                &format!("{lb_addr}/24"),
                be,
                &be_dev,
                &format!("{be_addr}/24"),
            );
            host_link(be, &be_dev);
            ns.ip(&["route", "add", &format!("10.0.50.{n}/32"), "via", &be_addr]);
            interfaces.push(format!("\"b{n}\""));
            let mut d = Decap::start(BINARY, be, &be_dev, &["--address", &format!("10.0.50.{n}")]);
            d.stop_process();
            decaps.push(d);
        }
        let include = dir.join(format!("{name}-vips.conf"));
        std::fs::write(&include, "").unwrap();
        let bird = Bird::start(
            &ns,
            &dir,
            &format!("lb{name}"),
            &format!(
                "router id {local};\nprotocol device {{}}\ninclude \"{}\";\n\
                 protocol bfd {{ interface \"uplink\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
                 protocol bgp upstream {{ local {local} as 65001; neighbor 10.0.{up_net}.1 as 65000; bfd {bfd_word}; {BIRD_TEST_TIMERS}\n\
                 ipv4 {{ import none; export where proto = \"understudy4\"; }}; }}\n",
                include.display()
            ),
        );
        let mut text = format!(
            "[dataplane]\ninterfaces = [{}]\ninstance = \"{}\"\n\
             [announce]\ninclude = \"{}\"\nsocket = \"{}\"\ngrace = \"2s\"\nspeaker_check = \"500ms\"\n\
             \n[[service]]\nname = \"echo\"\nvip = \"{VIP}\"\nmode = \"tunnel\"\ntunnel = {{ encap = \"gue\" }}\n\
             health = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 2 }}\n",
            interfaces.join(", "),
            ns.name(),
            include.display(),
            bird.socket.display()
        );
        for n in 1..=BACKENDS {
            text.push_str(&format!(
                "\n[[service.backend]]\naddress = \"10.0.50.{n}:80\"\n"
            ));
        }
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        nodes.push(Node {
            ns,
            name: if k == 0 { "a" } else { "b" },
            up: local.to_string(),
            bird,
            config,
            daemon: None,
        });
    }
    let _router_bird = Bird::start(
        &router,
        &dir,
        "router",
        &format!(
            "router id 10.0.1.1;\nprotocol device {{}}\n\
             protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}\n\
             protocol bfd {{ interface \"r*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             template bgp node {{ local as 65000; bfd {bfd_word}; {BIRD_TEST_TIMERS} ipv4 {{ import all; export none; }}; }}\n\
             protocol bgp nodea from node {{ neighbor 10.0.100.2 as 65001; }}\n\
             protocol bgp nodeb from node {{ neighbor 10.0.101.2 as 65001; }}\n"
        ),
    );
    // The too-big answers leave the nodes with XDP_TX toward the router: see `peer_xdp`.
    let _flush: Vec<_> = ["ra", "rb"]
        .iter()
        .map(|d| peer_xdp::attach(&router, d))
        .collect();
    let servers: Vec<EchoServer> = backends
        .iter()
        .map(|be| EchoServer::start(be, "[::]:80".parse().unwrap()))
        .collect();
    for node in &mut nodes {
        node.start_daemon();
    }
    let (up_a, up_b) = (nodes[0].up.clone(), nodes[1].up.clone());
    let both = [up_a.as_str(), up_b.as_str()];
    let took = wait_hops(&router, &both, 40, "both nodes announced");
    println!("both nodes announced {took:?} after the second daemon started");
    let vip: SocketAddr = VIP.parse().unwrap();
    // Flows must not be placed while the nodes' views differ (a flow one node put on a fallback
    // backend breaks when ECMP moves it to a node that has its owner back): every backend up on
    // both first.
    for node in &nodes {
        node.wait_all_up();
    }

    if bfd {
        spread_and_clean_stop(&client, &router, &mut nodes, &servers, &both, vip);
    }
    hard_loss(&client, &router, &mut nodes, &both, vip, bfd);
    for node in &mut nodes {
        if let Some(d) = node.daemon.take() {
            assert!(d.stop(), "node {} did not stop cleanly", node.name);
        }
    }
    drop(decaps);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both nodes carry traffic, and every backend gets its share; then a clean stop of node A
/// under load loses no new connection and its streams carry on through node B. Node A is
/// started again at the end.
fn spread_and_clean_stop(
    client: &Netns,
    router: &Netns,
    nodes: &mut [Node],
    servers: &[EchoServer],
    both: &[&str; 2],
    vip: SocketAddr,
) {
    let flows_before: Vec<u64> = nodes.iter().map(Node::new_flows).collect();
    let served_before: Vec<usize> = servers
        .iter()
        .map(|s| s.connections.load(Ordering::Relaxed))
        .collect();
    let failures = echo_connections(client, vip, CONNECTIONS, 4);
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let per_node: Vec<u64> = nodes
        .iter()
        .zip(&flows_before)
        .map(|(n, b)| n.new_flows() - b)
        .collect();
    let per_backend: Vec<usize> = servers
        .iter()
        .zip(&served_before)
        .map(|(s, b)| s.connections.load(Ordering::Relaxed) - b)
        .collect();
    println!("per node {per_node:?}, per backend {per_backend:?}");
    for (i, &n) in per_node.iter().enumerate() {
        assert!(
            n as usize >= CONNECTIONS / 5,
            "node {i} carried {n} of {CONNECTIONS}: {per_node:?}"
        );
    }
    for (i, &n) in per_backend.iter().enumerate() {
        assert!(
            n >= CONNECTIONS / 5,
            "backend {} served {n}: {per_backend:?}",
            i + 1
        );
    }

    // Clean stop of node A under load: withdrawn, no new connection fails, and its streams
    // carry on through node B, on the same backends.
    let mut streams = open_streams(client, vip);
    let stop = AtomicBool::new(false);
    let a = nodes[0].daemon.take().unwrap();
    let (made, failures) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(client, vip, &stop));
        std::thread::sleep(Duration::from_millis(500));
        let stopped = scope.spawn(move || a.stop());
        wait_hops(router, &[both[1]], 10, "node A withdrawn on SIGTERM");
        assert!(stopped.join().unwrap(), "node A did not stop cleanly");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        loader.join().unwrap()
    });
    assert!(
        failures.is_empty(),
        "{} of {made} connections failed across node A's clean stop: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let survived = alive(&mut streams);
    println!(
        "clean stop: {made} connections during it, none failed; {survived} of {STREAMS} streams carried on"
    );
    assert_eq!(survived, STREAMS, "streams lost on node A's clean stop");

    nodes[0].start_daemon();
    wait_hops(router, both, 40, "node A announced again");
    nodes[0].wait_all_up();
}

/// A hard loss of node B; the streams that were on it carry on through node A.
fn hard_loss(
    client: &Netns,
    router: &Netns,
    nodes: &mut [Node],
    both: &[&str; 2],
    vip: SocketAddr,
    bfd: bool,
) {
    // A hard loss of node B, as a host that hangs: it falls silent first (its
    // address toward the router goes, so not even a FIN of the BGP session leaves it), then its
    // daemon and BIRD are killed with SIGKILL. Its XDP program stays attached and keeps
    // forwarding what still reaches it; what the router must notice is the silence, which BFD
    // reports after 3 missed 100 ms intervals rather than the 6 s hold time.
    let mut streams = open_streams(client, vip);
    let b_flows = nodes[1].new_flows();
    let b = nodes[1].daemon.take().unwrap();
    nodes[1].ns.ip(&["addr", "flush", "dev", "uplink"]);
    let silent = Instant::now();
    unsafe { libc::kill(b.pid() as i32, libc::SIGKILL) };
    nodes[1].bird.kill();
    wait_hops(
        router,
        &[both[0]],
        10,
        "node B withdrawn after its hard loss",
    );
    let withdrawn = silent.elapsed();
    // And its link goes too: a dead node forwards nothing, so the streams now live on node A.
    nodes[1].ns.ip(&["link", "set", "uplink", "down"]);
    let survived = alive(&mut streams);
    println!(
        "hard loss of node B, BFD {}: withdrawn after {withdrawn:?} (BFD 100 ms x 3, hold time 6 s); {survived} of {STREAMS} streams carried on",
        if bfd { "on" } else { "off" }
    );
    if bfd {
        assert!(withdrawn < Duration::from_secs(3), "BFD took {withdrawn:?}");
    } else {
        assert!(
            withdrawn >= Duration::from_secs(3),
            "withdrawn after {withdrawn:?} without BFD: something other than the hold time noticed"
        );
    }
    assert_eq!(
        survived, STREAMS,
        "streams lost with node B (it had opened {b_flows} flows)"
    );
    let failures = echo_connections(client, vip, 200, 4);
    assert!(
        failures.is_empty(),
        "{} of 200 failed after node B's loss: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    drop(b);
    // Node B's pinned state outlived its SIGKILL, as it should; remove it.
    understudy_testbed::run_ok(BINARY, &["clean", "--instance", nodes[1].ns.name()]);
}

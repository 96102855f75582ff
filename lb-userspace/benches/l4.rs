//! L4 end to end (`cargo xtask bench l4`, as root; Debian's nginx, haproxy, wrk and iperf3).
//!
//! The testbed's namespaces: a client, the balancer, and 2 backends, each running nginx (one
//! worker) that serves a 100-byte file, and an iperf3 server. Every veth end has TX checksum
//! offload off and GRO on, whatever the path. Three paths from the client:
//! - **routing**: the balancer only forwards; the client talks to backend 1's own address, and no
//!   XDP program is attached (the daemon is stopped). nginx and iperf3 also listen on ports no
//!   service uses (8080, 5202), which the routing paths use: every packet from a NAT backend's
//!   service port is translated to its VIP (see the README's Limitations);
//! - **xdp**: Understudy's XDP NAT on the VIP 10.0.0.10 over both backends (`web` on :80, TCP
//!   checks; `bulk` on :5201 with `hash = "source_ip"`, so an iperf3 test's control and data
//!   connections meet one server, and no checks, which would disturb iperf3's one test at a time);
//! - **routing, XDP attached**: as routing, with the daemon running, so the program passes the
//!   packets (not a VIP) to the stack: what the attached program and the veth's XDP mode cost
//!   before any NAT work, to read the xdp path against;
//! - **haproxy**: HAProxy 2.6 in TCP mode on the balancer at 10.0.0.20 (`balance roundrobin` for
//!   :80, `balance source` for :5201; its default thread count, one per CPU), daemon stopped.
//!
//! Four loads per path: wrk with `Connection: close` (a new connection per request), wrk with
//! keep-alive (both 1 thread, 64 connections, 5 s, on CPU 0), and iperf3 with 1 and 4 streams
//! (5 s, client on CPU 0). The backends' nginx and iperf3 run on CPU 1.
//!
//! Each of ROUNDS rounds measures every path (in a rotating order) under every load; figures are
//! medians over rounds, read as ratios to routing and to HAProxy from the same run. Besides the
//! rates: TCP retransmissions (the sum of every namespace's `RetransSegs`), wrk's socket errors
//! and non-2xx answers, and for the xdp path the daemon's health changes (any `backend down` is an
//! ejection during the run) and the frames the kernel dropped after a redirect.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use understudy_testbed::{Daemon, Netns, Topology, backend_v4, require_root};

const ROUNDS: usize = 5;
const SECONDS: u64 = 5;
const CONNECTIONS: &str = "64";
const CLIENT_CPU: &str = "0";
const SERVER_CPU: &str = "1";
const VIP: &str = "10.0.0.10";
const HAPROXY_ADDR: &str = "10.0.0.20";
const BULK_PORT: u16 = 5201;
/// The backends' ports no service uses, for the routing paths.
const DIRECT_WEB_PORT: u16 = 8080;
const DIRECT_BULK_PORT: u16 = 5202;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Routing,
    RoutingUnderXdp,
    Xdp,
    Haproxy,
}

impl Path {
    const ALL: [Path; 4] = [
        Path::Routing,
        Path::RoutingUnderXdp,
        Path::Xdp,
        Path::Haproxy,
    ];

    /// Whether the daemon (so the XDP program) runs for this path.
    fn daemon(self) -> bool {
        matches!(self, Path::RoutingUnderXdp | Path::Xdp)
    }

    fn name(self) -> &'static str {
        match self {
            Path::Routing => "routing",
            Path::RoutingUnderXdp => "routing, xdp",
            Path::Xdp => "xdp nat",
            Path::Haproxy => "haproxy tcp",
        }
    }

    /// Where wrk and iperf3 go: (web address and port, bulk address, bulk port).
    fn target(self) -> (String, String, u16) {
        match self {
            Path::Routing | Path::RoutingUnderXdp => (
                format!("{}:{DIRECT_WEB_PORT}", backend_v4(1)),
                backend_v4(1).to_string(),
                DIRECT_BULK_PORT,
            ),
            Path::Xdp => (format!("{VIP}:80"), VIP.to_string(), BULK_PORT),
            Path::Haproxy => (
                format!("{HAPROXY_ADDR}:80"),
                HAPROXY_ADDR.to_string(),
                BULK_PORT,
            ),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Load {
    NewConnections,
    KeepAlive,
    Bulk1,
    Bulk4,
}

impl Load {
    const ALL: [Load; 4] = [
        Load::NewConnections,
        Load::KeepAlive,
        Load::Bulk1,
        Load::Bulk4,
    ];

    fn name(self) -> &'static str {
        match self {
            Load::NewConnections => "new connections (req/s, Connection: close)",
            Load::KeepAlive => "keep-alive (req/s)",
            Load::Bulk1 => "iperf3, 1 stream (Gbit/s)",
            Load::Bulk4 => "iperf3, 4 streams (Gbit/s)",
        }
    }
}

/// One measurement: the rate (requests per second, or Gbit/s), errors, retransmissions.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rate: f64,
    errors: u64,
    retransmits: u64,
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join("understudy-l4bench");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// nginx in backend `i`'s namespace on port 80, one worker on the servers' CPU, serving `/100b`.
fn nginx(ns: &Netns, i: usize) -> Child {
    let root = dir().join(format!("be{i}"));
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/100b"), [b'x'; 100]).unwrap();
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nworker_cpu_affinity {:b};\npid {root}/nginx.pid;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n  \
             server {{ listen 80 backlog=4096 reuseport; listen {DIRECT_WEB_PORT} backlog=4096 \
             reuseport; root {root}/www; }}\n}}\n",
            1u32 << SERVER_CPU.parse::<u32>().unwrap(),
            root = root.display()
        ),
    )
    .unwrap();
    let child = ns
        .command("nginx")
        .args(["-e", "stderr", "-g", "daemon off;", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .spawn()
        .expect("start nginx (cargo xtask bench l4 installs it)");
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn iperf3_server(ns: &Netns, port: u16) -> Child {
    ns.command("taskset")
        .args(["-c", SERVER_CPU, "iperf3", "-s", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start iperf3 (cargo xtask bench l4 installs it)")
}

fn haproxy(ns: &Netns) -> Child {
    let mut text = format!(
        "global\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
         timeout client 30s\n  timeout server 30s\n\n\
         frontend web\n  bind {HAPROXY_ADDR}:80\n  default_backend web\n\n\
         backend web\n  balance roundrobin\n"
    );
    for i in 1..=2 {
        text.push_str(&format!("  server b{i} {}:80\n", backend_v4(i)));
    }
    text.push_str(&format!(
        "\nfrontend bulk\n  bind {HAPROXY_ADDR}:{BULK_PORT}\n  default_backend bulk\n\n\
         backend bulk\n  balance source\n"
    ));
    for i in 1..=2 {
        text.push_str(&format!("  server b{i} {}:{BULK_PORT}\n", backend_v4(i)));
    }
    let cfg = dir().join("haproxy.cfg");
    std::fs::write(&cfg, text).unwrap();
    let mut child = ns
        .command("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .expect("start haproxy (cargo xtask bench l4 installs it)");
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("haproxy exited: {status}");
    }
    child
}

fn understudy_config(topo: &Topology) -> PathBuf {
    let mut text = format!(
        "{}\n[[service]]\nname = \"web\"\nvip = \"{VIP}:80\"\n\
         [service.health]\nkind = \"tcp\"\n",
        topo.dataplane_toml()
    );
    for i in 1..=2 {
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"{}:80\"\n",
            backend_v4(i)
        ));
    }
    text.push_str(&format!(
        "\n[[service]]\nname = \"bulk\"\nvip = \"{VIP}:{BULK_PORT}\"\nhash = \"source_ip\"\n\
         [service.health]\nkind = \"none\"\n"
    ));
    for i in 1..=2 {
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"{}:{BULK_PORT}\"\n",
            backend_v4(i)
        ));
    }
    let path = dir().join("understudy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// TCP segments retransmitted so far in `ns` (`/proc/net/snmp`, Tcp RetransSegs).
fn retransmitted(ns: &Netns) -> u64 {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]);
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (Some(names), Some(values)) = (tcp.first(), tcp.get(1)) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn retransmitted_everywhere(topo: &Topology) -> u64 {
    std::iter::once(&topo.client)
        .chain([&topo.lb])
        .chain(&topo.backends)
        .map(retransmitted)
        .sum()
}

fn wrk(client: &Netns, target: &str, close: bool) -> Sample {
    let mut c = client.command("taskset");
    c.args(["-c", CLIENT_CPU, "wrk", "-t1", "-c", CONNECTIONS])
        .args(["-d", &format!("{SECONDS}s")]);
    if close {
        c.args(["-H", "Connection: close"]);
    }
    let out = c
        .arg(format!("http://{target}/100b"))
        .output()
        .expect("run wrk (cargo xtask bench l4 installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let w = understudy_testbed::wrk::parse(&text);
    let s = Sample {
        rate: w.per_second,
        errors: w.socket_errors + w.non_2xx,
        retransmits: 0,
    };
    assert!(s.rate > 0.0, "wrk printed no rate:\n{text}");
    s
}

fn iperf3(client: &Netns, target: &str, port: u16, streams: u32) -> Sample {
    let out = client
        .command("taskset")
        .args(["-c", CLIENT_CPU, "iperf3", "-J", "-c", target])
        .args(["-p", &port.to_string(), "-t", &SECONDS.to_string()])
        .args(["-P", &streams.to_string()])
        .output()
        .expect("run iperf3 (cargo xtask bench l4 installs it)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3's JSON: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    if let Some(e) = v.get("error") {
        panic!("iperf3 to {target}: {e}");
    }
    let sent = &v["end"]["sum_sent"];
    Sample {
        rate: sent["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        errors: 0,
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
    }
}

fn measure(topo: &Topology, path: Path, load: Load) -> Sample {
    let (web, bulk, port) = path.target();
    let before = retransmitted_everywhere(topo);
    let mut s = match load {
        Load::NewConnections => wrk(&topo.client, &web, true),
        Load::KeepAlive => wrk(&topo.client, &web, false),
        Load::Bulk1 => iperf3(&topo.client, &bulk, port, 1),
        Load::Bulk4 => iperf3(&topo.client, &bulk, port, 4),
    };
    // iperf3 reports its sender's; the namespaces' counters hold every sender's.
    s.retransmits = s
        .retransmits
        .max(retransmitted_everywhere(topo).saturating_sub(before));
    s
}

/// The sum of a counter over its label sets in the daemon's Prometheus text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    require_root("the L4 benchmark");
    Netns::remove_stale();
    let topo = Topology::build(2);
    for dev in topo.lb_interfaces() {
        topo.lb
            .exec(&["ethtool", "-K", &dev, "tx", "off", "gro", "on"]);
    }
    topo.lb
        .ip(&["addr", "add", &format!("{HAPROXY_ADDR}/32"), "dev", "lo"]);
    topo.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65000");
    topo.client.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let mut children: Vec<Child> = Vec::new();
    for (i, ns) in topo.backends.iter().enumerate() {
        children.push(nginx(ns, i + 1));
        children.push(iperf3_server(ns, BULK_PORT));
        children.push(iperf3_server(ns, DIRECT_BULK_PORT));
    }
    children.push(haproxy(&topo.lb));
    let config = understudy_config(&topo);
    let bin = env!("CARGO_BIN_EXE_understudy");
    // Every path answers before anything is timed.
    for path in Path::ALL {
        let daemon = path
            .daemon()
            .then(|| Daemon::start(&topo.lb, bin.as_ref(), &config));
        std::thread::sleep(Duration::from_millis(500));
        let out = topo
            .client
            .command("curl")
            .args(["-s", "-m", "5", &format!("http://{}/100b", path.target().0)])
            .output()
            .expect("curl");
        assert_eq!(
            out.stdout.len(),
            100,
            "{} did not serve the file",
            path.name()
        );
        if let Some(d) = daemon {
            assert!(d.stop());
        }
    }

    let mut samples: Vec<(Path, Load, Sample)> = Vec::new();
    let mut ejections = 0;
    let mut redirect_drops = 0;
    for round in 0..ROUNDS {
        for k in 0..Path::ALL.len() {
            let path = Path::ALL[(round + k) % Path::ALL.len()];
            let daemon = path.daemon().then(|| {
                let d = Daemon::start(&topo.lb, bin.as_ref(), &config);
                // The first checks pass before the load starts.
                std::thread::sleep(Duration::from_secs(1));
                d
            });
            for load in Load::ALL {
                let s = measure(&topo, path, load);
                eprintln!(
                    "l4: round {} {:<12} {:<44} {:>10.2}  errors {}  retransmits {}",
                    round + 1,
                    path.name(),
                    load.name(),
                    s.rate,
                    s.errors,
                    s.retransmits
                );
                samples.push((path, load, s));
            }
            if let Some(d) = daemon {
                let (_, metrics) = understudy_testbed::admin(&topo.lb, None, "GET", "/metrics");
                redirect_drops += metric_sum(&metrics, "understudy_redirect_drops_total");
                let log = d.output();
                ejections += log.matches("backend down").count();
                assert!(d.stop(), "the daemon did not stop cleanly");
            }
        }
    }

    println!(
        "\nL4 end to end: client → balancer → 2 nginx (100-byte file) / iperf3; {ROUNDS} rounds, \
         medians; TX checksum off and GRO on for every veth"
    );
    println!(
        "{:<44} {:>9} {:>12} {:>9} {:>11} {:>9} {:>9} {:>14}   {:>21}",
        "load",
        "routing",
        "routing, xdp",
        "xdp nat",
        "haproxy tcp",
        "÷ routing",
        "÷ haproxy",
        "÷ routing,xdp",
        "retransmits r/x/h"
    );
    let mut errors = 0;
    for load in Load::ALL {
        let of = |path: Path, f: fn(&Sample) -> f64| {
            median(
                samples
                    .iter()
                    .filter(|(p, l, _)| *p == path && *l == load)
                    .map(|(_, _, s)| f(s))
                    .collect(),
            )
        };
        let rate = |p| of(p, |s| s.rate);
        let re = |p| of(p, |s| s.retransmits as f64);
        errors += samples
            .iter()
            .filter(|(_, l, _)| *l == load)
            .map(|(_, _, s)| s.errors)
            .sum::<u64>();
        println!(
            "{:<44} {:>9.2} {:>12.2} {:>9.2} {:>11.2} {:>9.2} {:>9.2} {:>14.2}   {:>7}/{:>6}/{:>6}",
            load.name(),
            rate(Path::Routing),
            rate(Path::RoutingUnderXdp),
            rate(Path::Xdp),
            rate(Path::Haproxy),
            rate(Path::Xdp) / rate(Path::Routing),
            rate(Path::Xdp) / rate(Path::Haproxy),
            rate(Path::Xdp) / rate(Path::RoutingUnderXdp),
            re(Path::Routing),
            re(Path::Xdp),
            re(Path::Haproxy),
        );
    }
    println!(
        "errors (wrk socket errors and non-2xx, all paths and rounds): {errors}; health changes to \
         down during the xdp runs: {ejections}; frames dropped after an XDP redirect: {redirect_drops}"
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(dir());
}

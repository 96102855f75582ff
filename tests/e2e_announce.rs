//! End to end, VIP announcement through BIRD 2 (Debian's `bird2`): the balancer's namespace runs
//! the real `understudy` and a BIRD that includes the daemon's file and peers over eBGP with a
//! router namespace, whose BIRD installs what it learns in its kernel table. The router's routes
//! are what the test reads: a VIP is announced once its first checks pass, withdrawn when all its
//! backends die (`when_available`) and announced again when one returns; `always` and `never`
//! do what they say; `understudy node drain` withdraws everything while an established stream
//! carries on, and `enable` announces again; a BIRD that dies is reported in the log, `/status`
//! and `/metrics`; SIGTERM withdraws before the daemon detaches.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use understudy_testbed::{
    BIRD_TEST_TIMERS, Bird, Daemon, EchoServer, Netns, Topology, admin, bird_routes, cli,
    require_root,
};

const BINARY: &str = env!("CARGO_BIN_EXE_understudy");

/// Waits until the router's BIRD-learned routes satisfy `want`.
fn wait_routes(router: &Netns, what: &str, secs: u64, want: impl Fn(&str) -> bool, log: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let routes = bird_routes(router);
        if want(&routes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s; the router has:\n{routes}\ndaemon:\n{}",
            log.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has(routes: &str, vip: &str) -> bool {
    routes
        .lines()
        .any(|l| l.starts_with(&format!("{vip} ")) && l.contains("via 10.0.200.1"))
}

#[test]
fn vips_are_announced_withdrawn_and_drained_through_bird() {
    require_root("the BGP announcement test");
    let topo = Topology::build(2);
    let router = Netns::new("router");
    topo.lb.veth_to("lb-rt", &router, "eth0");
    topo.lb
        .ip(&["addr", "add", "10.0.200.1/24", "dev", "lb-rt"]);
    topo.lb.ip(&["link", "set", "lb-rt", "up"]);
    router.ip(&["addr", "add", "10.0.200.2/24", "dev", "eth0"]);
    router.ip(&["link", "set", "eth0", "up"]);
    router.ip(&["link", "set", "lo", "up"]);

    let dir = std::env::temp_dir().join(format!("announce-{}", topo.lb.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let include = dir.join("vips.conf");
    // BIRD refuses to start on a missing include; the README says to create it empty.
    std::fs::write(&include, "").unwrap();
    let _router_bird = Bird::start(
        &router,
        &dir,
        "router",
        &format!(
            "router id 10.0.200.2;\nprotocol device {{}}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\
             protocol bgp lb1 {{ local 10.0.200.2 as 65000; neighbor 10.0.200.1 as 65001; {BIRD_TEST_TIMERS}\n\
             ipv4 {{ import all; export none; }}; }}\n"
        ),
    );
    let mut lb_bird = Bird::start(
        &topo.lb,
        &dir,
        "lb",
        &format!(
            "router id 10.0.200.1;\nprotocol device {{}}\ninclude \"{}\";\n\
             protocol bgp upstream {{ local 10.0.200.1 as 65001; neighbor 10.0.200.2 as 65000; {BIRD_TEST_TIMERS}\n\
             ipv4 {{ import none; export where proto ~ \"understudy*\"; }}; }}\n",
            include.display()
        ),
    );

    let mut servers: Vec<EchoServer> = topo
        .backends
        .iter()
        .map(|be| EchoServer::start(be, "[::]:80".parse().unwrap()))
        .collect();
    let health = "health = { kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 1 }";
    let config = format!(
        "{}\n[announce]\ninclude = \"{}\"\nsocket = \"{}\"\ngrace = \"3s\"\nspeaker_check = \"300ms\"\n\
         \n[[service]]\nname = \"web\"\nvip = \"10.0.0.10:80\"\n{health}\n\
         backend = [{{ address = \"10.0.11.2:80\" }}, {{ address = \"10.0.12.2:80\" }}]\n\
         \n[[service]]\nname = \"ops\"\nvip = \"10.0.0.11:80\"\nannounce = \"always\"\n{health}\n\
         backend = [{{ address = \"10.0.11.2:81\" }}]\n\
         \n[[service]]\nname = \"hidden\"\nvip = \"10.0.0.12:80\"\nannounce = \"never\"\n{health}\n\
         backend = [{{ address = \"10.0.11.2:82\" }}]\n",
        topo.dataplane_toml(),
        include.display(),
        lb_bird.socket.display()
    );
    let config_path = dir.join("understudy.toml");
    std::fs::write(&config_path, config).unwrap();
    let daemon = Daemon::start(&topo.lb, BINARY.as_ref(), &config_path);

    // Announced once the first checks ran: "web" (healthy), "ops" (always, though its one
    // backend is down); never "hidden".
    wait_routes(
        &router,
        "web and ops announced",
        30,
        |r| has(r, "10.0.0.10") && has(r, "10.0.0.11"),
        &daemon,
    );
    assert!(
        !has(&bird_routes(&router), "10.0.0.12"),
        "announce = \"never\" was announced"
    );

    // Every backend of "web" dies: withdrawn, while "ops" stays; one returns: announced again.
    for s in servers.drain(..) {
        s.kill();
    }
    wait_routes(
        &router,
        "web withdrawn with all its backends down",
        15,
        |r| !has(r, "10.0.0.10") && has(r, "10.0.0.11"),
        &daemon,
    );
    servers.push(EchoServer::start(
        &topo.backends[1],
        "[::]:80".parse().unwrap(),
    ));
    wait_routes(
        &router,
        "web announced again once a backend returned",
        15,
        |r| has(r, "10.0.0.10"),
        &daemon,
    );

    // Node drain: everything withdrawn; a stream opened before it carries on.
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let mut stream = topo.client.enter(|| {
        let s =
            std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    });
    let (ok, out, err) = cli(BINARY, &topo.lb, &["node", "drain"]);
    assert!(ok, "understudy node drain: {out}{err}");
    wait_routes(
        &router,
        "everything withdrawn on node drain",
        15,
        |r| !has(r, "10.0.0.10") && !has(r, "10.0.0.11"),
        &daemon,
    );
    let mut back = [0u8; 5];
    stream.write_all(b"still").unwrap();
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still", "the established stream stopped on drain");
    let (_, status) = admin(&topo.lb, None, "GET", "/status");
    assert!(status.contains("\"state\": \"drained\""), "{status}");
    let (ok, out, err) = cli(BINARY, &topo.lb, &["node", "enable"]);
    assert!(ok, "understudy node enable: {out}{err}");
    wait_routes(
        &router,
        "announced again on node enable",
        15,
        |r| has(r, "10.0.0.10") && has(r, "10.0.0.11"),
        &daemon,
    );

    // BIRD dies: said loudly; it comes back: told again.
    lb_bird.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.output().contains("BIRD is not answering") {
        assert!(
            Instant::now() < deadline,
            "a dead BIRD went unreported:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, status) = admin(&topo.lb, None, "GET", "/status");
    assert!(status.contains("\"speaker_up\": false"), "{status}");
    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("understudy_bird_up") && l.ends_with(" 0")),
        "{metrics}"
    );
    lb_bird.spawn(&topo.lb);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.output().contains("BIRD answers again") {
        assert!(
            Instant::now() < deadline,
            "BIRD's return went unnoticed:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_routes(
        &router,
        "announced again after BIRD restarted",
        30,
        |r| has(r, "10.0.0.10"),
        &daemon,
    );

    // SIGTERM: withdrawn while the daemon still serves its grace time.
    let pid = daemon.pid();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_routes(
        &router,
        "withdrawn on SIGTERM",
        10,
        |r| !has(r, "10.0.0.10") && !has(r, "10.0.0.11"),
        &daemon,
    );
    let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        state
            .lines()
            .any(|l| l.starts_with("State:") && !l.contains("zombie")),
        "the daemon exited before its grace time: the routes went with it, not before it"
    );
    assert!(daemon.stop(), "the daemon did not stop cleanly");
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The BIRD references in `config/bird/` parse (`bird -p`), the node's with the include file
/// the daemon writes for an IPv4 and an IPv6 VIP.
#[test]
fn the_bird_references_parse() {
    let dir = std::env::temp_dir().join(format!("bird-refs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vips = ["203.0.113.10", "2001:db8::10"]
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let include = dir.join("vips.conf");
    std::fs::write(&include, understudy::announce::file::render(&vips)).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/bird");
    let node = std::fs::read_to_string(root.join("node.conf"))
        .unwrap()
        .replace(
            "/run/understudy/bird-vips.conf",
            &include.display().to_string(),
        );
    std::fs::write(dir.join("node.conf"), node).unwrap();
    // And what `understudy bird-config` generates from a daemon config's [announce].
    let daemon_config = dir.join("understudy.toml");
    std::fs::write(
        &daemon_config,
        format!(
            "[dataplane]\ninterfaces = [\"lo\"]\n[announce]\ninclude = \"{}\"\n",
            include.display()
        ),
    )
    .unwrap();
    let generated = std::process::Command::new(BINARY)
        .arg("bird-config")
        .arg(&daemon_config)
        .args(["--router-id", "192.0.2.11", "--local-as", "65001"])
        .args(["--neighbor", "192.0.2.1", "--neighbor-as", "65000"])
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let text = String::from_utf8(generated.stdout).unwrap();
    assert!(
        text.contains(&include.display().to_string()) && text.contains("bfd on;"),
        "{text}"
    );
    std::fs::write(dir.join("generated.conf"), text).unwrap();
    for conf in [
        dir.join("node.conf"),
        dir.join("generated.conf"),
        root.join("router.conf"),
    ] {
        let out = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("run bird (Debian package bird2; cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "{} does not parse: {}",
            conf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! End to end under heavy load, as the users who found the false ejections ran it: NAT mode, two
//! HTTP backends, TCP checks and the default passive detection, and wrk in close mode
//! (`Connection: close`, client `tcp_tw_reuse=1`, ports 1024-65000) at the highest rate the
//! machine gives, for 20 s, on flow tables small enough to evict during the run. Nothing a
//! healthy backend does under load may eject it, and no client may see an error.

use std::time::Duration;

use understudy::status::Snapshot;
use understudy_testbed::{Daemon, Topology, require_root};
use understudy_testbed::{HttpBackend, admin};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

#[test]
fn close_mode_load_ejects_no_healthy_backend_and_loses_no_request() {
    require_root("the close-mode load test");
    let topo = Topology::build(2);
    let _backends: Vec<HttpBackend> = HttpBackend::on_every_backend(&topo);
    for (key, value) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "1024 65000"),
    ] {
        let ok = topo
            .client
            .command("sysctl")
            .args(["-qw", &format!("{key}={value}")])
            .status()
            .expect("sysctl")
            .success();
        assert!(ok, "sysctl {key}");
    }
    // 16,384 entries: 8,192 per CPU here, filled within seconds at this rate.
    let config = topo.echo_config(
        "",
        "table_size = 1021\nhealth = { kind = \"tcp\", interval = \"1s\", timeout = \"500ms\" }",
        &[(1, ""), (2, "")],
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[dataplane]\n", "[dataplane]\nmax_flows = 16384\n");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    std::thread::sleep(Duration::from_millis(1500));

    let out = topo
        .client
        .command("wrk")
        .args([
            "-t2",
            "-c50",
            "-d20s",
            "-H",
            "Connection: close",
            "http://10.0.0.10/",
        ])
        .output()
        .expect("run wrk (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let wrk = understudy_testbed::wrk::parse(&text);
    eprintln!("wrk: {wrk:?}\n{text}");
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(wrk.requests > 10_000, "the load ran: {text}");

    let (_, body) = admin(&topo.lb, None, "GET", "/status");
    let status: Snapshot = serde_json::from_str(&body).unwrap();
    let counter = |name: &str| status.datapath.get(name).copied().unwrap_or(0);
    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    let tracked = metrics
        .lines()
        .find_map(|l| l.strip_prefix("understudy_flows_tracked "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!(
        "flows tracked {tracked} of {}; events {}; established misses {}; replies {}",
        status.flows_capacity,
        counter("event_sent"),
        counter("flow_miss_established"),
        counter("reply_translated")
    );
    let output = daemon.output();
    assert!(
        tracked >= f64::from(status.flows_capacity) / 2.0,
        "the flow tables filled and evicted during the run: {tracked} tracked"
    );
    assert_eq!(
        counter("event_sent"),
        0,
        "no passive event against a healthy backend:\n{output}"
    );
    assert!(
        !output.contains("backend down"),
        "a healthy backend was ejected:\n{output}"
    );
    assert!(
        status.services[0].backends.iter().all(|b| b.healthy),
        "both backends healthy at the end"
    );
    assert_eq!(
        (wrk.socket_errors, wrk.non_2xx),
        (0, 0),
        "no client error: {text}"
    );
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
}

//! `cargo xtask run`: the demo. It builds a client, the balancer and three backends in network
//! namespaces, serves a page naming each backend (Python's http.server), starts `understudy` in
//! the balancer namespace with `config/demo.toml`, and shows the client's requests to the VIP
//! answered by different backends, in NAT, in DSR and through GUE tunnels (each backend running
//! `understudy decap`), then one backend dying and coming back. It runs until Ctrl-C
//! (or once, with `--once`), and removes everything it made on every exit path: the daemon is the
//! test harness's `Daemon` (ready on its sd_notify, stopped with SIGTERM on drop), guards kill the
//! web servers, and the namespaces delete themselves.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use understudy_testbed::{Netns, Topology, VIP_V4, VIP_V6, backend_v4, backend_v6, scaled};

use crate::util::root;

#[derive(Args)]
pub struct Options {
    /// Show the traffic once and exit instead of waiting for Ctrl-C (used by `xtask test`).
    #[arg(long)]
    pub once: bool,
    /// Run the demo inside a QEMU guest booted with this Debian kernel (`6.1`, or `backports`
    /// for Debian 12 backports' newest), on this host's files: see `cargo xtask vm`.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Set by `--kernel` for the run inside the guest: use the binary the host built.
    #[arg(long, hide = true)]
    pub in_guest: bool,
}

/// Kills a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first so the daemon detaches XDP cleanly; the namespace goes anyway.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!("the demo creates network namespaces and attaches XDP, so it needs root");
    }
    if let Some(kernel) = &o.kernel {
        crate::build::run(&crate::build::Options { release: true })?;
        let kernel = crate::vm::Kernel::get(kernel)?;
        let me = std::env::current_exe()?;
        let once = if o.once { " --once" } else { "" };
        println!(
            "demo: booting Debian's {} under QEMU; the demo runs inside{}",
            kernel.release,
            if o.once {
                ""
            } else {
                " until Ctrl-C (Ctrl-A X leaves QEMU at once)"
            }
        );
        return kernel.run(
            &format!("{} run --in-guest{once}", me.display()),
            &root(),
            Duration::from_secs(4 * 3600),
        );
    }
    // Block SIGINT/SIGTERM in every thread, so Ctrl-C arrives at `sigwait` below and the guards
    // get to clean up, instead of killing this process outright.
    let signals = block_signals();
    Netns::remove_stale();
    // Release: the demo shows real failover latencies, not an unoptimized build's. In a guest,
    // the host built it.
    let binary = if o.in_guest {
        crate::util::target_dir().join("release/understudy")
    } else {
        crate::build::run(&crate::build::Options { release: true })?
    };
    let config = root().join("config/demo.toml");

    println!("demo: building namespaces: client, balancer, 3 backends");
    let topo = Topology::build(3);
    let site = TempDir::new()?;
    let mut web_servers = Vec::new();
    for (i, be) in topo.backends.iter().enumerate() {
        let dir = site.0.join(format!("be{}", i + 1));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("index.html"),
            format!(
                "Hello from backend-{} ({}, {})\n",
                i + 1,
                backend_v4(i + 1),
                backend_v6(i + 1)
            ),
        )?;
        web_servers.push(Some(web_server(be, &dir)?));
    }
    // The DSR and tunnel services' backends hold their VIPs and answer the client directly.
    topo.add_return_paths(&[DSR_VIP.into(), TUNNEL_VIP.into()]);
    let decaps: Vec<Decap> = topo
        .backends
        .iter()
        .map(|be| Decap::start(be, &binary))
        .collect::<anyhow::Result<_>>()?;
    // The HTTP service listens on the VIP itself: make it an address of the balancer.
    topo.lb
        .ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"]);

    println!(
        "demo: starting {} run --config {}",
        binary.display(),
        config.display()
    );
    // nsenter --net, not ip netns exec: the daemon must see the host's /sys/fs/bpf to pin. It
    // says it is ready as it would to systemd: READY=1 on a socket the demo owns.
    let daemon = understudy_testbed::Daemon::launch(
        &topo.lb,
        &binary,
        &config,
        understudy_testbed::Launch {
            relay: true,
            graceful: true,
            pins: Some(std::path::PathBuf::from("/sys/fs/bpf/understudy/demo")),
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    wait_for_http(&topo)?;
    wait_for_all_backends(&topo, &binary)?;

    for (label, url) in [
        ("IPv4", format!("http://{VIP_V4}/")),
        ("IPv6", format!("http://[{VIP_V6}]/")),
    ] {
        println!("\ndemo: 6 requests from the client to {url} ({label}):");
        spread(&topo.client, label, &url)?;
    }

    for (label, url) in [
        ("DSR", format!("http://{DSR_VIP}:8080/")),
        ("GUE tunnel", format!("http://{TUNNEL_VIP}:8080/")),
    ] {
        println!(
            "\ndemo: 6 requests to {url} ({label}: the answers come straight from the backends):"
        );
        spread(&topo.client, label, &url)?;
    }

    let api = format!("http://{VIP_V4}:8000/");
    println!("\ndemo: 6 requests to the HTTP service {api} (the daemon's proxy):");
    show_attempts(&topo.client, &api)?;

    println!("\ndemo: stopping backend-1's web server, as if it crashed");
    drop(web_servers[0].take());
    println!(
        "demo: at once, before any check noticed, 6 requests to {api}: a request that tries \
         backend-1 first is retried on the next backend, and every one is answered:"
    );
    show_attempts(&topo.client, &api)?;
    // 20 in a row: with 3 backends, (2/3)^20 makes a false "moved" negligible.
    let moved = wait_until(&topo.client, scaled(Duration::from_secs(15)), 20, |a| {
        !a.contains("backend-1")
    })?;
    println!(
        "demo: after {moved:.1?} it was out of service (the kernel saw refused connections, or \
         3 checks failed) and traffic moved:"
    );
    show(&topo.client, &format!("http://{VIP_V4}/"))?;
    println!("\ndemo: starting it again");
    web_servers[0] = Some(web_server(&topo.backends[0], &site.0.join("be1"))?);
    let back = wait_until(&topo.client, scaled(Duration::from_secs(15)), 1, |a| {
        a.contains("backend-1")
    })?;
    println!("demo: after {back:.1?} it passed its checks again (rise 2 x 1 s) and takes traffic:");
    show(&topo.client, &format!("http://{VIP_V4}/"))?;

    println!("\ndemo: `understudy status`, through the admin listener:");
    let status = topo
        .lb
        .command_net_only(binary.to_str().context("binary path")?)
        .arg("status")
        .output()
        .context("running understudy status")?;
    print!("{}", String::from_utf8_lossy(&status.stdout));
    if !status.status.success() {
        bail!(
            "understudy status failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }

    println!(
        "\ndemo: running. Try it yourself in another terminal:\n  \
         ip netns exec {} curl http://{VIP_V4}/\n  \
         ip netns exec {} curl 'http://[{VIP_V6}]/'\n  \
         ip netns exec {} curl -i http://{VIP_V4}:8000/\n  \
         nsenter --net=/var/run/netns/{} {} status",
        topo.client.name(),
        topo.client.name(),
        topo.client.name(),
        topo.lb.name(),
        binary.display()
    );
    if o.once {
        println!("demo: --once given, cleaning up");
    } else {
        // In a guest this console is the only terminal, and the guest powers off after.
        println!(
            "{}",
            if o.in_guest {
                "demo: inside the guest the only terminal is this one; press Ctrl-C to stop, \
                 clean up and power the guest off"
            } else {
                "demo: press Ctrl-C to stop and remove everything"
            }
        );
        wait_for(&signals);
        println!("\ndemo: stopping and cleaning up");
    }
    drop(daemon);
    drop(decaps);
    drop(web_servers);
    drop(topo);
    drop(site);
    Ok(())
}

const DSR_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 20);
const TUNNEL_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 30);

/// `understudy decap` on a backend's eth0 for the tunnel VIP; stopped and removed on drop.
struct Decap {
    process: Option<Guard>,
    ns: String,
    binary: std::path::PathBuf,
    pins: std::path::PathBuf,
}

impl Decap {
    fn start(be: &Netns, binary: &std::path::Path) -> anyhow::Result<Decap> {
        let pins =
            std::path::PathBuf::from(format!("/sys/fs/bpf/understudy/demo-decap-{}", be.name()));
        let mut command = be.command_net_only(binary.to_str().context("binary path")?);
        understudy_testbed::unblock_stop_signals(&mut command);
        let child = command
            .args([
                "decap",
                "--interface",
                "eth0",
                "--vip",
                &TUNNEL_VIP.to_string(),
                "--pin-root",
            ])
            .arg(&pins)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting understudy decap")?;
        let decap = Decap {
            process: Some(Guard(child)),
            ns: be.name().to_string(),
            binary: binary.to_path_buf(),
            pins: pins.clone(),
        };
        for _ in 0..200 {
            if pins.join("eth0/link").exists() {
                return Ok(decap);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "understudy decap did not attach to {}'s eth0 within 10 s",
            be.name()
        )
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        drop(self.process.take());
        let _ = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(&self.binary)
            .args(["decap", "--interface", "eth0", "--stop", "--pin-root"])
            .arg(&self.pins)
            .stdout(Stdio::null())
            .status();
    }
}

/// Six requests to the HTTP service, each with the number of attempts it took.
fn show_attempts(client: &Netns, url: &str) -> anyhow::Result<()> {
    for _ in 0..6 {
        let out = curl_with(
            client,
            &["-w", " (attempts: %header{x-understudy-attempts})"],
            url,
        )?;
        let text = out.replace('\n', "");
        if !text.starts_with("Hello from backend-") {
            bail!("the HTTP service answered {text:?}");
        }
        println!("  {text}");
    }
    Ok(())
}

/// A backend's web server: Python's http.server on port 8080, serving `dir`.
fn web_server(ns: &Netns, dir: &std::path::Path) -> anyhow::Result<Guard> {
    let mut command = ns.command("python3");
    understudy_testbed::unblock_stop_signals(&mut command);
    let child = command
        .args(["-m", "http.server", "8080", "--bind", "::", "--directory"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3 -m http.server")?;
    Ok(Guard(child))
}

/// Prints the answers to 6 requests, which must come from more than one backend. Six land on
/// one of three backends by chance once in 243 runs, so up to 12 more are made before that
/// counts as a failure (once in 43 million).
fn spread(client: &Netns, label: &str, url: &str) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..18 {
        if i >= 6 && seen.len() >= 2 {
            break;
        }
        let answer = curl(client, url)?;
        println!("  {}", answer.trim());
        seen.insert(answer);
    }
    if seen.len() < 2 {
        bail!("every {label} request reached the same backend; the balancer is not spreading");
    }
    Ok(())
}

/// Prints the answers to 6 requests.
fn show(client: &Netns, url: &str) -> anyhow::Result<()> {
    for _ in 0..6 {
        println!("  {}", curl(client, url)?.trim());
    }
    Ok(())
}

/// Waits until `streak` answers in a row satisfy `ok`; returns how long that took.
fn wait_until(
    client: &Netns,
    limit: Duration,
    streak: usize,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let url = format!("http://{VIP_V4}/");
    let mut run = 0;
    while started.elapsed() < limit {
        match curl(client, &url) {
            Ok(answer) if ok(&answer) => run += 1,
            _ => run = 0,
        }
        if run == streak {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the balancer did not react within {limit:?}")
}

fn curl(client: &Netns, url: &str) -> anyhow::Result<String> {
    curl_with(client, &[], url)
}

/// `curl -sS --max-time 3 EXTRA URL` from `client`; its output, or its error.
fn curl_with(client: &Netns, extra: &[&str], url: &str) -> anyhow::Result<String> {
    let out = client
        .command("curl")
        .args(["-sS", "--max-time", "3"])
        .args(extra)
        .arg(url)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The backends' HTTP servers take a moment to bind; wait until the VIP answers.
fn wait_for_http(topo: &Topology) -> anyhow::Result<()> {
    let limit = scaled(Duration::from_secs(10));
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if curl(&topo.client, &format!("http://{VIP_V4}/")).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the VIP did not answer HTTP within {limit:?}")
}

/// Until every backend of every service is healthy and in its table (`understudy status`), so
/// the first requests already see all three: the VIP answers as soon as one backend is up.
fn wait_for_all_backends(topo: &Topology, binary: &std::path::Path) -> anyhow::Result<()> {
    let mut last = String::new();
    let limit = scaled(Duration::from_secs(15));
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let out = topo
            .lb
            .command_net_only(binary.to_str().context("binary path")?)
            .args(["status", "--json"])
            .output()
            .context("running understudy status --json")?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let compact: String = last.chars().filter(|c| !c.is_whitespace()).collect();
        if out.status.success()
            && compact.contains("\"healthy\":true")
            && !compact.contains("\"healthy\":false")
            && !compact.contains("\"active\":false")
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("not every backend came up within {limit:?}; the last status:\n{last}")
}

/// The backends' web roots, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("understudy-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) {
    let mut sig = 0;
    unsafe { libc::sigwait(set, &mut sig) };
}

//! The `understudy` command line: `run` the balancer, `check` a config without touching the
//! kernel, and `status`, `drain` and `enable` through a running daemon's admin listener.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use understudy::{
    admin::client::{drain_query, request},
    config::{Config, DEFAULT_ADMIN_LISTEN},
    status::Snapshot,
};

/// mimalloc: the proxy allocates per request (headers, bodies, tasks); glibc's malloc showed as
/// about 5% of the daemon's CPU under `cargo xtask bench l7`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "understudy", version, about = "eBPF failover load balancer")]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, fill its maps from the config, and balance until SIGINT/SIGTERM.
    Run {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Runtime worker threads (the HTTP proxy, health checks and the admin API); 1 runs
        /// everything on one event loop.
        #[arg(long, env = "UNDERSTUDY_WORKERS", default_value_t = 2)]
        workers: usize,
    },
    /// Validate a config and exit: 0 if valid, 2 with the reason if not. Touches no kernel state.
    Check {
        /// The TOML config.
        file: PathBuf,
    },
    /// Show services, tiers, backends and their health from a running daemon.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the JSON the admin API returns instead of tables.
        #[arg(long)]
        json: bool,
        /// Redraw the table in place every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
        /// With --watch: stop after this many redraws (for scripts and tests).
        #[arg(long, requires = "watch", hide = true)]
        count: Option<u64>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to standard output.
    Man,
    /// On a backend of a tunnel service: strip IPIP and GUE addressed to this host and deliver
    /// the inner packets (to the VIPs, bound on a loopback or dummy address) to the local stack.
    /// Stays attached, pinned, after the process exits; `--stop` removes it.
    Decap {
        /// The interface the tunnel traffic arrives on.
        #[arg(long, short)]
        interface: String,
        /// A VIP this backend serves (repeat for several): inner packets to anything else are
        /// dropped and counted.
        #[arg(long = "vip", value_name = "IP")]
        vips: Vec<std::net::IpAddr>,
        /// An outer destination to strip (repeat); by default the interface's own addresses.
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<std::net::IpAddr>,
        /// The GUE port the balancer sends to (its `[service.tunnel] port`); 0 strips IPIP only.
        #[arg(long, default_value_t = lb_common::forwarding::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// Attach in generic (skb) mode rather than trying the driver's first.
        #[arg(long)]
        generic: bool,
        /// Where the link and maps are pinned, one directory per interface.
        #[arg(long, default_value = understudy::decap::DEFAULT_PIN_ROOT)]
        pin_root: PathBuf,
        /// Remove the decapsulator from the interface instead.
        #[arg(long)]
        stop: bool,
    },
    /// Stop new flows to a backend; its established flows finish.
    Drain {
        service: String,
        /// The backend as "IP:port", as in the config.
        backend: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an instance's pinned maps and links (detaching its XDP program): what a daemon
    /// killed with SIGKILL leaves behind for its successor to adopt.
    Clean {
        /// The instance, as `[dataplane] instance` names it.
        #[arg(long, default_value = "default")]
        instance: String,
    },
    /// Make the running daemon re-read its config file and apply the difference.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Where a new flow from CLIENT ("IP:port", the client's address and source port) to the
    /// service goes, and why: the table entry, its owner, the backends passed over, and the
    /// backend `FLOWS` pins the flow to, if it does. With `--config`, offline from a config,
    /// every backend taken as healthy.
    Explain {
        service: String,
        client: std::net::SocketAddr,
        /// Plan this config instead of asking the running daemon.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let a drained backend take new flows again.
    Enable {
        service: String,
        backend: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print this node's BIRD 2 config for announcing the VIPs of CONFIG (its [announce] include),
    /// with a BGP session to the router and BFD.
    BirdConfig {
        config: PathBuf,
        #[arg(long)]
        router_id: std::net::IpAddr,
        #[arg(long)]
        local_as: u32,
        /// The router's address.
        #[arg(long)]
        neighbor: std::net::IpAddr,
        #[arg(long)]
        neighbor_as: u32,
        /// Leave BFD off (the hold time alone then notices a dead node).
        #[arg(long)]
        no_bfd: bool,
    },
    /// The whole node, with `[announce]`: `drain` withdraws every VIP from BIRD (established
    /// flows keep being served, routers send new ones to the other nodes); `enable` announces
    /// again.
    Node {
        #[arg(value_enum)]
        action: NodeAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NodeAction {
    Drain,
    Enable,
}

#[derive(Args)]
struct AdminArgs {
    /// The daemon's admin listener.
    #[arg(long, default_value = DEFAULT_ADMIN_LISTEN)]
    admin: SocketAddr,
    /// A file holding the bearer token, when the daemon requires one.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn token(&self) -> anyhow::Result<Option<String>> {
        self.token_file
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
            })
            .transpose()
    }
}

/// Runs one admin request; `Ok(body)` on 2xx.
fn admin_call(admin: &AdminArgs, method: &str, path: &str) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = admin.token()?;
    let (status, body) = rt.block_on(request(admin.admin, token.as_deref(), method, path))?;
    if status.is_success() {
        Ok(body)
    } else {
        anyhow::bail!("{status}: {}", body.trim())
    }
}

/// `understudy status --watch`: the table redrawn in place (cursor home, clear) every `every`
/// seconds, `count` times or until interrupted. A failed request is shown and retried: a
/// restarting daemon does not end the watch.
fn watch_status(admin: &AdminArgs, every: f64, count: Option<u64>) -> anyhow::Result<()> {
    if !(every.is_finite() && every > 0.0) {
        anyhow::bail!("--watch takes a positive number of seconds");
    }
    let mut drawn = 0u64;
    while count.is_none_or(|c| drawn < c) {
        print!("\x1b[H\x1b[2J");
        match admin_call(admin, "GET", "/status")
            .and_then(|body| Ok(serde_json::from_str::<Snapshot>(&body)?))
        {
            Ok(s) => print_status(&s),
            Err(e) => println!("error: {e:#}"),
        }
        println!("\n(every {every} s; Ctrl-C to stop)");
        drawn += 1;
        if count.is_none_or(|c| drawn < c) {
            std::thread::sleep(std::time::Duration::from_secs_f64(every));
        }
    }
    Ok(())
}

/// `understudy explain`: from the running daemon, or offline from a config.
fn explain(
    service: &str,
    client: std::net::SocketAddr,
    config: Option<&std::path::Path>,
    admin: &AdminArgs,
) -> anyhow::Result<()> {
    let e = match config {
        Some(file) => {
            let config = Config::load(file)?;
            understudy::explain::offline(&config, service, client)?
        }
        None => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("service", service)
                .append_pair("client", &client.to_string())
                .finish();
            serde_json::from_str(&admin_call(admin, "GET", &format!("/explain?{query}"))?)?
        }
    };
    let e: understudy::explain::Explanation = e;
    for line in e.lines() {
        // Offline there is no FLOWS to read.
        if config.is_none() || !line.starts_with("not tracked") {
            println!("{line}");
        }
    }
    if config.is_some() {
        println!("(offline: every backend taken as healthy)");
    }
    Ok(())
}

/// Prints rows as left-aligned columns.
fn table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn print_status(s: &Snapshot) {
    let mut rows = vec![
        [
            "SERVICE",
            "VIP",
            "STATE",
            "TIER",
            "BACKEND",
            "HEALTH",
            "ACTIVE",
            "NEW FLOWS",
            "LAST CHANGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for svc in &s.services {
        for (i, b) in svc.backends.iter().enumerate() {
            let first = i == 0;
            let health = match (b.healthy, b.draining) {
                (_, true) => "draining".to_string(),
                (true, false) => match b.slow_start_percent {
                    Some(p) => format!("up (slow start {p}%)"),
                    None => "up".to_string(),
                },
                (false, false) if b.waiting_for_first_check => format!(
                    "waiting for first check: {}",
                    b.last_check.as_deref().unwrap_or("no check yet")
                ),
                (false, false) => "down".to_string(),
            };
            rows.push(vec![
                if first {
                    svc.name.clone()
                } else {
                    String::new()
                },
                if first {
                    // NAT is the default and goes unsaid; the other modes are named.
                    match svc.forwarding.as_deref() {
                        _ if svc.protocol == understudy::status::ServedProtocol::Pool => {
                            "pool".to_string()
                        }
                        Some(mode) if mode != "nat" => {
                            format!("{}/{} {mode}", svc.vip, svc.protocol)
                        }
                        _ => format!("{}/{}", svc.vip, svc.protocol),
                    }
                } else {
                    String::new()
                },
                if first {
                    svc.state.to_string()
                } else {
                    String::new()
                },
                b.tier.to_string(),
                b.address.clone(),
                health.to_string(),
                if b.active { "yes" } else { "no" }.to_string(),
                // The proxy's requests are in /metrics; XDP counts no flows for it.
                if matches!(
                    svc.protocol,
                    understudy::status::ServedProtocol::Http
                        | understudy::status::ServedProtocol::Pool
                ) {
                    "-".to_string()
                } else {
                    b.traffic.new_flows.to_string()
                },
                b.last_change.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    table(&rows);
    for svc in s.services.iter().filter(|svc| !svc.routes.is_empty()) {
        println!("\n{} routes:", svc.name);
        let mut rows = vec![vec![
            "ROUTE".to_string(),
            "MATCHES".into(),
            "POOLS".into(),
            "SERVING".into(),
            "AUTH".into(),
            "LIMIT".into(),
            "REQUESTS".into(),
            "5XX".into(),
            "REFUSED".into(),
        ]];
        for r in &svc.routes {
            rows.push(vec![
                r.name.clone(),
                r.matches.clone(),
                r.pools.join(" > "),
                match &r.reason {
                    Some(why) => format!("{} ({why})", r.serving),
                    None => r.serving.clone(),
                },
                r.auth.clone(),
                r.rate_limit.clone().unwrap_or_else(|| "-".into()),
                r.requests.to_string(),
                r.server_errors.to_string(),
                r.refused.to_string(),
            ]);
        }
        table(&rows);
    }
    let l = &s.decision_to_visible;
    println!(
        "\n{} health changes; decision to visible p50 {} us, p99 {} us",
        s.changes, l.p50_us, l.p99_us
    );
    for (interface, n) in s.redirect_drops.iter().filter(|(_, n)| **n > 0) {
        println!(
            "{n} frames redirected into {interface} were dropped by the kernel (the daemon's log says why)"
        );
    }
    for svc in s.services.iter().filter(|svc| !svc.refused.is_empty()) {
        let reasons: Vec<String> = svc
            .refused
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        println!("{}: refused {}", svc.name, reasons.join(", "));
    }
    let f = &s.flood;
    if !f.cpus.is_empty() {
        println!(
            "SYN-flood mode on CPUs {:?} (over {} SYNs/s per CPU): new SYN flows are not written to the flow table",
            f.cpus, f.threshold
        );
    } else if f.entered > 0 {
        println!(
            "SYN-flood mode: entered {} times, left {}; {} SYN flows left unwritten",
            f.entered, f.left, f.unwritten
        );
    }
    let n = &s.node;
    if n.enabled {
        let vips: Vec<String> = n.announced.iter().map(ToString::to_string).collect();
        let speaker = match n.speaker_up {
            Some(true) => "BIRD up",
            Some(false) => "BIRD NOT ANSWERING",
            None => "BIRD not checked yet",
        };
        println!(
            "node: {}, announcing [{}], {speaker}{}",
            n.state,
            vips.join(", "),
            n.error
                .as_ref()
                .map(|e| format!("; last update failed: {e}"))
                .unwrap_or_default()
        );
    }
}

/// `understudy bird-config`: the node's BIRD config for CONFIG's `[announce]`.
fn bird_config(
    file: &std::path::Path,
    session: understudy::announce::snippet::Session,
) -> anyhow::Result<()> {
    let config = Config::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(announce) = &config.announce else {
        anyhow::bail!(
            "{}: no [announce] section: add one (its defaults suit Debian's BIRD) to announce the VIPs",
            file.display()
        );
    };
    print!(
        "{}",
        understudy::announce::snippet::render(announce, &session)
    );
    Ok(())
}

/// Default log filter. aya's warnings stay visible: the one it gave at every load (the kernel
/// refusing the object's BTF over Rust type names) is gone since the build makes those names
/// valid (`btf_names.rs`), so a warning now means something.
const DEFAULT_LOG_FILTER: &str = "info,aya=warn";

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNDERSTUDY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let admin_result = match &cli.command {
        Command::Status {
            admin,
            json,
            watch: None,
            ..
        } => Some(admin_call(admin, "GET", "/status").and_then(|body| {
            if *json {
                println!("{body}");
            } else {
                print_status(&serde_json::from_str(&body)?);
            }
            Ok(())
        })),
        Command::Status {
            admin,
            watch: Some(every),
            count,
            ..
        } => Some(watch_status(admin, *every, *count)),
        Command::Decap {
            interface,
            pin_root,
            stop: true,
            ..
        } => Some(understudy::decap::stop(interface, pin_root).map(|removed| {
            if removed {
                println!("decap removed from {interface}");
            } else {
                println!("decap was not attached to {interface}");
            }
        })),
        Command::Decap {
            interface,
            vips,
            addresses,
            gue_port,
            generic,
            pin_root,
            stop: false,
        } => Some(understudy::decap::run(understudy::decap::DecapArgs {
            interface: interface.clone(),
            vips: vips.clone(),
            addresses: addresses.clone(),
            gue_port: *gue_port,
            generic: *generic,
            pin_root: pin_root.clone(),
        })),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "understudy", &mut std::io::stdout());
            Some(Ok(()))
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            Some(
                clap_mangen::Man::new(command)
                    .render(&mut std::io::stdout())
                    .map_err(Into::into),
            )
        }
        Command::Drain {
            service,
            backend,
            admin,
        }
        | Command::Enable {
            service,
            backend,
            admin,
        } => {
            let (verb, done) = if matches!(cli.command, Command::Drain { .. }) {
                ("drain", "drained")
            } else {
                ("enable", "enabled")
            };
            Some(
                admin_call(
                    admin,
                    "POST",
                    &format!("/{verb}?{}", drain_query(service, backend)),
                )
                .map(|_| println!("{service} {backend}: {done}")),
            )
        }
        Command::Clean { instance } => {
            let dir = understudy::config::pin_dir(instance);
            Some(if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map(|()| println!("removed {}", dir.display()))
                    .map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))
            } else {
                println!("nothing pinned at {}", dir.display());
                Ok(())
            })
        }
        Command::Explain {
            service,
            client,
            config,
            admin,
        } => Some(explain(service, *client, config.as_deref(), admin)),
        Command::BirdConfig {
            config,
            router_id,
            local_as,
            neighbor,
            neighbor_as,
            no_bfd,
        } => Some(bird_config(
            config,
            understudy::announce::snippet::Session {
                router_id: *router_id,
                local_as: *local_as,
                neighbor: *neighbor,
                neighbor_as: *neighbor_as,
                bfd: !no_bfd,
            },
        )),
        Command::Node { action, admin } => {
            let (path, done) = match action {
                NodeAction::Drain => ("/node/drain", "node drained: every VIP withdrawn"),
                NodeAction::Enable => ("/node/enable", "node enabled: announcing again"),
            };
            Some(admin_call(admin, "POST", path).map(|_| println!("{done}")))
        }
        Command::Reload { admin } => Some(admin_call(admin, "POST", "/reload").map(|body| {
            println!("{}", body.trim());
        })),
        _ => None,
    };
    if let Some(result) = admin_result {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (Command::Run { config: file, .. } | Command::Check { file }) = &cli.command else {
        unreachable!("admin commands returned above");
    };
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check { .. } => {
            let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
            let pools = config
                .services
                .iter()
                .filter(|s| s.mode == understudy::config::Mode::Pool)
                .count();
            let routes: usize = config
                .services
                .iter()
                .filter_map(|s| s.mode.http())
                .map(|h| h.routes.len())
                .sum();
            let extra = if pools + routes > 0 {
                format!(", {pools} pools, {routes} routes")
            } else {
                String::new()
            };
            println!(
                "{}: valid ({} services{extra}, {} backends, {} interfaces)",
                file.display(),
                config.services.len() - pools,
                backends,
                config.interfaces.len()
            );
            ExitCode::SUCCESS
        }
        Command::Status { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Explain { .. }
        | Command::Decap { .. }
        | Command::Drain { .. }
        | Command::Enable { .. }
        | Command::Reload { .. }
        | Command::Node { .. }
        | Command::BirdConfig { .. }
        | Command::Clean { .. } => {
            unreachable!("admin commands returned above")
        }
        Command::Run { workers, .. } => {
            // One worker: tokio's current-thread scheduler, which skips the work-stealing
            // machinery (as HAProxy's `nbthread 1` runs one event loop).
            let mut builder = if workers <= 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            };
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(understudy::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

//! `understudy run`: validate, check privileges, load, fill the maps, attach, then run the health
//! engine, the passive-event reader and the map writer until SIGINT or SIGTERM. SIGHUP (or the
//! admin API) reloads the config file. The maps are
//! filled before the program is attached, so the first packet already sees every service, and
//! backends that must pass a first check take no traffic until they do. Dropping the writer (and
//! with it the data plane) detaches the program.

use std::{
    os::fd::AsRawFd as _,
    sync::{Arc, RwLock, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use sd_notify::NotifyState;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use crate::{
    admin::{AdminState, ReloadError, ReloadRequest, Reloads, SharedTokens, serve},
    audit::{AuditLog, Caller, Changes, Outcome, Record},
    config::Config,
    dataplane::{Dataplane, attach, resolve},
    health::{
        Epochs, new_board,
        passive::{Router, forward_events, route_ejections},
        supervisor::Supervisor,
    },
    l7::{listeners::Listeners, metrics::L7Metrics},
    plan::{Plan, plan},
    privileges,
    writer::{Control, Writer},
};

/// How often the writer logs the data plane's counters (debug) and failover latency (info).
const STATS_INTERVAL: Duration = Duration::from_secs(60);

pub async fn run(config: Config) -> anyhow::Result<()> {
    if let Err(why) = privileges::check() {
        bail!(why);
    }
    let wanted: usize = config
        .services
        .iter()
        .filter_map(|s| s.mode.http())
        .map(|h| h.max_connections * 2)
        .sum();
    match privileges::raise_nofile() {
        Ok((soft, hard)) if (soft as usize) < wanted + 1024 => warn!(
            soft,
            hard,
            wanted,
            "the open-file limit is below what the HTTP services' max_connections need (two descriptors per client, one in, one out): raise LimitNOFILE or lower max_connections"
        ),
        Ok((soft, hard)) => info!(soft, hard, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    // Interfaces first, and what the host's routes must give DSR: a bad one is reported before
    // anything is loaded or pinned.
    resolve(&config)?;
    crate::dataplane::routes::check_on_link(&config)?;
    let pin_dir = config.pin_dir();
    let (mut dp, adopted) =
        Dataplane::load_pinned(&pin_dir, config.max_flows).with_context(|| {
            format!(
                "loading the XDP program (pinned under {})",
                pin_dir.display()
            )
        })?;
    log_flow_capacity(&dp, config.max_flows);
    let (plan, healthy) = if adopted {
        info!(dir = %pin_dir.display(), "adopting the pinned state a previous daemon left");
        adopt(&mut dp, &config)?
    } else {
        let plan = plan(&config);
        let healthy = plan
            .services
            .iter()
            .map(|s| vec![s.initially_healthy; s.members.len()])
            .collect();
        (plan, healthy)
    };
    let mut health_by_id = vec![None; plan.backends.len()];
    for (s, h) in plan.services.iter().zip(&healthy) {
        for (m, &up) in s.members.iter().zip(h) {
            health_by_id[m.id as usize] = Some(up);
        }
    }
    if let Some(logger) = dp.take_logger() {
        spawn_logger(logger)?;
    }
    let events = dp
        .take_events()
        .context("opening the passive-detection ring buffer")?;
    let epochs = Arc::new(Epochs::default());
    // The writer owns the plan (the daemon reads it through `writer.plan()` until the writer
    // moves to its thread): a copy held here was about 1 MB per service at the default table size.
    let mut writer = Writer::with_health(dp, plan, healthy).with_epochs(epochs.clone());
    // Subscribed before the maps are written, so no change between the two goes unseen.
    match crate::dataplane::next_hops::watch() {
        Ok(events) => writer = writer.with_hop_events(events),
        Err(e) => {
            warn!(error = %e, "cannot watch routes and neighbours: next hops will not be cached");
            writer
                .dataplane_mut()
                .edge
                .disable_hops()
                .context("turning the next-hop cache off")?;
        }
    }
    let started = writer
        .install()
        .context("writing the data-plane maps")
        .and_then(|()| attach(writer.dataplane_mut(), &config).map_err(Into::into));
    let attachments = match started {
        Ok(a) => a,
        Err(e) => {
            // Nothing of a fresh instance may outlive a failed start; adopted state stays for
            // the next attempt.
            if !adopted {
                writer.dataplane_mut().unpin();
            }
            return Err(e);
        }
    };
    writer.set_interfaces(attachments.iter().map(|a| a.interface.clone()).collect());
    if let Err(e) = writer.dataplane_mut().count_redirect_drops() {
        warn!(error = %e, "frames the kernel drops after a redirect will not be counted");
    }
    for a in &attachments {
        info!(interface = %a.interface, ifindex = a.ifindex, mode = a.mode, "XDP attached");
        let driver = crate::dataplane::driver::driver(&a.interface);
        if let Some(needs) = driver.as_deref().and_then(crate::dataplane::driver::needs) {
            info!(interface = %a.interface, driver = driver.as_deref().unwrap_or(""), needs, "what the interface's peer needs");
        }
    }

    // The path-following checks' interface, before the first probe. Created for every config
    // (a reload may add a DSR or tunnel service), but fatal only when a service needs it now.
    let probe_path = match crate::dataplane::probe_path::install(writer.dataplane_mut()) {
        Ok(()) => true,
        Err(e) if !crate::dataplane::probe_path::needed(&config) => {
            warn!(error = %format!("{e:#}"), "no probe interface: a DSR or tunnel service added by a reload must check its backends with via = \"direct\"");
            false
        }
        Err(e) => {
            if !adopted {
                writer.dataplane_mut().unpin();
            }
            return Err(e.context(
                "the DSR and tunnel services' health checks follow the client's path through a probe interface; set via = \"direct\" in their [service.health] to check backends' own addresses instead",
            ));
        }
    };

    let (updates, updates_rx) = mpsc::channel(4096);
    let router = Arc::new(RwLock::new(Router::default()));
    let board = new_board();
    let mut tasks = Supervisor::new(router.clone(), updates, board.clone(), epochs.clone());
    tasks.reconcile(&config, writer.plan(), &health_by_id)?;
    for (svc, planned) in config.services.iter().zip(&writer.plan().services) {
        info!(
            service = %svc.name,
            vip = %svc.vip,
            protocol = %svc.protocol,
            mode = %svc.mode,
            backends = svc.backends.len(),
            table_size = planned.base.len(),
            check = %svc.health.check,
            "service ready"
        );
    }
    tokio::spawn(forward_events(events, router.clone()));

    // HTTP services: served here, on the health view the writer publishes.
    let (ejections, ejections_rx) = mpsc::unbounded_channel();
    tokio::spawn(route_ejections(ejections_rx, router));
    let l7_metrics = L7Metrics::default();
    let mut listeners = Listeners::new(writer.availability(), ejections, l7_metrics.clone());
    match listeners.prepare(&config).await {
        Ok(prepared) => listeners.commit(prepared),
        Err(e) => {
            if !adopted {
                writer.dataplane_mut().unpin();
            }
            bail!(e);
        }
    }

    // VIP announcement through BIRD: the data plane is attached; the announcer waits for the
    // first checks before announcing anything.
    let node: crate::announce::SharedStatus = Default::default();
    let announcer = config.announce.as_ref().map(|settings| {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(crate::announce::run(
            settings.clone(),
            crate::announce::targets(&config),
            writer.available(),
            rx,
            node.clone(),
            first_checks(board.clone(), &config, writer.plan()),
        ));
        tx
    });

    let (control, control_rx) = mpsc::channel(64);
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let reloads = Arc::new(Reloads::default());
    let tokens: SharedTokens = Arc::new(std::sync::RwLock::new(config.admin.tokens.clone()));
    let audit = Arc::new(
        AuditLog::open(config.admin.audit_log.as_deref()).with_context(|| {
            format!(
                "opening the audit log {} ([admin] audit_log; \"off\" keeps none)",
                config
                    .admin
                    .audit_log
                    .as_deref()
                    .unwrap_or(std::path::Path::new("-"))
                    .display()
            )
        })?,
    );
    match audit.path() {
        Some(p) => info!(path = %p.display(), "audit log open"),
        None => warn!(
            "no audit log ([admin] audit_log = \"off\"): admin actions and reloads are not recorded"
        ),
    }
    if let Some(listen) = config.admin.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the admin listener to {listen} ([admin] listen)"))?;
        let state = Arc::new(AdminState {
            control: control.clone(),
            reload: reload_tx,
            reloads: reloads.clone(),
            board,
            pin_dir: Some(pin_dir.clone()),
            latency: writer.prometheus_latency(),
            tokens: tokens.clone(),
            audit: audit.clone(),
            allowed_hosts: config.admin.allowed_hosts.clone(),
            l7: l7_metrics,
            routes: listeners.board(),
            flow_cache: Default::default(),
            node: node.clone(),
            announcer: announcer.clone(),
        });
        tokio::spawn(serve(listener, state));
        info!(%listen, tokens = config.admin.tokens.len(), "admin listener ready");
    }

    let (stop, stopped) = oneshot::channel();
    let writer = spawn_writer(
        writer,
        updates_rx,
        control_rx,
        stopped,
        config.writer_priority,
    )?;
    // Handlers before readiness: a reload or stop sent the moment systemd hears READY must not
    // meet a signal's default action (SIGHUP's is to terminate).
    let mut current = config;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    info!(services = current.services.len(), "understudy is running");
    crate::allocator::release_freed_memory();
    notify(&[NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                let _ = reload(&mut current, &control, &mut tasks, &mut listeners, &reloads, &tokens, announcer.as_ref(), (&audit, Caller::signal())).await;
            }
            _ = sigusr1.recv() => audit.reopen(),
            Some((caller, reply)) = reload_rx.recv() => {
                let result = reload(&mut current, &control, &mut tasks, &mut listeners, &reloads, &tokens, announcer.as_ref(), (&audit, caller)).await;
                let _ = reply.send(result);
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    // Withdraw first, then keep serving for the grace time, so routers move new connections
    // to the other nodes before this one detaches.
    if let (Some(announcer), Some(settings)) = (&announcer, &current.announce) {
        let (tx, rx) = oneshot::channel();
        if announcer
            .send(crate::announce::Command::Stop(tx))
            .await
            .is_ok()
        {
            match rx.await {
                Ok(Ok(())) => {
                    info!(grace = ?settings.grace, "VIPs withdrawn: serving established flows for the grace time")
                }
                Ok(Err(e)) => {
                    warn!(error = %e, grace = ?settings.grace, "could not withdraw the VIPs through BIRD; serving for the grace time anyway")
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(settings.grace).await;
    }
    // HTTP listeners stop accepting now, and their requests in flight finish.
    listeners.drain_all().await;
    let _ = stop.send(());
    let mut writer = writer
        .await
        .context("the map writer's thread ended without handing the writer back")?
        .context("the map writer's event loop")?;
    info!("shutting down: detaching XDP and removing the pinned state");
    writer.dataplane_mut().unpin();
    if probe_path {
        crate::dataplane::probe_path::remove();
    }
    drop(writer);
    Ok(())
}

/// Says how many flows the kernel can track and how the per-CPU LRU splits them: each possible
/// CPU gets an equal share, and a flow takes its entry from the share of the CPU that saw its
/// first packet. A pinned map adopted from a previous daemon keeps its size.
fn log_flow_capacity(dp: &Dataplane, max_flows: u32) {
    let capacity = dp.flows_capacity().unwrap_or(0);
    let possible = crate::dataplane::possible_cpus();
    let online = crate::dataplane::online_cpus();
    info!(
        flows = capacity,
        memory_mib = dp.flows_memory().unwrap_or(0) >> 20,
        per_cpu = capacity / possible,
        possible_cpus = possible,
        online_cpus = online,
        "flow table (FLOWS)"
    );
    if capacity != max_flows {
        warn!(
            pinned = capacity,
            configured = max_flows,
            "the pinned FLOWS keeps its size: [dataplane] max_flows applies after `understudy clean` and a restart (which drops the tracked flows)"
        );
    }
    if possible > online.saturating_mul(2) {
        warn!(
            possible_cpus = possible,
            online_cpus = online,
            usable = capacity / possible * online,
            "most of the flow tables belong to CPUs that are not online: the per-CPU LRU gives each possible CPU an equal share; raise max_flows accordingly"
        );
    }
}

/// Takes over pinned state: each service and backend keeps its id, a kept backend its generation
/// (so its `FLOWS` entries stay valid) and its health, found by service and address
/// (`crate::adopt`). Service entries not in the config are removed.
fn adopt(dp: &mut Dataplane, config: &Config) -> anyhow::Result<(Plan, Vec<Vec<bool>>)> {
    let adopted = crate::adopt::adopt(config, &dp.pinned());
    info!(
        kept = adopted.kept,
        new = adopted.new,
        "backends kept from the pinned state (id, health, flows), and new ones"
    );
    let keys: Vec<_> = adopted.plan.services.iter().map(|s| s.key).collect();
    dp.adopt_services(&keys)
        .context("adopting the pinned services")?;
    Ok((adopted.plan, adopted.healthy))
}

/// Re-reads and validates the config file, then applies the difference. Anything wrong (an
/// invalid file, a change that needs a restart) leaves the running config untouched. The audit
/// log is reopened (for logrotate) and gets one record of the reload, with what it changed.
#[allow(clippy::too_many_arguments)]
async fn reload(
    current: &mut Config,
    control: &mpsc::Sender<Control>,
    tasks: &mut Supervisor,
    listeners: &mut Listeners,
    reloads: &Reloads,
    tokens: &SharedTokens,
    announcer: Option<&mpsc::Sender<crate::announce::Command>>,
    (audit, caller): (&Arc<AuditLog>, Caller),
) -> Result<String, ReloadError> {
    let mut reloading = vec![NotifyState::Reloading];
    reloading.extend(NotifyState::monotonic_usec_now().ok());
    notify(&reloading);
    audit.reopen();
    let mut changes = None;
    let result = async {
        let config =
            Config::load(&current.file).map_err(|e| ReloadError::Invalid(e.to_string()))?;
        crate::dataplane::routes::check_on_link(&config)
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let names = |c: &Config| {
            c.interfaces
                .iter()
                .map(|i| i.name.clone())
                .collect::<Vec<_>>()
        };
        if names(&config) != names(current)
            || config.xdp_mode != current.xdp_mode
            || config.max_flows != current.max_flows
            || config.writer_priority != current.writer_priority
        {
            return Err(ReloadError::NeedsRestart(format!(
                "{}: [dataplane] changed: interfaces, xdp_mode, max_flows and writer_priority \
                 take effect on a restart only; revert them to reload, or restart understudy",
                config.file.display()
            )));
        }
        // The token is re-read and swapped (a rotated token applies at once); where the
        // listener is and which names it answers to need a restart.
        if config.admin.listen != current.admin.listen
            || config.admin.allowed_hosts != current.admin.allowed_hosts
            || config.admin.audit_log != current.admin.audit_log
        {
            return Err(ReloadError::NeedsRestart(format!(
                "{}: [admin] listen, allowed_hosts or audit_log changed: they take effect on a \
                 restart only; revert them to reload, or restart understudy",
                config.file.display()
            )));
        }
        if config.announce != current.announce {
            return Err(ReloadError::NeedsRestart(format!(
                "{}: [announce] changed: it takes effect on a restart only; revert it to reload, \
                 or restart understudy (withdraw first with `understudy node drain`)",
                config.file.display()
            )));
        }
        let prepared = listeners
            .prepare(&config)
            .await
            .map_err(ReloadError::Invalid)?;
        let (tx, rx) = oneshot::channel();
        control
            .send(Control::Reload {
                config: Box::new(config.clone()),
                reply: tx,
            })
            .await
            .map_err(|_| ReloadError::Failed("the map writer is not running".into()))?;
        let (plan, health) = rx
            .await
            .map_err(|_| ReloadError::Failed("the map writer stopped".into()))?
            .map_err(ReloadError::Failed)?;
        tasks
            .reconcile(&config, &plan, &health)
            .map_err(|e| ReloadError::Failed(format!("{e:#}")))?;
        listeners.commit(prepared);
        if let Some(a) = announcer {
            let _ = a
                .send(crate::announce::Command::Targets(crate::announce::targets(
                    &config,
                )))
                .await;
        }
        let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
        let summary = format!(
            "reloaded {}: {} services, {backends} backends",
            config.file.display(),
            config.services.len()
        );
        if config.admin.tokens != current.admin.tokens {
            *tokens.write().unwrap_or_else(|p| p.into_inner()) = config.admin.tokens.clone();
            info!(tokens = config.admin.tokens.len(), "admin tokens replaced");
        }
        changes = Some(Changes::between(current, &config));
        info!(
            file = %config.file.display(),
            services = config.services.len(),
            backends,
            "config reloaded"
        );
        *current = config;
        Ok(summary)
    }
    .await;
    match &result {
        Ok(_) => {
            reloads.ok.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            reloads.failed.fetch_add(1, Ordering::Relaxed);
            error!(error = %e, "reload refused; the running config stays");
        }
    }
    let (outcome, status, detail) = match &result {
        Ok(summary) => (Outcome::Ok, 200, summary.clone()),
        Err(e @ ReloadError::Invalid(_)) => (Outcome::Invalid, e.status().as_u16(), e.to_string()),
        Err(e @ ReloadError::NeedsRestart(_)) => {
            (Outcome::Refused, e.status().as_u16(), e.to_string())
        }
        Err(e @ ReloadError::Failed(_)) => (Outcome::Failed, e.status().as_u16(), e.to_string()),
    };
    let from_api = caller.peer.is_some();
    let mut record = Record::new("reload", caller, outcome, detail);
    record.status = from_api.then_some(status);
    record
        .target
        .insert("file", current.file.display().to_string());
    record.changes = changes;
    audit.record(record).await;
    crate::allocator::release_freed_memory();
    notify(&[NotifyState::Ready]);
    result
}

/// Resolves once every backend with an active check has had its first result (or after the
/// longest service's `rise` checks and a timeout, whichever comes first): the announcer's signal
/// that health is known.
fn first_checks(
    board: crate::health::Board,
    config: &Config,
    plan: &crate::plan::Plan,
) -> impl std::future::Future<Output = ()> + use<> {
    let mut ids = Vec::new();
    let mut cap = std::time::Duration::ZERO;
    for (svc, planned) in config.services.iter().zip(&plan.services) {
        if svc.health.check == crate::config::Check::None {
            continue;
        }
        ids.extend(planned.members.iter().map(|m| m.id));
        cap = cap.max(svc.health.interval * svc.health.rise + svc.health.timeout);
    }
    let deadline = tokio::time::Instant::now() + cap.min(std::time::Duration::from_secs(60));
    async move {
        loop {
            let done = board.read().is_ok_and(|b| {
                ids.iter()
                    .all(|&id| b.get(id as usize).is_some_and(Option::is_some))
            });
            if done || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Runs the map writer on its own thread and event loop until `stopped`, and hands it back
/// (dropping it detaches XDP). On the shared runtime a health decision waited behind whatever
/// the proxy's, the checkers' and the admin API's tasks held the workers with, before its
/// table reached the kernel; alone, the writer wakes as soon as a decision arrives.
fn spawn_writer(
    writer: Writer,
    updates: mpsc::Receiver<crate::health::Update>,
    control: mpsc::Receiver<Control>,
    stopped: oneshot::Receiver<()>,
    priority: u8,
) -> anyhow::Result<oneshot::Receiver<std::io::Result<Writer>>> {
    let (done, handed_back) = oneshot::channel();
    std::thread::Builder::new()
        .name("understudy-writer".into())
        .spawn(move || {
            let writer = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| {
                    raise_priority(priority);
                    rt.block_on(writer.run(updates, control, stopped, STATS_INTERVAL))
                });
            let _ = done.send(writer);
        })
        .context("starting the map writer's thread")?;
    Ok(handed_back)
}

/// Puts the calling thread (the map writer) on SCHED_FIFO at `priority`, so a health decision
/// that wakes it is written at once rather than after the scheduler's next turn; threads it
/// starts later return to the normal scheduler (`SCHED_RESET_ON_FORK`). Without the right
/// (CAP_SYS_NICE, and no `RestrictRealtime=yes` in a systemd unit) it says so and carries on.
fn raise_priority(priority: u8) {
    if priority == 0 {
        info!("map writer on the normal scheduler ([dataplane] writer_priority = 0)");
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pid 0 is the calling thread, and `param` is a valid sched_param.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc == 0 {
        info!(priority, "map writer runs SCHED_FIFO");
    } else {
        warn!(
            priority,
            error = %std::io::Error::last_os_error(),
            "map writer left on the normal scheduler: real-time scheduling needs CAP_SYS_NICE (and no RestrictRealtime= in a systemd unit); a decision may wait for the scheduler's next turn before it is written; set [dataplane] writer_priority = 0 to silence this"
        );
    }
}

/// Tells systemd (`Type=notify`) where the daemon is; a no-op outside systemd.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Forwards the programs' aya-log records to `tracing` (through the `log` bridge).
fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> anyhow::Result<()> {
    let fd = logger.as_raw_fd();
    // SAFETY: the logger owns its ring-buffer fd and moves into the AsyncFd, which drops it.
    let mut async_fd =
        unsafe { AsyncFd::register(logger) }.with_context(|| format!("polling log fd {fd}"))?;
    tokio::spawn(async move {
        loop {
            match async_fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!(error = %e, "eBPF log reader stopped");
                    return;
                }
            }
        }
    });
    Ok(())
}

//! `understudy run`: validate, check privileges, load, fill the maps, attach, then run the health
//! engine, the passive-event reader and the map writer until SIGINT or SIGTERM. The maps are
//! filled before the program is attached, so the first packet already sees every service, and
//! backends that must pass a first check take no traffic until they do. Dropping the writer (and
//! with it the data plane) detaches the program.

use std::{os::fd::AsRawFd as _, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::{
    admin::{AdminState, serve},
    config::{Config, kind_name, protocol_name},
    dataplane::{Dataplane, attach},
    failover::Writer,
    health::{probe::Prober, task::BackendTask},
    passive::forward_events,
    plan::plan,
    privileges,
};

/// How often the writer logs the data plane's counters (debug) and failover latency (info).
const STATS_INTERVAL: Duration = Duration::from_secs(60);

pub async fn run(config: Config) -> anyhow::Result<()> {
    if let Err(why) = privileges::check() {
        bail!(why);
    }
    let plan = plan(&config);
    let mut probers = Vec::new();
    for svc in &config.services {
        let prober = Prober::new(&svc.health)
            .map_err(|e| anyhow::anyhow!("service {}: health check: {e}", svc.name))?;
        probers.push(Arc::new(prober));
    }
    let mut dp = Dataplane::load().context("loading the XDP program")?;
    if let Some(logger) = dp.take_logger() {
        spawn_logger(logger)?;
    }
    let events = dp
        .take_events()
        .context("opening the passive-detection ring buffer")?;
    let mut writer = Writer::new(dp, plan.clone());
    writer.install().context("writing the data-plane maps")?;
    let attachments = attach(writer.dataplane_mut(), &config)?;
    for a in &attachments {
        info!(interface = %a.interface, ifindex = a.ifindex, mode = a.mode, "XDP attached");
    }

    let (updates, updates_rx) = mpsc::channel(4096);
    let mut event_tasks = vec![None; plan.backends.len()];
    for ((svc, planned), prober) in config.services.iter().zip(&plan.services).zip(&probers) {
        for (backend, &id) in svc.backends.iter().zip(&planned.backend_ids) {
            let (tx, rx) = mpsc::channel(64);
            event_tasks[id as usize] = Some(tx);
            let task = BackendTask {
                id,
                service: svc.name.clone(),
                address: backend.address,
                prober: prober.clone(),
                check: svc.health.clone(),
                passive: svc.passive.clone(),
                initially_up: planned.initially_healthy,
            };
            tokio::spawn(task.run(updates.clone(), rx));
        }
        info!(
            service = %svc.name,
            vip = %svc.vip,
            protocol = protocol_name(svc.protocol),
            backends = svc.backends.len(),
            table_size = planned.base.len(),
            check = kind_name(svc.health.kind),
            "service ready"
        );
    }
    let generations = plan.backends.iter().map(|b| b.generation).collect();
    tokio::spawn(forward_events(events, event_tasks, generations));

    let (control, control_rx) = mpsc::channel(64);
    if let Some(listen) = config.admin.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the admin listener to {listen} ([admin] listen)"))?;
        let state = Arc::new(AdminState {
            control: control.clone(),
            latency: writer.prometheus_latency(),
            token: config.admin.token.clone(),
        });
        tokio::spawn(serve(listener, state));
        info!(%listen, token = config.admin.token.is_some(), "admin listener ready");
    }

    let (stop, stopped) = oneshot::channel();
    let writer = tokio::spawn(writer.run(updates_rx, control_rx, stopped, STATS_INTERVAL));
    info!(services = config.services.len(), "understudy is running");

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = sigint.recv() => {},
        _ = sigterm.recv() => {},
    }
    let _ = stop.send(());
    let writer = writer.await.context("the map writer failed")?;
    info!("shutting down: detaching XDP");
    drop(writer);
    Ok(())
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

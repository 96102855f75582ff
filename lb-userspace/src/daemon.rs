//! `understudy run`: validate, check privileges, load, fill the maps, attach, then serve until
//! SIGINT or SIGTERM. The maps are filled before the program is attached, so the first packet
//! already sees every service. Detaching happens when the data plane is dropped.

use std::{os::fd::AsRawFd as _, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use crate::{
    config::{Config, protocol_name},
    dataplane::{Dataplane, attach},
    plan::plan,
    privileges,
};

/// How often the daemon logs the data plane's counters at debug level.
const STATS_INTERVAL: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> anyhow::Result<()> {
    if let Err(why) = privileges::check() {
        bail!(why);
    }
    let plan = plan(&config);
    let mut dp = Dataplane::load().context("loading the XDP program")?;
    if let Some(logger) = dp.take_logger() {
        spawn_logger(logger)?;
    }
    dp.install(&plan).context("writing the data-plane maps")?;
    let attachments = attach(&mut dp, &config)?;
    for a in &attachments {
        info!(interface = %a.interface, ifindex = a.ifindex, mode = a.mode, "XDP attached");
    }
    for (svc, planned) in config.services.iter().zip(&plan.services) {
        info!(
            service = %svc.name,
            vip = %svc.vip,
            protocol = protocol_name(svc.protocol),
            backends = svc.backends.len(),
            table_size = planned.ring.len(),
            "service ready"
        );
    }
    info!(services = config.services.len(), "understudy is running");

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => log_counters(&dp),
        }
    }
    log_counters(&dp);
    info!("shutting down: detaching XDP");
    drop(dp);
    Ok(())
}

fn log_counters(dp: &Dataplane) {
    match dp.counters() {
        Ok(c) => {
            let nonzero: Vec<String> =
                c.0.iter()
                    .filter(|(_, v)| *v > 0)
                    .map(|(k, v)| format!("{}={v}", k.name()))
                    .collect();
            tracing::debug!(counters = %nonzero.join(" "), "data plane");
        }
        Err(e) => warn!(error = %e, "reading counters failed"),
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

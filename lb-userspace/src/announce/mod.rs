//! VIP announcement through BIRD 2, for nodes behind a router's ECMP: the announcer keeps the
//! include file ([`file`]) listing the VIPs this node should attract and tells BIRD to re-read its
//! config over the control socket ([`bird`]), whenever that set changes. It announces nothing
//! until the data plane is attached and every checked backend has had its first check; it
//! withdraws a `when_available` service's VIP when none of its backends is up, everything on
//! `understudy node drain` and on SIGTERM (before the daemon's grace time and detach). It asks
//! BIRD whether it is alive every `speaker_check`, and says so loudly when it is not.

pub mod bird;
pub mod file;
pub mod snippet;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, RwLock},
};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::config::{Announce, AnnouncePolicy, Config};

pub use crate::status::NodeStatus;

pub type SharedStatus = Arc<RwLock<NodeStatus>>;

/// What the daemon and the admin API ask of the announcer.
pub enum Command {
    /// Withdraw everything; established flows keep being served.
    Drain(oneshot::Sender<Result<(), String>>),
    /// Announce again after a drain.
    Enable(oneshot::Sender<Result<(), String>>),
    /// A reload's services.
    Targets(Vec<Target>),
    /// Withdraw for good (SIGTERM); answered once BIRD has been told.
    Stop(oneshot::Sender<Result<(), String>>),
}

/// One service's part in the announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub vip: IpAddr,
    pub policy: AnnouncePolicy,
}

pub fn targets(config: &Config) -> Vec<Target> {
    config
        .services
        .iter()
        .map(|s| Target {
            service: s.name.clone(),
            vip: s.vip.ip(),
            policy: s.announce,
        })
        .collect()
}

/// The VIPs to announce: a VIP is announced when any service on it wants it (services may share
/// a VIP on different ports).
pub fn wanted(targets: &[Target], available: &BTreeMap<String, bool>) -> BTreeSet<IpAddr> {
    targets
        .iter()
        .filter(|t| match t.policy {
            AnnouncePolicy::Always => true,
            AnnouncePolicy::Never => false,
            AnnouncePolicy::WhenAvailable => available.get(&t.service).copied().unwrap_or(false),
        })
        .map(|t| t.vip)
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Settling,
    Announcing,
    Drained,
    Stopping,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Settling => "settling",
            Phase::Announcing => "announcing",
            Phase::Drained => "drained",
            Phase::Stopping => "stopping",
        }
    }
}

struct Announcer {
    settings: Announce,
    targets: Vec<Target>,
    phase: Phase,
    /// What BIRD was last told successfully; `None` forces the next write.
    told: Option<BTreeSet<IpAddr>>,
    speaker_up: Option<bool>,
    status: SharedStatus,
    /// The last failure warned about: a repeat of it is not logged again.
    warned: Option<String>,
}

impl Announcer {
    /// Logs a failed update once per distinct error, and its end.
    fn note(&mut self, result: &Result<(), String>) {
        match result {
            Err(e) if self.warned.as_ref() != Some(e) => {
                warn!(error = %e, "announcement not updated; retrying");
                self.warned = Some(e.clone());
            }
            Ok(()) if self.warned.take().is_some() => info!("announcement updated after failures"),
            _ => {}
        }
    }
}

impl Announcer {
    /// Brings BIRD in line with the phase and the services' availability.
    async fn sync(&mut self, available: &BTreeMap<String, bool>) -> Result<(), String> {
        let want = match self.phase {
            Phase::Announcing => wanted(&self.targets, available),
            _ => BTreeSet::new(),
        };
        let result = if self.told.as_ref() == Some(&want) {
            Ok(())
        } else {
            self.tell(&want).await
        };
        if let Ok(mut s) = self.status.write() {
            s.state = self.phase.name().to_string();
            s.announced = self.told.iter().flatten().copied().collect();
            s.error = result.as_ref().err().cloned();
        }
        result
    }

    async fn tell(&mut self, want: &BTreeSet<IpAddr>) -> Result<(), String> {
        let path = &self.settings.include;
        file::write(path, &file::render(want))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        let reply = bird::request(&self.settings.socket, "configure")
            .await
            .map_err(|e| format!("BIRD at {}: {e}", self.settings.socket.display()))?;
        if reply.is_error() {
            return Err(format!(
                "BIRD refused to reconfigure ({}): {}",
                reply.code,
                reply.text.join(" / ")
            ));
        }
        info!(
            vips = ?want,
            phase = self.phase.name(),
            bird = reply.text.last().map(String::as_str).unwrap_or(""),
            "announcement updated"
        );
        self.told = Some(want.clone());
        Ok(())
    }

    /// Asks BIRD whether it is alive; logs the transitions. A BIRD that comes back is told the
    /// current set again.
    async fn check_speaker(&mut self) {
        let up = match bird::request(&self.settings.socket, "show status").await {
            Ok(r) if !r.is_error() => Ok(()),
            Ok(r) => Err(format!("answered {}: {}", r.code, r.text.join(" / "))),
            Err(e) => Err(e.to_string()),
        };
        match (&up, self.speaker_up) {
            (Err(e), Some(true) | None) => error!(
                socket = %self.settings.socket.display(),
                error = %e,
                "BIRD is not answering: this node's VIP announcements are not kept current (routers keep the last ones until BGP's hold timer or BFD drops them); start or fix bird"
            ),
            (Ok(()), Some(false)) => {
                info!(socket = %self.settings.socket.display(), "BIRD answers again");
                self.told = None;
            }
            _ => {}
        }
        self.speaker_up = Some(up.is_ok());
        if let Ok(mut s) = self.status.write() {
            s.speaker_up = self.speaker_up;
        }
    }
}

/// Runs the announcer until it is stopped. `settled` resolves once the first checks have run.
pub async fn run(
    settings: Announce,
    targets: Vec<Target>,
    mut available: watch::Receiver<BTreeMap<String, bool>>,
    mut commands: mpsc::Receiver<Command>,
    status: SharedStatus,
    settled: impl std::future::Future<Output = ()>,
) {
    if let Ok(mut s) = status.write() {
        s.enabled = true;
        s.state = Phase::Settling.name().to_string();
    }
    let mut tick = tokio::time::interval(settings.speaker_check);
    let mut a = Announcer {
        settings,
        targets,
        phase: Phase::Settling,
        told: None,
        speaker_up: None,
        status,
        warned: None,
    };
    tokio::pin!(settled);
    let mut settling = true;
    loop {
        tokio::select! {
            () = &mut settled, if settling => {
                settling = false;
                if a.phase == Phase::Settling {
                    a.phase = Phase::Announcing;
                    info!("first checks settled: announcing the available VIPs");
                }
            }
            changed = available.changed() => {
                if changed.is_err() {
                    // The writer is gone: the daemon is stopping.
                    return;
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { return };
                let (reply, stop) = match command {
                    Command::Drain(reply) => {
                        if a.phase != Phase::Stopping {
                            a.phase = Phase::Drained;
                        }
                        (Some(reply), false)
                    }
                    Command::Enable(reply) => {
                        if a.phase == Phase::Drained {
                            a.phase = if settling { Phase::Settling } else { Phase::Announcing };
                        }
                        (Some(reply), false)
                    }
                    Command::Targets(t) => {
                        a.targets = t;
                        (None, false)
                    }
                    Command::Stop(reply) => {
                        a.phase = Phase::Stopping;
                        (Some(reply), true)
                    }
                };
                let snapshot = available.borrow().clone();
                let result = a.sync(&snapshot).await;
                a.note(&result);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                if stop {
                    return;
                }
                continue;
            }
            _ = tick.tick() => a.check_speaker().await,
        }
        let snapshot = available.borrow().clone();
        let result = a.sync(&snapshot).await;
        a.note(&result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vip_is_announced_when_one_of_its_services_wants_it() {
        let t = |service: &str, vip: &str, policy| Target {
            service: service.into(),
            vip: vip.parse().unwrap(),
            policy,
        };
        let targets = [
            t("web", "10.0.0.10", AnnouncePolicy::WhenAvailable),
            t("dns", "10.0.0.10", AnnouncePolicy::Never),
            t("api", "10.0.0.11", AnnouncePolicy::WhenAvailable),
            t("ops", "10.0.0.12", AnnouncePolicy::Always),
            t("off", "10.0.0.13", AnnouncePolicy::Never),
        ];
        let available: BTreeMap<String, bool> = [
            ("web".to_string(), true),
            ("api".to_string(), false),
            ("ops".to_string(), false),
        ]
        .into();
        let got: Vec<String> = wanted(&targets, &available)
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.10", "10.0.0.12"]);
    }
}

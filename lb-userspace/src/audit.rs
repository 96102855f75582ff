//! The audit log: one JSON line per admin action and per config change, with who asked, from
//! where, and what came of it. Operators answer "who drained this backend at 03:12?" from it,
//! so it is written like a journal, not like a debug log:
//!
//! - **Every attempt.** Accepted, refused (bad or missing token, a request from a web page),
//!   invalid (a config that does not validate) and failed actions each get exactly one record.
//!   Reads (`GET /status`, `/metrics`) are not actions and are not recorded.
//! - **Durable before the answer.** The record is written and `fsync`ed before the caller hears
//!   the result, so a `kill -9` right after an action cannot lose it.
//! - **Append-only, never rotated here.** The file is opened with `O_APPEND` and mode 0640. The
//!   daemon reopens it on SIGUSR1 and on every reload, so logrotate (or a person) moves it away
//!   and signals, as with nginx and HAProxy.
//! - **No secrets.** A record names the token (`[[admin.tokens]] name`), never its value.
//!
//! A write that fails is logged at error level and counted (`understudy_audit_write_errors_total`):
//! the action itself is not refused, since refusing operators their drain because a disk is
//! full would turn an audit problem into an outage.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;
use tracing::{error, info};

use crate::config::Config;

/// Who asked for an action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// "admin_api" or "signal".
    pub via: &'static str,
    /// The name of the bearer token the request carried; `None` when no token is configured,
    /// or the request carried none that matched.
    pub token: Option<String>,
    /// The admin client's address (absent for signals).
    pub peer: Option<SocketAddr>,
}

impl Caller {
    pub fn api(peer: SocketAddr, token: Option<String>) -> Caller {
        Caller {
            via: "admin_api",
            token,
            peer: Some(peer),
        }
    }

    pub fn signal() -> Caller {
        Caller {
            via: "signal",
            token: None,
            peer: None,
        }
    }
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// The caller was not let in: no or a wrong token (401), or the request guard (403).
    Refused,
    /// The request or the config it asked for does not hold (unknown backend, invalid file).
    Invalid,
    /// Accepted, but applying it failed, or it needs a restart.
    Failed,
}

/// What a reload changed, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services_removed: Vec<String>,
    /// Services whose settings (other than their backends) changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services_changed: Vec<String>,
    /// "service/address".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends_removed: Vec<String>,
    /// Weight, tier or drain changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends_changed: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers_removed: Vec<String>,
    /// Groups or credentials changed (which credential is never said).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers_changed: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub jwt_keys_changed: bool,
    /// Admin tokens added, removed or rotated, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admin_tokens_changed: Vec<String>,
}

/// Added, removed and changed names between two keyed lists.
fn compare<T: PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = new.keys().filter(|k| !old.contains_key(*k)).cloned();
    let removed = old.keys().filter(|k| !new.contains_key(*k)).cloned();
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone());
    (added.collect(), removed.collect(), changed.collect())
}

impl Changes {
    pub fn between(old: &Config, new: &Config) -> Changes {
        // A service's own settings: its backends are compared one by one, and where they are
        // written in the file is no change at all.
        let services = |c: &Config| -> BTreeMap<String, crate::config::Service> {
            c.services
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    s.backends.clear();
                    s.backend_at.clear();
                    (s.name.clone(), s)
                })
                .collect()
        };
        let backends = |c: &Config| -> BTreeMap<String, (u32, u32, bool)> {
            c.services
                .iter()
                .flat_map(|s| {
                    s.backends.iter().map(move |b| {
                        (
                            format!("{}/{}", s.name, b.address),
                            (b.weight, b.tier, b.drain),
                        )
                    })
                })
                .collect()
        };
        let consumers = |c: &Config| -> BTreeMap<String, crate::config::Consumer> {
            c.gateway
                .consumers
                .iter()
                .map(|k| (k.name.clone(), k.clone()))
                .collect()
        };
        let tokens = |c: &Config| -> BTreeMap<String, String> {
            c.admin
                .tokens
                .iter()
                .map(|t| (t.name.clone(), t.token.clone()))
                .collect()
        };
        let (services_added, services_removed, services_changed) =
            compare(&services(old), &services(new));
        let (backends_added, backends_removed, backends_changed) =
            compare(&backends(old), &backends(new));
        let (consumers_added, consumers_removed, consumers_changed) =
            compare(&consumers(old), &consumers(new));
        let (a, r, c) = compare(&tokens(old), &tokens(new));
        let keys = |c: &Config| c.gateway.jwt.as_ref().map(|j| j.keys.clone());
        Changes {
            services_added,
            services_removed,
            services_changed,
            backends_added,
            backends_removed,
            backends_changed,
            consumers_added,
            consumers_removed,
            consumers_changed,
            jwt_keys_changed: keys(old) != keys(new),
            admin_tokens_changed: a.into_iter().chain(r).chain(c).collect(),
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// "drain", "enable", "node_drain", "node_enable" or "reload".
    pub action: &'static str,
    pub caller: Caller,
    /// What the action was about: `service` and `backend` for drain and enable, the file for a
    /// reload.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub target: BTreeMap<&'static str, String>,
    pub result: Outcome,
    /// The HTTP status the admin API answered with (absent for signals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The answer's text: a summary, or why it was refused.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
}

impl Record {
    pub fn new(action: &'static str, caller: Caller, result: Outcome, detail: String) -> Record {
        Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            action,
            caller,
            target: BTreeMap::new(),
            result,
            status: None,
            detail,
            changes: None,
        }
    }
}

/// The open audit log, shared by the admin listener and the daemon's signal handling.
pub struct AuditLog {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    pub write_errors: AtomicU64,
    pub records: AtomicU64,
}

pub type SharedAudit = Arc<AuditLog>;

/// Opens (creating) `path` for appending; its directory is created when missing.
fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

impl AuditLog {
    /// Opens the log at `path` (`None`: `audit_log = "off"`, nothing is written). An error
    /// here stops the daemon's start: an operator who asked for an audit trail gets one.
    pub fn open(path: Option<&Path>) -> std::io::Result<AuditLog> {
        let file = path.map(open).transpose()?;
        Ok(AuditLog {
            path: path.map(Path::to_path_buf),
            file: Mutex::new(file),
            write_errors: AtomicU64::new(0),
            records: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Closes and opens the file again (SIGUSR1, reload): after logrotate moved it, records go
    /// to a new file at the configured path. A failure keeps the old file.
    pub fn reopen(&self) {
        let Some(path) = &self.path else { return };
        match open(path) {
            Ok(f) => {
                *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                info!(path = %path.display(), "audit log reopened");
            }
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                error!(path = %path.display(), error = %e, "cannot reopen the audit log: records still go to the file open before");
            }
        }
    }

    /// Appends one record and waits until it is on disk. Blocking: the admin API calls it
    /// from a blocking task ([`AuditLog::record`]).
    pub fn write(&self, record: &Record) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(file) = guard.as_mut() else { return };
        // One write of the whole line: O_APPEND places it after every earlier record, whole.
        match file.write_all(&line).and_then(|()| file.sync_data()) {
            Ok(()) => {
                self.records.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                error!(
                    path = %self.path.as_deref().unwrap_or(Path::new("-")).display(),
                    error = %e,
                    action = record.action,
                    "cannot write the audit record; the action itself went ahead"
                );
            }
        }
    }

    /// [`AuditLog::write`] off the async workers.
    pub async fn record(self: &Arc<Self>, record: Record) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.write(&record)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("test.toml"), text).unwrap()
    }

    const BASE: &str = r#"
[dataplane]
interfaces = ["veth0"]
[admin]
audit_log = "off"
[[service]]
name = "web"
vip = "10.0.0.10:80"
mode = "http"
[[service.backend]]
address = "10.0.1.1:80"
[[service.backend]]
address = "10.0.1.2:80"
[[service]]
name = "old"
vip = "10.0.0.11:80"
mode = "http"
[[service.backend]]
address = "10.0.1.9:80"
"#;

    #[test]
    fn a_reload_is_summarised_by_name() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace("10.0.1.2:80\"", "10.0.1.2:80\"\nweight = 3")
                .replace("10.0.1.1:80", "10.0.1.3:80")
                .replace("name = \"old\"", "name = \"new\""),
        );
        let c = Changes::between(&old, &new);
        assert_eq!(c.services_added, ["new"]);
        assert_eq!(c.services_removed, ["old"]);
        assert!(c.services_changed.is_empty(), "{c:?}");
        assert_eq!(c.backends_added, ["new/10.0.1.9:80", "web/10.0.1.3:80"]);
        assert_eq!(c.backends_removed, ["old/10.0.1.9:80", "web/10.0.1.1:80"]);
        assert_eq!(c.backends_changed, ["web/10.0.1.2:80"]);
        // Moving lines around changes nothing.
        let moved = config(&format!("\n\n{BASE}"));
        assert_eq!(Changes::between(&old, &moved), Changes::default());
    }

    #[test]
    fn records_are_appended_whole_and_reopened_after_a_move() {
        let dir = std::env::temp_dir().join(format!("understudy-audit-{}", std::process::id()));
        let path = dir.join("sub/audit.log");
        let log = AuditLog::open(Some(&path)).unwrap();
        let caller = Caller::api("127.0.0.1:5000".parse().unwrap(), Some("alice".into()));
        log.write(&Record::new(
            "drain",
            caller.clone(),
            Outcome::Ok,
            "ok".into(),
        ));
        let moved = dir.join("audit.log.1");
        std::fs::rename(&path, &moved).unwrap();
        log.write(&Record::new("enable", caller, Outcome::Ok, "ok".into()));
        log.reopen();
        log.write(&Record::new(
            "reload",
            Caller::signal(),
            Outcome::Invalid,
            "bad".into(),
        ));
        let lines = |p: &Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let old = lines(&moved);
        assert_eq!(old.len(), 2, "the moved file keeps what was written to it");
        assert_eq!(old[0]["action"], "drain");
        assert_eq!(old[0]["caller"]["token"], "alice");
        assert_eq!(old[0]["caller"]["peer"], "127.0.0.1:5000");
        assert_eq!(old[1]["action"], "enable");
        let new = lines(&path);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0]["action"], "reload");
        assert_eq!(new[0]["result"], "invalid");
        assert_eq!(new[0]["caller"]["via"], "signal");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        std::fs::remove_dir_all(dir).ok();
    }
}

//! The status snapshot the admin API serves as JSON (`GET /status`), renders as metrics
//! (`GET /metrics`), and the CLI prints as tables. The map writer builds it, so it is one
//! consistent picture of health, tables and counters.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The backend's id in the data plane.
    pub id: u32,
    pub address: String,
    pub tier: u32,
    pub weight: u32,
    /// The health engine's view (checks and passive detection).
    pub healthy: bool,
    /// Operator drain: no new flows.
    pub draining: bool,
    /// Takes new flows now (in the active table).
    pub active: bool,
    /// Keeps its established flows.
    pub alive: bool,
    /// The reason of the last health change, if any.
    pub last_change: Option<String>,
    /// Unix time of the last health change.
    pub last_change_at: Option<u64>,
    /// The last active check: passed or not, why, and when (Unix time).
    pub last_check_ok: Option<bool>,
    pub last_check: Option<String>,
    pub last_check_at: Option<u64>,
    /// Started down (`wait_for_first_check`) and has not passed a check yet: `last_check`
    /// says why.
    #[serde(default)]
    pub waiting_for_first_check: bool,
    /// In its slow start: the share of its weight it takes now, in percent.
    #[serde(default)]
    pub slow_start_percent: Option<u8>,
    pub traffic: Traffic,
    /// The last ten minutes: new flows per step and health changes (the status page's sparkline).
    #[serde(default)]
    pub history: BackendHistory,
}

/// A backend's recent past, as the writer samples it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHistory {
    /// Seconds per step (10).
    pub step_secs: u32,
    /// New flows in each step, oldest first; the last is the step in progress.
    pub new_flows: Vec<u64>,
    /// Health changes within the window.
    pub changes: Vec<HistoryChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryChange {
    pub secs_ago: u32,
    /// Came up (true) or went down.
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub protocol: ServedProtocol,
    /// How the kernel forwards a kernel service's packets: "nat", "dsr", "ipip" or "gue"
    /// (absent for HTTP services).
    #[serde(default)]
    pub forwarding: Option<String>,
    pub state: ServiceState,
    /// The highest tier taking new flows.
    pub tier_in_use: Option<u32>,
    pub traffic: Traffic,
    /// Packets its access lists and rate limit refused, by reason (`deny`, `rate_limited`...).
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    pub backends: Vec<BackendStatus>,
    /// An HTTP service's routes: what each matches, its chain of pools, the pool it serves
    /// from now and why.
    #[serde(default)]
    pub routes: Vec<crate::l7::route::RouteStatus>,
}

/// What a service's clients speak to it: TCP or UDP forwarded by XDP, or HTTP to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedProtocol {
    Tcp,
    Udp,
    Http,
    /// A `[[pool]]`: backends that HTTP routes are served from, with no VIP of its own.
    Pool,
}

/// Whether a service takes new flows, and if not, what `on_all_down` does with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Some backend takes new flows.
    Serving,
    /// No backend is healthy and `on_all_down = "fail_open"`: every backend takes them.
    FailOpen,
    /// No backend: new flows are dropped (counted).
    Drop,
    /// No backend: new TCP flows are answered with a RST.
    Reject,
}

/// The same words as the JSON (and the config): `tcp`, `fail_open`...
macro_rules! display_as_serde {
    ($($ty:ty { $($variant:ident => $word:literal),* })*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $word),* })
            }
        }
    )*};
}

display_as_serde! {
    ServedProtocol { Tcp => "tcp", Udp => "udp", Http => "http", Pool => "pool" }
    ServiceState { Serving => "serving", FailOpen => "fail_open", Drop => "drop", Reject => "reject" }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub services: Vec<ServiceStatus>,
    /// The XDP program's global counters by name (`pass_*`, `drop_*`, `redirect`...).
    pub datapath: BTreeMap<String, u64>,
    /// Health and drain changes applied since start.
    pub changes: u64,
    /// Entries `FLOWS` can hold (`[dataplane] max_flows`, or the size a pinned map kept).
    #[serde(default)]
    pub flows_capacity: u32,
    /// Health updates dropped as stale (about an id's former owner, or from a replaced task).
    #[serde(default)]
    pub stale_updates: u64,
    /// Health decision to kernel-visible.
    pub decision_to_visible: Latency,
    /// Frames the kernel dropped after the program redirected them, by target interface.
    #[serde(default)]
    pub redirect_drops: BTreeMap<String, u64>,
    /// The SYN-flood guard.
    #[serde(default)]
    pub flood: Flood,
    /// This node's VIP announcement through BIRD (`[announce]`).
    #[serde(default)]
    pub node: NodeStatus,
}

/// This node's VIP announcement (`understudy::announce`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `[announce]` is configured.
    pub enabled: bool,
    /// "settling" (waiting for first checks), "announcing", "drained" or "stopping".
    pub state: String,
    /// The VIPs BIRD was last told to announce.
    pub announced: Vec<std::net::IpAddr>,
    /// Whether BIRD answered its last `show status`; `None` before the first.
    pub speaker_up: Option<bool>,
    /// The last failure to reach or reconfigure BIRD, if the last attempt failed.
    pub error: Option<String>,
}

/// The SYN-flood guard's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flood {
    /// `[dataplane] flood_threshold`: SYNs per second per CPU (0: the guard is off).
    pub threshold: u32,
    /// CPUs in flood mode now: their new SYN flows are not written to the flow tables.
    pub cpus: Vec<usize>,
    /// Times a CPU entered and left flood mode, and the SYNs it left unwritten.
    pub entered: u64,
    pub left: u64,
    pub unwritten: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_the_json() {
        for state in [
            ServiceState::Serving,
            ServiceState::FailOpen,
            ServiceState::Drop,
            ServiceState::Reject,
        ] {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{state}\"")
            );
        }
        for p in [
            ServedProtocol::Tcp,
            ServedProtocol::Udp,
            ServedProtocol::Http,
            ServedProtocol::Pool,
        ] {
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
    }
}

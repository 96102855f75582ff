//! `understudy explain`: where a client's new flow goes, and why. The answer is computed the way
//! the kernel computes it (the flow hash of the packet's key into the service's table, see
//! `lb-ebpf/src/select.rs`), from the table the writer has installed and each backend's state,
//! so it names the entry, its base owner, and every backend it passed over with the reason.
//! Against a running daemon it also reads `FLOWS`: a tracked flow keeps its backend while that
//! backend is alive. Offline (`--config`), it plans the config with every backend healthy.

use std::net::SocketAddr;

use lb_common::{
    FlowKey, NO_BACKEND, PROTO_TCP, PROTO_UDP, REJECT, addr_words,
    hash::{flow_hash, source_hash},
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Protocol,
    plan::{PlannedService, Serving},
};

/// One backend as the explanation shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub address: String,
    pub tier: u32,
    pub healthy: bool,
    pub draining: bool,
}

/// A flow `FLOWS` already pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    /// The pinned backend (`None`: its id is held by no backend now).
    pub backend: Option<String>,
    pub age_ms: u64,
    /// Whether the pin still holds: the backend is alive and has the same generation. If not,
    /// the flow's next packet is re-selected as a new flow would be.
    pub holds: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub service: String,
    pub flow: String,
    pub hash: u32,
    /// The table entry the hash selects, and the table's size.
    pub entry: u32,
    pub table_size: u32,
    /// The entry's owner when every backend of the primary tier is in: its Maglev owner.
    pub base_owner: Option<Candidate>,
    /// Where a new flow goes now; `None` when the service drops or rejects it.
    pub chosen: Option<Candidate>,
    /// What happens when nobody is chosen: "drop" or "reject".
    pub refused: Option<String>,
    /// Backends passed over on the way, each with why.
    pub skipped: Vec<(String, String)>,
    /// A flow already in `FLOWS`, when asked of a running daemon.
    pub tracked: Option<Tracked>,
    /// Why the access lists refuse the client's address (`deny`, `global_not_allowed`...): its
    /// packets are dropped before any of the above.
    #[serde(default)]
    pub denied: Option<String>,
}

/// Why `explain` has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("no service named {0}")]
    UnknownService(String),
    #[error(
        "{0} is an HTTP service: the proxy picks a backend per request (round robin, or by \
         client address with hash = \"source_ip\"), not per flow"
    )]
    Proxied(String),
    #[error("the client {client} and the VIP {vip} are of different address families")]
    Family { client: SocketAddr, vip: SocketAddr },
}

/// The key the kernel builds for a packet from `client` to the service's VIP.
pub fn flow_key(svc: &PlannedService, client: SocketAddr) -> FlowKey {
    let (src, family) = addr_words(client.ip());
    let (dst, _) = addr_words(svc.vip.ip());
    FlowKey {
        src,
        dst,
        src_port: client.port().to_be(),
        dst_port: svc.vip.port().to_be(),
        proto: match svc.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family,
        _pad: 0,
    }
}

/// The hash the kernel places a new flow from `client` by: the flow hash of its key, or the
/// source hash when the service hashes by source address (`lb-ebpf/src/select.rs`).
pub fn placement_hash(svc: &PlannedService, client: SocketAddr) -> u32 {
    let key = flow_key(svc, client);
    match svc.serving.entry() {
        Some(e) if e.flags & lb_common::SERVICE_F_HASH_SRC_IP != 0 => source_hash(&key),
        _ => flow_hash(&key),
    }
}

/// The explanation for a new flow from `client`, given the installed table (member indices or
/// the `NO_BACKEND`/`REJECT` markers) and each member's health.
pub fn explain(
    svc: &PlannedService,
    table: &[u32],
    healthy: &[bool],
    client: SocketAddr,
) -> Result<Explanation, ExplainError> {
    if svc.serving == Serving::Proxy {
        return Err(ExplainError::Proxied(svc.name.clone()));
    }
    if client.is_ipv4() != svc.vip.is_ipv4() {
        return Err(ExplainError::Family {
            client,
            vip: svc.vip,
        });
    }
    let hash = placement_hash(svc, client);
    let size = table.len().max(1) as u32;
    let entry = hash % size;
    let candidate = |m: usize| {
        let member = &svc.members[m];
        Candidate {
            address: member.address.to_string(),
            tier: member.rank.tier,
            healthy: healthy[m],
            draining: member.rank.drain,
        }
    };
    let value = table.get(entry as usize).copied().unwrap_or(NO_BACKEND);
    let base = svc.base.get(entry as usize).map(|&m| m as usize);
    let mut skipped = Vec::new();
    if let Some(owner) = base
        && value as usize != owner
    {
        let why = match (svc.members[owner].rank.drain, healthy[owner]) {
            (true, _) => "draining: takes no new flows",
            (false, false) => "down",
            (false, true) => "healthy, but the service fell back past its tier",
        };
        skipped.push((svc.members[owner].address.to_string(), why.to_string()));
    }
    let (chosen, refused) = match value {
        NO_BACKEND => (None, Some("drop".to_string())),
        REJECT => (None, Some("reject".to_string())),
        m => (Some(candidate(m as usize)), None),
    };
    Ok(Explanation {
        service: svc.name.clone(),
        flow: format!("{client} -> {} {}", svc.vip, svc.protocol),
        hash,
        entry,
        table_size: size,
        base_owner: base.map(candidate),
        chosen,
        refused,
        skipped,
        tracked: None,
        denied: None,
    })
}

/// The explanation from a config alone, for planning: every backend healthy, drains as the
/// config says, nothing tracked.
pub fn offline(
    config: &crate::config::Config,
    service: &str,
    client: SocketAddr,
) -> Result<Explanation, ExplainError> {
    let plan = crate::plan::plan(config);
    let svc = plan
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| ExplainError::UnknownService(service.to_string()))?;
    let healthy = vec![true; svc.members.len()];
    let mut e = explain(svc, &svc.member_table(&healthy), &healthy, client)?;
    e.denied = plan.edge.refusal(svc, client.ip()).map(String::from);
    Ok(e)
}

impl Explanation {
    /// The lines `understudy explain` prints.
    pub fn lines(&self) -> Vec<String> {
        let show = |c: &Candidate| {
            let state = match (c.draining, c.healthy) {
                (true, _) => "draining",
                (false, true) => "healthy",
                (false, false) => "down",
            };
            format!("{} (tier {}, {state})", c.address, c.tier)
        };
        let mut out = vec![
            format!("service {}: flow {}", self.service, self.flow),
            format!(
                "hash {:#010x}: entry {} of {}",
                self.hash, self.entry, self.table_size
            ),
        ];
        if let Some(reason) = &self.denied {
            out.push(format!(
                "the access lists refuse this source ({reason}): its packets are dropped before any of the rest"
            ));
        }
        if let Some(b) = &self.base_owner {
            out.push(format!("entry's owner with every backend in: {}", show(b)));
        }
        for (address, why) in &self.skipped {
            out.push(format!("skipped {address}: {why}"));
        }
        match (&self.chosen, &self.refused) {
            (Some(c), _) => out.push(format!("a new flow goes to {}", show(c))),
            (None, Some(r)) => out.push(format!(
                "a new flow is refused ({r}): no backend is available"
            )),
            (None, None) => {}
        }
        match &self.tracked {
            Some(t) => out.push(format!(
                "tracked in FLOWS for {} ms: pinned to {}; {}",
                t.age_ms,
                t.backend
                    .as_deref()
                    .unwrap_or("a backend id no longer held"),
                if t.holds {
                    "the pin holds, so its packets keep going there"
                } else {
                    "the pin no longer holds: its next packet is placed as a new flow"
                }
            )),
            None => out.push("not tracked in FLOWS".to_string()),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{config::Config, plan::plan};

    const TEXT: &str = r#"
dataplane = { interfaces = ["eth0"] }
[[service]]
name = "web"
vip = "10.0.0.10:80"
table_size = 307
backend = [{ address = "10.0.11.2:8080" }, { address = "10.0.11.3:8080" }, { address = "10.0.11.4:8080", tier = 1 }]
"#;

    fn web() -> PlannedService {
        plan(&Config::parse(Path::new("t.toml"), TEXT).unwrap())
            .services
            .remove(0)
    }

    fn table(svc: &PlannedService, healthy: &[bool]) -> Vec<u32> {
        svc.member_table(healthy)
    }

    #[test]
    fn the_chosen_backend_is_the_planned_rings() {
        let svc = web();
        let ring = &svc.initial_ring();
        let all = [true; 3];
        let mut seen = std::collections::BTreeSet::new();
        for port in 40000..40100 {
            let client: SocketAddr = format!("10.0.1.2:{port}").parse().unwrap();
            let e = explain(&svc, &table(&svc, &all), &all, client).unwrap();
            let id = ring[(flow_hash(&flow_key(&svc, client)) % ring.len() as u32) as usize];
            let want = svc.members.iter().find(|m| m.id == id).unwrap().address;
            assert_eq!(e.chosen.as_ref().unwrap().address, want.to_string());
            assert!(e.skipped.is_empty(), "{e:?}");
            seen.insert(want);
        }
        assert_eq!(
            seen.len(),
            2,
            "the backup tier takes nothing while the primary is up"
        );
    }

    #[test]
    fn a_down_or_drained_owner_is_named_as_skipped() {
        let mut svc = web();
        let client: SocketAddr = "10.0.1.2:40000".parse().unwrap();
        let all = [true; 3];
        let owner = explain(&svc, &table(&svc, &all), &all, client)
            .unwrap()
            .chosen
            .unwrap()
            .address;
        let m = svc
            .members
            .iter()
            .position(|m| m.address.to_string() == owner)
            .unwrap();
        let mut healthy = all;
        healthy[m] = false;
        let e = explain(&svc, &table(&svc, &healthy), &healthy, client).unwrap();
        assert_eq!(e.skipped, vec![(owner.clone(), "down".to_string())]);
        assert_ne!(e.chosen.unwrap().address, owner);

        svc.members[m].rank.drain = true;
        let e = explain(&svc, &table(&svc, &all), &all, client).unwrap();
        assert!(e.skipped[0].1.starts_with("draining"), "{e:?}");
        // Everyone down: the default on_all_down drops.
        let none = [false; 3];
        let e = explain(&svc, &table(&svc, &none), &none, client).unwrap();
        assert_eq!((e.chosen, e.refused.as_deref()), (None, Some("drop")));
    }

    #[test]
    fn families_must_match() {
        let svc = web();
        let all = [true; 3];
        let client: SocketAddr = "[fd00:1::2]:40000".parse().unwrap();
        assert!(matches!(
            explain(&svc, &table(&svc, &all), &all, client),
            Err(ExplainError::Family { .. })
        ));
    }
}

//! The daemon's HTTP listeners, one per `mode = "http"` service. A reload is prepared first
//! (certificates loaded, new addresses bound) and committed only when the rest of the reload
//! succeeded: a kept service swaps in its new proxy (keeping its circuits and retry budget), a
//! new one starts listening, a removed one drains: it stops accepting at once and its requests
//! in flight finish (up to `drain_timeout`). A stop drains every listener the same way.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use std::time::Duration;

use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::AbortHandle,
};
use tracing::info;

use super::route::RouteBoard;
use super::{
    Current, Ejection, ServiceProxy, availability::Availability, metrics::L7Metrics, serve_until,
};
use crate::config::Config;

struct Running {
    vip: SocketAddr,
    current: Current,
    abort: AbortHandle,
    drain: watch::Sender<bool>,
}

impl Running {
    /// Stops accepting and lets the connections finish; returns once they have (or after the
    /// drain timeout and a little).
    fn drain(self, name: String) -> impl std::future::Future<Output = ()> {
        let _ = self.drain.send(true);
        let proxy = self.current.load_full();
        let limit = proxy.settings.drain_timeout;
        async move {
            let started = tokio::time::Instant::now();
            let open = proxy.carried.connections.open();
            if open > 0 {
                info!(service = %name, connections = open, drain_timeout = ?limit, "HTTP listener draining");
            }
            // Each connection enforces the timeout itself; this only waits for them.
            while proxy.carried.connections.open() > 0
                && started.elapsed() < limit + Duration::from_secs(1)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.abort.abort();
            info!(service = %name, after = ?started.elapsed(), "HTTP listener stopped");
        }
    }
}

pub struct Listeners {
    running: HashMap<String, Running>,
    availability: Availability,
    ejections: mpsc::UnboundedSender<Ejection>,
    metrics: L7Metrics,
    board: RouteBoard,
}

/// A reload's listeners, ready to commit.
pub struct Prepared {
    services: Vec<(Arc<ServiceProxy>, Option<TcpListener>)>,
}

impl Listeners {
    /// Drains every listener at once (a stop): returns when their connections have finished.
    pub async fn drain_all(&mut self) {
        let draining: Vec<_> = self
            .running
            .drain()
            .map(|(name, r)| tokio::spawn(r.drain(name)))
            .collect();
        for d in draining {
            let _ = d.await;
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.abort.abort();
        }
    }
}

impl Listeners {
    pub fn new(
        availability: Availability,
        ejections: mpsc::UnboundedSender<Ejection>,
        metrics: L7Metrics,
    ) -> Listeners {
        Listeners {
            running: HashMap::new(),
            availability,
            ejections,
            metrics,
            board: RouteBoard::default(),
        }
    }

    /// The running proxies, for `/status` to show their routes.
    pub fn board(&self) -> RouteBoard {
        self.board.clone()
    }

    /// Builds every HTTP service's proxy and binds the addresses not bound yet.
    pub async fn prepare(&self, config: &Config) -> Result<Prepared, String> {
        let mut services = Vec::new();
        let credentials = Arc::new(super::auth::Credentials::new(&config.gateway));
        for svc in config.services.iter().filter(|s| s.mode.http().is_some()) {
            let running = self.running.get(&svc.name);
            let carried = running.map(|r| r.current.load().carried.clone());
            let proxy = ServiceProxy::new(
                svc,
                self.availability.clone(),
                carried,
                Some(self.ejections.clone()),
                self.metrics.clone(),
                &credentials,
            )
            .map_err(|e| format!("service {}: {e}", svc.name))?;
            let listener = match running {
                Some(r) if r.vip == svc.vip => None,
                _ => Some(TcpListener::bind(svc.vip).await.map_err(|e| {
                    let hint = if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                        format!(
                            "; the VIP must be an address of this host, e.g. `ip addr add {}/{} dev lo`",
                            svc.vip.ip(),
                            if svc.vip.is_ipv4() { 32 } else { 128 }
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        "{}: service {}: cannot listen on {}: {e}{hint}",
                        config.file.display(),
                        svc.name,
                        svc.vip
                    )
                })?),
            };
            services.push((Arc::new(proxy), listener));
        }
        Ok(Prepared { services })
    }

    /// Puts a prepared set of listeners in service.
    pub fn commit(&mut self, prepared: Prepared) {
        let mut next = HashMap::new();
        for (proxy, listener) in prepared.services {
            let name = proxy.name.clone();
            let vip = proxy.vip;
            let tls = proxy.tls.is_some();
            match (self.running.remove(&name), listener) {
                (Some(r), None) => {
                    r.current.store(proxy);
                    next.insert(name, r);
                }
                (old, Some(listener)) => {
                    if let Some(old) = old {
                        // Moved to a new address: the old one drains.
                        tokio::spawn(old.drain(name.clone()));
                    }
                    let (drain, drained) = watch::channel(false);
                    let current: Current = Arc::new(ArcSwap::new(proxy));
                    let task = tokio::spawn(serve_until(listener, current.clone(), drained));
                    info!(service = %name, listen = %vip, tls, "HTTP listener ready");
                    next.insert(
                        name,
                        Running {
                            vip,
                            current,
                            abort: task.abort_handle(),
                            drain,
                        },
                    );
                }
                (None, None) => unreachable!("a new service is always bound"),
            }
        }
        for (name, r) in self.running.drain() {
            tokio::spawn(r.drain(name));
        }
        self.running = next;
        if let Ok(mut b) = self.board.write() {
            *b = self
                .running
                .iter()
                .map(|(name, r)| (name.clone(), r.current.clone()))
                .collect();
        }
    }
}

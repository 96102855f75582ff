//! The admin listener (loopback by default): `GET /` (an HTML status page), `GET /metrics`
//! (Prometheus text), `GET /status`
//! (JSON), `POST /drain` and `POST /enable` (`?service=NAME&backend=IP:PORT`), and `POST /reload`. With a token
//! configured, every request must carry `Authorization: Bearer <token>`. Every request also
//! passes [`guard`] (Host, Origin, and a non-simple header on state changes), so a web page in
//! the operator's browser can neither drive nor read the API. Requests reach the map writer over
//! its control channel, so the writer stays the only one touching the data plane.

pub mod client;
pub mod guard;
mod metrics;
mod page;

use std::{
    convert::Infallible,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::histogram::Histogram;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::{
    health::Board,
    l7::limits::{AcceptErrors, Activity, ConnectionCount, LastActivity},
    status::Snapshot,
    writer::{Control, DrainError},
};

/// Reloads counted for `/metrics`.
#[derive(Default)]
pub struct Reloads {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// Why a reload was refused. The admin API answers each with its own status: 422 for a config
/// that does not validate, 409 for a change the running daemon cannot take without a restart,
/// 500 when applying it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NeedsRestart(String),
    #[error("{0}")]
    Failed(String),
}

impl ReloadError {
    pub fn status(&self) -> StatusCode {
        match self {
            ReloadError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ReloadError::NeedsRestart(_) => StatusCode::CONFLICT,
            ReloadError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The admin token, shared with the daemon, which swaps it on reload.
pub type SharedToken = Arc<std::sync::RwLock<Option<String>>>;

/// What every request handler shares.
pub struct AdminState {
    pub control: mpsc::Sender<Control>,
    /// Asks the daemon to reload its config file; the answer says what happened.
    pub reload: mpsc::Sender<oneshot::Sender<Result<String, ReloadError>>>,
    pub reloads: Arc<Reloads>,
    /// Every backend's last probe.
    pub board: Board,
    /// Where the maps are pinned: `/metrics` opens `FLOWS` there to count it.
    pub pin_dir: Option<std::path::PathBuf>,
    pub latency: Histogram,
    /// The bearer token every request must carry; replaced when a reload re-reads
    /// `token_file`, so a rotated token applies without a restart.
    pub token: SharedToken,
    /// `[admin] allowed_hosts`: names a request's `Host` may carry besides IP literals.
    pub allowed_hosts: Vec<String>,
    /// The HTTP proxy's request, attempt, budget and ejection counters.
    pub l7: crate::l7::metrics::L7Metrics,
    /// The HTTP services' running proxies, whose routes `/status` shows.
    pub routes: crate::l7::route::RouteBoard,
    /// The node's announcement, and the way to drain and enable it (`None` without
    /// `[announce]`).
    pub node: crate::announce::SharedStatus,
    pub announcer: Option<mpsc::Sender<crate::announce::Command>>,
    /// The last count of `FLOWS`, and when it was taken.
    pub flow_cache: tokio::sync::Mutex<Option<(Instant, Arc<metrics::FlowCount>)>>,
}

/// Admin connections open at once; past it the listener waits for one to close.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// An admin connection that moves no byte for this long is closed; a request head must arrive
/// within [`ADMIN_HEADER_TIMEOUT`].
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves admin requests on `listener` until the task is dropped, at most
/// [`MAX_ADMIN_CONNECTIONS`] at once, each with a header and an idle timeout, so that clients
/// holding connections cannot lock operators out.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let connections = Arc::new(ConnectionCount::default());
    let mut accept_errors = AcceptErrors::default();
    loop {
        let slot = connections
            .acquire(
                || MAX_ADMIN_CONNECTIONS,
                || {
                    warn!(
                        max = MAX_ADMIN_CONNECTIONS,
                        "admin listener full: not accepting until a connection closes"
                    )
                },
            )
            .await;
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                accept_errors.back_off("admin", &e).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| handle(req, state.clone()));
            let last = LastActivity::new();
            let io = TokioIo::new(Activity::new(stream, last.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(io, service);
            tokio::pin!(conn);
            let served = tokio::select! {
                r = conn.as_mut() => r,
                () = last.idle_for(ADMIN_IDLE_TIMEOUT) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into() + "\n")
}

/// Compares in constant time, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request<Incoming>, token: &Option<String>) -> bool {
    let Some(token) = token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.as_bytes(), token.as_bytes()))
}

/// How long a count of `FLOWS` serves scrapes: walking a full table takes up to a few hundred
/// milliseconds, so scrapes may not start one walk each.
const FLOW_COUNT_TTL: Duration = Duration::from_secs(10);

/// The count of `FLOWS`, from the cache when it is fresh. One walk runs at a time (scrapes
/// arriving meanwhile wait for it), never on the writer, never on the async workers.
async fn flow_count(state: &AdminState) -> Option<Arc<metrics::FlowCount>> {
    let mut cache = state.flow_cache.lock().await;
    if let Some((at, count)) = cache.as_ref()
        && at.elapsed() < FLOW_COUNT_TTL
    {
        return Some(count.clone());
    }
    let dir = state.pin_dir.clone()?;
    let count = tokio::task::spawn_blocking(move || metrics::count_flows(&dir))
        .await
        .ok()?
        .map_err(|e| warn!(error = %e, "counting FLOWS failed"))
        .ok()?;
    let count = Arc::new(count);
    *cache = Some((Instant::now(), count.clone()));
    Some(count)
}

/// The writer's snapshot, with each backend's last probe from the health board.
async fn snapshot(state: &AdminState) -> Option<Snapshot> {
    let (tx, rx) = oneshot::channel();
    state.control.send(Control::Snapshot(tx)).await.ok()?;
    let mut s = rx.await.ok()?;
    for svc in &mut s.services {
        svc.routes = crate::l7::route::statuses(&state.routes, &svc.name);
    }
    if let Ok(board) = state.board.read() {
        for b in s
            .services
            .iter_mut()
            .flat_map(|svc| svc.backends.iter_mut())
        {
            if let Some(Some(check)) = board.get(b.id as usize) {
                b.last_check_ok = Some(check.ok);
                b.last_check = Some(check.reason.clone());
                b.last_check_at = Some(check.at);
                // Only while the writer still holds it down: the board lags a health change.
                b.waiting_for_first_check = check.waiting && !b.healthy;
            }
        }
    }
    if let Ok(node) = state.node.read() {
        s.node = node.clone();
    }
    Some(s)
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let token = state
        .token
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !authorized(&req, &token) {
        let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return Ok(r);
    }
    if let Err(refused) = guard::check(
        req.method(),
        req.headers(),
        &state.allowed_hosts,
        token.is_some(),
    ) {
        warn!(method = %req.method(), path = req.uri().path(), why = %refused.why, "admin request refused");
        return Ok(text(refused.status, refused.why));
    }
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let unavailable = || {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the map writer is not running",
        )
    };
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => match snapshot(&state).await {
            Some(s) => reply(StatusCode::OK, "text/html; charset=utf-8", page::render(&s)),
            None => unavailable(),
        },
        (&Method::GET, "/metrics") => match snapshot(&state).await {
            Some(s) => {
                let flows = flow_count(&state).await;
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics::render(
                        &s,
                        &state.latency,
                        &state.reloads,
                        flows.as_deref(),
                        &state.l7,
                    ),
                )
            }
            None => unavailable(),
        },
        (&Method::GET, "/status") => match snapshot(&state).await {
            Some(s) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&s).unwrap_or_default(),
            ),
            None => unavailable(),
        },
        (&Method::POST, path @ ("/drain" | "/enable")) => {
            match (param("service"), param("backend")) {
                (Some(service), Some(backend)) => {
                    let (tx, rx) = oneshot::channel();
                    let drain = path == "/drain";
                    let sent = state
                        .control
                        .send(Control::Drain {
                            service,
                            backend,
                            drain,
                            reply: tx,
                        })
                        .await;
                    match (sent, rx.await) {
                        (Ok(()), Ok(Ok(()))) => text(StatusCode::OK, "ok"),
                        (Ok(()), Ok(Err(why))) => {
                            let status = match why {
                                DrainError::UnknownService(_)
                                | DrainError::UnknownBackend { .. } => StatusCode::NOT_FOUND,
                                DrainError::MapWrite(_) => StatusCode::INTERNAL_SERVER_ERROR,
                            };
                            text(status, why.to_string())
                        }
                        _ => unavailable(),
                    }
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "give ?service=NAME&backend=IP:PORT",
                ),
            }
        }
        (&Method::GET, "/explain") => {
            let client = param("client").and_then(|c| c.parse::<std::net::SocketAddr>().ok());
            match (param("service"), client) {
                (Some(service), Some(client)) => {
                    let (tx, rx) = oneshot::channel();
                    let sent = state
                        .control
                        .send(Control::Explain {
                            service,
                            client,
                            reply: tx,
                        })
                        .await;
                    match (sent, rx.await) {
                        (Ok(()), Ok(Ok(e))) => reply(
                            StatusCode::OK,
                            "application/json",
                            serde_json::to_string_pretty(&e).unwrap_or_default(),
                        ),
                        (Ok(()), Ok(Err(why))) => {
                            let status = match why {
                                crate::explain::ExplainError::UnknownService(_) => {
                                    StatusCode::NOT_FOUND
                                }
                                crate::explain::ExplainError::Proxied(_) => StatusCode::CONFLICT,
                                crate::explain::ExplainError::Family { .. } => {
                                    StatusCode::BAD_REQUEST
                                }
                            };
                            text(status, why.to_string())
                        }
                        _ => unavailable(),
                    }
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "give ?service=NAME&client=IP:PORT (the client's address and source port)",
                ),
            }
        }
        (&Method::POST, path @ ("/node/drain" | "/node/enable")) => match &state.announcer {
            None => text(
                StatusCode::CONFLICT,
                "this node announces nothing: add [announce] to the config to announce its VIPs through BIRD",
            ),
            Some(announcer) => {
                let (tx, rx) = oneshot::channel();
                let command = if path == "/node/drain" {
                    crate::announce::Command::Drain(tx)
                } else {
                    crate::announce::Command::Enable(tx)
                };
                match (announcer.send(command).await, rx.await) {
                    (Ok(()), Ok(Ok(()))) => text(StatusCode::OK, "ok"),
                    (Ok(()), Ok(Err(why))) => text(
                        StatusCode::BAD_GATEWAY,
                        format!("the node's state changed, but BIRD was not updated: {why}"),
                    ),
                    _ => unavailable(),
                }
            }
        },
        (&Method::POST, "/reload") => {
            let (tx, rx) = oneshot::channel();
            match (state.reload.send(tx).await, rx.await) {
                (Ok(()), Ok(Ok(summary))) => text(StatusCode::OK, summary),
                (Ok(()), Ok(Err(why))) => text(why.status(), why.to_string()),
                _ => unavailable(),
            }
        }
        (
            _,
            "/metrics" | "/status" | "/explain" | "/drain" | "/enable" | "/reload" | "/node/drain"
            | "/node/enable",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "wrong method"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try GET /, GET /metrics, GET /status, GET /explain, POST /drain, POST /enable, POST /node/drain, POST /node/enable, POST /reload",
        ),
    };
    Ok(response)
}

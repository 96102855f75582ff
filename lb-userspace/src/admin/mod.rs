//! The admin listener (loopback by default): `GET /` (an HTML status page), `GET /metrics`
//! (Prometheus text), `GET /status`
//! (JSON), `POST /drain` and `POST /enable` (`?service=NAME&backend=IP:PORT`), and `POST /reload`. With tokens
//! configured, every request must carry `Authorization: Bearer <token>` of one of them. Every
//! state-changing request, served or refused, leaves one record in the [`crate::audit`] log,
//! naming the token it carried. Every request also
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
use tracing::{debug, info, warn};

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

/// The admin tokens, shared with the daemon, which swaps them on reload.
pub type SharedTokens = Arc<std::sync::RwLock<Vec<crate::config::AdminToken>>>;

/// What the daemon is asked to reload for: who asked, and where to send the answer.
pub type ReloadRequest = (
    crate::audit::Caller,
    oneshot::Sender<Result<String, ReloadError>>,
);

/// What every request handler shares.
pub struct AdminState {
    pub control: mpsc::Sender<Control>,
    /// Asks the daemon to reload its config file; the answer says what happened.
    pub reload: mpsc::Sender<ReloadRequest>,
    pub reloads: Arc<Reloads>,
    /// Every backend's last probe.
    pub board: Board,
    /// Where the maps are pinned: `/metrics` opens `FLOWS` there to count it.
    pub pin_dir: Option<std::path::PathBuf>,
    pub latency: Histogram,
    /// The bearer tokens a request may carry (none: no token needed); replaced when a reload
    /// re-reads the token files, so a rotated token applies without a restart.
    pub tokens: SharedTokens,
    /// Where every admin action is recorded.
    pub audit: crate::audit::SharedAudit,
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
            let service = service_fn(move |req| handle(req, peer, state.clone()));
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
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Whether the request may in: `Ok(None)` when no token is configured, `Ok(Some(name))` with
/// the name of the token it carries, `Err` otherwise. Every token is compared, so the time
/// taken says nothing about which one nearly matched.
fn authorized(
    req: &Request<Incoming>,
    tokens: &[crate::config::AdminToken],
) -> Result<Option<String>, ()> {
    if tokens.is_empty() {
        return Ok(None);
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut found = None;
    for t in tokens {
        if same(given.as_bytes(), t.token.as_bytes()) {
            found = Some(t.name.clone());
        }
    }
    found.map(Some).ok_or(())
}

/// The audit log's name for a state-changing request, `None` for reads.
fn action(method: &Method, path: &str) -> Option<&'static str> {
    if *method != Method::POST {
        return None;
    }
    Some(match path {
        "/drain" => "drain",
        "/enable" => "enable",
        "/node/drain" => "node_drain",
        "/node/enable" => "node_enable",
        "/reload" => "reload",
        _ => return None,
    })
}

/// What the caller was told: the text of a reply's (one-chunk, in-memory) body.
async fn body_text(response: &Response<Full<Bytes>>) -> String {
    let bytes = http_body_util::BodyExt::collect(response.body().clone())
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Records an admin action that got `response`: refused, invalid or failed by its status.
async fn audit(
    state: &AdminState,
    action: &'static str,
    caller: crate::audit::Caller,
    target: &[(&'static str, Option<String>)],
    response: &Response<Full<Bytes>>,
    body: &str,
) {
    use crate::audit::{Outcome, Record};
    let status = response.status();
    let result = match status.as_u16() {
        200..=299 => Outcome::Ok,
        401 | 403 => Outcome::Refused,
        400 | 404 | 409 | 422 => Outcome::Invalid,
        _ => Outcome::Failed,
    };
    let mut record = Record::new(action, caller, result, body.trim().to_string());
    record.status = Some(status.as_u16());
    for (k, v) in target {
        if let Some(v) = v {
            record.target.insert(k, v.clone());
        }
    }
    state.audit.record(record).await;
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
    peer: std::net::SocketAddr,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let tokens = state
        .tokens
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let action = action(req.method(), req.uri().path());
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
    let target = [("service", param("service")), ("backend", param("backend"))];
    let token_name = match authorized(&req, &tokens) {
        Ok(name) => name,
        Err(()) => {
            let why = "missing or wrong bearer token";
            let mut r = text(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            if let Some(action) = action {
                warn!(%peer, action, "admin action refused: {why}");
                audit(
                    &state,
                    action,
                    crate::audit::Caller::api(peer, None),
                    &target,
                    &r,
                    why,
                )
                .await;
            }
            return Ok(r);
        }
    };
    let caller = crate::audit::Caller::api(peer, token_name.clone());
    if let Err(refused) = guard::check(
        req.method(),
        req.headers(),
        &state.allowed_hosts,
        token_name.is_some(),
    ) {
        warn!(%peer, method = %req.method(), path = req.uri().path(), why = %refused.why, "admin request refused");
        let r = text(refused.status, refused.why.clone());
        if let Some(action) = action {
            audit(&state, action, caller, &target, &r, &refused.why).await;
        }
        return Ok(r);
    }
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
                        &state.audit,
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
            // The daemon records the reload, with what it changed.
            let (tx, rx) = oneshot::channel();
            match (state.reload.send((caller.clone(), tx)).await, rx.await) {
                (Ok(()), Ok(Ok(summary))) => return Ok(text(StatusCode::OK, summary)),
                (Ok(()), Ok(Err(why))) => return Ok(text(why.status(), why.to_string())),
                // The daemon never saw it: recorded here, as failed.
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
    if let Some(action) = action {
        let body = body_text(&response).await;
        info!(%peer, token = token_name.as_deref().unwrap_or("-"), action, status = response.status().as_u16(), "admin action");
        audit(&state, action, caller, &target, &response, &body).await;
    }
    Ok(response)
}

//! HTTP/1.1 `Upgrade` (WebSocket and the like): the request goes to the chosen backend with its
//! `Connection: upgrade` and `Upgrade` intact, and when the backend answers 101 the client's and
//! the backend's connections are joined into a byte tunnel until either side closes.
//!
//! - Until a backend answers 101, the request is an ordinary GET: a refused connect, a 503 or a
//!   reset is retried on the next backend under the usual rules. Once upgraded, nothing is.
//! - The tunnel holds the backend's circuit permit, so an open WebSocket counts against
//!   `max_requests` until it closes, as a streaming response does.
//! - A backend that answers anything but 101 has its response passed on as usual.
//! - When either side closes or fails, the other is closed (after a 1 s grace for the last bytes
//!   in the other direction): a backend killed mid-socket closes the client's socket.
//!
//! HTTP/2's extended CONNECT (RFC 8441) is not offered: WebSocket clients use HTTP/1.1.

use std::net::SocketAddr;

use hyper::{
    HeaderMap, Version,
    header::{self, HeaderValue},
    http::request::Parts,
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::circuit::Permit;

/// The `Upgrade` value of a request that asks for one: HTTP/1.1, `Connection` naming
/// `upgrade`, and an `Upgrade` header.
pub fn requested(head: &Parts) -> Option<HeaderValue> {
    if head.version != Version::HTTP_11 {
        return None;
    }
    let asks = super::headers::lists(&head.headers, header::CONNECTION, "upgrade");
    asks.then(|| head.headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts the upgrade back into headers the hop-by-hop rewrite stripped.
pub fn restore(headers: &mut HeaderMap, upgrade: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.clone());
}

/// Joins the two upgraded connections in a task; `permit` is held until the tunnel ends.
pub fn tunnel(
    service: String,
    backend: SocketAddr,
    client: OnUpgrade,
    upstream: OnUpgrade,
    permit: Option<Permit>,
) {
    tokio::spawn(async move {
        let _permit = permit;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                debug!(%service, %backend, error = %e, "upgrade failed");
                return;
            }
        };
        let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
        let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
        let up = one_way(client_read, upstream_write);
        let down = one_way(upstream_read, client_write);
        tokio::pin!(up, down);
        // When one side is done, the other gets FIN_GRACE to finish (HAProxy's
        // `timeout client-fin` and `server-fin`), then both are closed.
        let first = tokio::select! {
            r = &mut up => ("client", r),
            r = &mut down => ("backend", r),
        };
        let _ = tokio::time::timeout(FIN_GRACE, async {
            if first.0 == "client" {
                let _ = (&mut down).await;
            } else {
                let _ = (&mut up).await;
            }
        })
        .await;
        match first.1 {
            Ok(n) => {
                debug!(%service, %backend, closed_by = first.0, bytes = n, "upgraded connection closed")
            }
            Err(e) => {
                debug!(%service, %backend, side = first.0, error = %e, "upgraded connection broke")
            }
        }
    });
}

/// How long the other direction may go on once one side has closed.
const FIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies until EOF, then shuts the writer down.
async fn one_way(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) -> std::io::Result<u64> {
    use tokio::io::AsyncWriteExt as _;
    let n = tokio::io::copy(&mut from, &mut to).await?;
    to.shutdown().await?;
    Ok(n)
}

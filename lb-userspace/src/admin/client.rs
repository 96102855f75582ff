//! The CLI's side of the admin API: one HTTP/1.1 request through hyper.

use std::net::SocketAddr;

use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends `method path` to the admin listener at `addr`; returns the status and body.
pub async fn request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
) -> anyhow::Result<(StatusCode, String)> {
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the admin listener at {addr}: {e}; is understudy running, and is \
             [admin] listen set to this address?"
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(super::guard::CLIENT_HEADER, "understudy");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let response = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `?service=...&backend=...`, percent-encoded.
pub fn drain_query(service: &str, backend: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("service", service)
        .append_pair("backend", backend)
        .finish()
}

//! One probe of one backend: TCP connect, an HTTP(S) request through hyper (and tokio-rustls), or
//! a UDP request/response. `Err` carries a short reason for logs. In DSR and tunnel modes a probe
//! can follow the client's path ([`Path`]): it is addressed to the VIP and marked, and the kernel
//! sends it the way the service sends clients (`dataplane::probe_path`).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, body::Bytes, header};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream, UdpSocket},
};
use tokio_rustls::TlsConnector;

use crate::config::{Check, HealthCheck, HttpCheck, TlsCheck, UdpCheck};

/// Most of a response body an HTTP check reads for `expect_body`.
const BODY_LIMIT: usize = 64 * 1024;

/// What a check needs prepared once, not per probe.
pub struct Prober {
    check: HealthCheck,
    /// An HTTPS check's connector, built once.
    tls: Option<TlsConnector>,
}

impl Prober {
    pub fn new(check: &HealthCheck) -> Result<Prober, String> {
        let tls = match &check.check {
            Check::Https(_, t) => Some(TlsConnector::from(Arc::new(tls_config(t)?))),
            _ => None,
        };
        Ok(Prober {
            check: check.clone(),
            tls,
        })
    }

    /// Whether there is an active check at all.
    pub fn is_active(&self) -> bool {
        self.check.check != Check::None
    }

    /// Probes `backend` (or its check port) once, within the check's timeout: directly, or
    /// along `path`. A probe along the path that fails is tried once more on the backend's own
    /// address, so the reason says whether the server is down or only its path is broken.
    pub async fn probe(&self, backend: SocketAddr, path: Option<&Path>) -> Result<(), ProbeError> {
        let direct = SocketAddr::new(backend.ip(), self.check.port.unwrap_or(backend.port()));
        let Some(path) = path else {
            return self.timed(direct, None).await;
        };
        let target = SocketAddr::new(path.vip.ip(), self.check.port.unwrap_or(path.vip.port()));
        match self.timed(target, Some(path)).await {
            Err(ProbeError::Backend(why)) => {
                Err(ProbeError::Backend(match self.timed(direct, None).await {
                    Ok(()) => format!(
                        "{why} via {} to {target}, yet {direct} answers directly: {}",
                        path.mode,
                        path.hint()
                    ),
                    Err(e) => format!("{why} via {} to {target}; directly too: {e}", path.mode),
                }))
            }
            other => other,
        }
    }

    async fn timed(&self, target: SocketAddr, path: Option<&Path>) -> Result<(), ProbeError> {
        match tokio::time::timeout(self.check.timeout, self.run(target, path)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Backend(format!(
                "timeout after {:?}",
                self.check.timeout
            ))),
        }
    }

    async fn run(&self, target: SocketAddr, path: Option<&Path>) -> Result<(), ProbeError> {
        match &self.check.check {
            Check::None => Ok(()),
            Check::Tcp => connect(target, path).await.map(drop),
            Check::Http(http) => Ok(http_check(connect(target, path).await?, http, target).await?),
            Check::Https(http, tls) => {
                let connector = self.tls.as_ref().ok_or("https check without TLS")?;
                let name = server_name(tls.sni.as_deref().or(http.host.as_deref()), target)?;
                let tcp = connect(target, path).await?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                Ok(http_check(stream, http, target).await?)
            }
            Check::Udp(udp) => Ok(udp_check(udp, target, path).await?),
        }
    }
}

/// How a probe follows the client's path in DSR and tunnel modes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The service's VIP and port; the check's `port`, if set, replaces the port.
    pub vip: SocketAddr,
    /// `SO_MARK`: `lb_common::probe::mark(mode, backend id)`.
    pub mark: u32,
    /// The balancer's address the backend answers; `None` lets the kernel choose.
    pub source: Option<IpAddr>,
    /// The mode's word ("dsr", "ipip", "gue"), for reasons.
    pub mode: &'static str,
}

impl Path {
    /// What to check on a backend that answers on its own address but not on the VIP.
    fn hint(&self) -> &'static str {
        if self.mode == "dsr" {
            "is the VIP bound on the backend (on lo, with arp_ignore=1 and arp_announce=2), and \
             is the backend on the balancer's L2 segment?"
        } else {
            "is the backend decapsulating (understudy decap, or the kernel's ipip/fou) with the \
             VIP bound, and does it answer the balancer from the VIP?"
        }
    }
}

/// Why a probe failed: the backend's answer (or its silence), or this host's own lack of
/// resources, which says nothing about the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Backend(String),
    /// Out of file descriptors or local ports: the result is thrown away, so clients that
    /// exhaust the daemon cannot mark healthy backends down.
    #[error("{0} (a local shortage, not the backend's failure)")]
    Local(String),
}

impl From<String> for ProbeError {
    fn from(s: String) -> Self {
        ProbeError::Backend(s)
    }
}

impl From<&str> for ProbeError {
    fn from(s: &str) -> Self {
        ProbeError::Backend(s.to_string())
    }
}

/// Whether an error is this host's shortage rather than the peer's answer.
fn local_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

fn classify(what: &str, e: std::io::Error) -> ProbeError {
    if local_shortage(&e) {
        ProbeError::Local(format!("{what}: {e}"))
    } else {
        ProbeError::Backend(format!("{what}: {e}"))
    }
}

/// A TCP connection to `target`, marked and bound for `path` if there is one.
async fn connect(target: SocketAddr, path: Option<&Path>) -> Result<TcpStream, ProbeError> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| classify("socket", e))?;
    if let Some(path) = path {
        socket2::SockRef::from(&socket)
            .set_mark(path.mark)
            .map_err(|e| ProbeError::Local(format!("SO_MARK (needs CAP_NET_ADMIN): {e}")))?;
        if let Some(source) = path.source {
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|e| classify(&format!("bind to {source}"), e))?;
        }
    }
    socket
        .connect(target)
        .await
        .map_err(|e| classify("connect", e))
}

async fn http_check<S>(io: S, check: &HttpCheck, target: SocketAddr) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let host = check.host.clone().unwrap_or_else(|| target.to_string());
    let request = Request::builder()
        .method(check.method.as_str())
        .uri(check.path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, "understudy-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status().as_u16();
    let result = if !check
        .expect_status
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&status))
    {
        Err(format!("status {status}"))
    } else if let Some(want) = &check.expect_body {
        let body = Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if String::from_utf8_lossy(&body).contains(want.as_str()) {
            Ok(())
        } else {
            Err(format!("body lacks \"{want}\""))
        }
    } else {
        Ok(())
    };
    conn.abort();
    result
}

async fn udp_check(
    check: &UdpCheck,
    target: SocketAddr,
    path: Option<&Path>,
) -> Result<(), String> {
    let unspecified: IpAddr = if target.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let local = SocketAddr::new(path.and_then(|p| p.source).unwrap_or(unspecified), 0);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(path) = path {
        socket
            .set_mark(path.mark)
            .map_err(|e| format!("SO_MARK (needs CAP_NET_ADMIN): {e}"))?;
    }
    socket
        .set_nonblocking(true)
        .and_then(|()| socket.bind(&local.into()))
        .map_err(|e| format!("bind: {e}"))?;
    let socket = UdpSocket::from_std(socket.into()).map_err(|e| format!("socket: {e}"))?;
    // (A bind failure here is local too, but UDP checks are not what a client flood exhausts.)
    socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    socket
        .send(&check.send)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    let reply = &buf[..n];
    let ok = if check.prefix {
        reply.starts_with(&check.expect)
    } else {
        reply == check.expect.as_slice()
    };
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected reply of {n} bytes"))
    }
}

pub(crate) fn server_name(
    name: Option<&str>,
    target: SocketAddr,
) -> Result<ServerName<'static>, String> {
    match name {
        Some(n) => ServerName::try_from(n.to_string()).map_err(|e| format!("server name {n}: {e}")),
        None => Ok(ServerName::IpAddress(target.ip().into())),
    }
}

pub(crate) fn tls_config(t: &TlsCheck) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    if t.insecure_skip_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    match &t.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `insecure_skip_verify`: any certificate passes, but the handshake signatures are still checked
/// for well-formedness by the provider's algorithms list.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The wait before the next probe: `interval` times a random factor in `1 ± jitter`.
pub fn jittered(interval: Duration, jitter: f64) -> Duration {
    let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
    interval.mul_f64(factor.max(0.0))
}

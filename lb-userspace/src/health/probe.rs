//! One probe of one backend: TCP connect, an HTTP(S) request through hyper (and tokio-rustls), or
//! a UDP request/response. `Err` carries a short reason for logs.

use std::{net::SocketAddr, sync::Arc, time::Duration};

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
    net::{TcpStream, UdpSocket},
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

    /// Probes `backend` (or its check port) once, within the check's timeout.
    pub async fn probe(&self, backend: SocketAddr) -> Result<(), ProbeError> {
        let target = SocketAddr::new(backend.ip(), self.check.port.unwrap_or(backend.port()));
        match tokio::time::timeout(self.check.timeout, self.run(target)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Backend(format!(
                "timeout after {:?}",
                self.check.timeout
            ))),
        }
    }

    async fn run(&self, target: SocketAddr) -> Result<(), ProbeError> {
        match &self.check.check {
            Check::None => Ok(()),
            Check::Tcp => connect(target).await.map(drop),
            Check::Http(http) => Ok(http_check(connect(target).await?, http, target).await?),
            Check::Https(http, tls) => {
                let connector = self.tls.as_ref().ok_or("https check without TLS")?;
                let name = server_name(tls.sni.as_deref().or(http.host.as_deref()), target)?;
                let tcp = connect(target).await?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                Ok(http_check(stream, http, target).await?)
            }
            Check::Udp(udp) => Ok(udp_check(udp, target).await?),
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

async fn connect(target: SocketAddr) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(target).await.map_err(|e| {
        if local_shortage(&e) {
            ProbeError::Local(format!("connect: {e}"))
        } else {
            ProbeError::Backend(format!("connect: {e}"))
        }
    })
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

async fn udp_check(check: &UdpCheck, target: SocketAddr) -> Result<(), String> {
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("bind: {e}"))?;
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

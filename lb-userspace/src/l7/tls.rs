//! TLS termination: each configured certificate is loaded once, and the handshake picks the first
//! whose names cover the client's SNI (checked by webpki, wildcards included). Clients without
//! SNI, or with a name no certificate covers, get the first certificate, as HAProxy's default
//! certificate. ALPN offers h2 and http/1.1.

use std::{fmt, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;

use crate::config::Certificate;

struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SniResolver({} certificates)", self.keys.len())
    }
}

impl SniResolver {
    fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
        key.cert.first().is_some_and(|leaf| {
            webpki::EndEntityCert::try_from(leaf)
                .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|sni| ServerName::try_from(sni.to_string()).ok())
            .and_then(|name| self.keys.iter().find(|k| Self::covers(k, &name)));
        chosen.or(self.keys.first()).cloned()
    }
}

/// Loads the certificates and builds the acceptor.
pub fn acceptor(certs: &[Certificate]) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut keys = Vec::new();
    for c in certs {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
            .map_err(|e| format!("{}: {e}", c.cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", c.cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate in the file", c.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&c.key)
            .map_err(|e| format!("{}: {e}", c.key.display()))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("{}: {e}", c.key.display()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| format!("{} and {}: {e}", c.cert.display(), c.key.display()))?;
        keys.push(Arc::new(certified));
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

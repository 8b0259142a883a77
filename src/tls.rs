//! TLS material on rustls with the ring provider: the gateway listener's certificate and key,
//! read from PEM files while the config is validated (so that a broken file is a config error
//! and a reload re-reads them), and the client settings for `https://` replicas (the system's
//! CA roots plus an optional private CA), for proxied requests and metrics scrapes alike.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How a pool's replicas are spoken to over TLS.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Roots to verify replicas with; HTTP/1.1 by ALPN.
    pub config: Arc<ClientConfig>,
    /// The name replicas' certificates are checked against instead of the host in their URL.
    pub server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// For pools without `https://` replicas, whose clients never start a handshake but are
    /// built alike: trusts no certificate, reads no file.
    pub fn unused() -> Self {
        static NONE: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        let config = NONE.get_or_init(|| client_config_with(RootCertStore::empty()));
        Self {
            config: config.clone(),
            server_name: None,
        }
    }

    /// The name to check a replica at `host` (a DNS name or an IP address) against.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|_| format!("`{host}` is not a name a certificate can carry")),
        }
    }

    /// A connector for hyper-util's client: `https://` URLs with these settings, `http://`
    /// ones in the clear.
    pub fn connector(&self) -> HttpsConnector<HttpConnector> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let mut config = (*self.config).clone();
        config.alpn_protocols.clear(); // the builder sets them (and insists on it)
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let builder = match &self.server_name {
            Some(name) => {
                builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
            }
            None => builder,
        };
        builder.enable_http1().wrap_connector(http)
    }
}

fn provider() -> Arc<CryptoProvider> {
    static RING: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    RING.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Every certificate in a PEM file, in order (a chain: the server's own first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}` is not readable PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "`{}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "`{}` holds no PEM private key (PKCS#8, RSA or EC)",
            path.display()
        ),
        e => format!("`{}` is not readable PEM: {e}", path.display()),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

/// The listener's settings for a certificate chain and its key (checked to match). ALPN offers
/// HTTP/2 and HTTP/1.1, as the plain listener serves both.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the key does not belong to the certificate (the chain's first)".to_string()
            }
            e => format!("the certificate and key are not usable: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client settings that trust the system's CA roots and the certificates in `extra` (a
/// private CA). Fails when that is no root at all.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        let why = system
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), |e| e.to_string());
        return Err(format!(
            "no CA certificate to verify replicas with: the system has none ({why}); name one in `ca`"
        ));
    }
    Ok(client_config_with(roots))
}

fn client_config_with(roots: RootCertStore) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

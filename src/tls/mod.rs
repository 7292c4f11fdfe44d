//! TLS on the server side (`[tls]`): the certificates pgtenant presents,
//! chosen by SNI, and a rustls configuration for each. One crypto
//! provider is compiled in (ring). A reload loads the files again into a
//! new [`ServerTls`] in the new snapshot; handshakes under way, and
//! connections already encrypted, keep what they started with.

mod backend;
mod certs;
mod peer_certs;
mod resolver;
#[cfg(test)]
mod tests;

use crate::config::{TlsConfig, TlsVersion};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

pub use backend::backend_config;
pub use certs::end_point_hash;
pub use peer_certs::certificate_names;
pub use resolver::SniResolver;

/// The crypto provider, the same for every TLS use in the process.
///
/// ring, whose default rustls now marks deprecated for lacking
/// post-quantum key exchange (X25519MLKEM768 comes with aws-lc-rs): ring
/// builds with a C compiler alone on every target we check, where
/// aws-lc-rs needs more of a toolchain. PostgreSQL clients do not offer
/// the hybrid group yet either (libpq through OpenSSL 3.5 may).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate ready to serve: the key rustls signs with, a server
/// configuration presenting it alone, and its `tls-server-end-point`
/// hash (RFC 5929) for SCRAM channel binding.
#[derive(Debug)]
pub struct Served {
    pub key: Arc<CertifiedKey>,
    /// For PostgreSQL clients: ALPN `postgresql` (a client offering
    /// another protocol is refused, as PostgreSQL 17 does).
    pub postgres: Arc<ServerConfig>,
    /// None where the certificate's signature hash is not one channel
    /// binding defines (Ed25519, RSA-PSS; PostgreSQL offers no binding
    /// for those either).
    pub end_point: Option<Box<[u8]>>,
}

/// The ALPN protocol PostgreSQL clients name (PostgreSQL 17).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Client TLS as configured: the certificates by server name, and
/// whether plaintext clients are refused.
#[derive(Debug)]
pub struct ServerTls {
    certs: Arc<SniResolver>,
    pub require: bool,
    /// The admin endpoint's HTTPS: every certificate by SNI, ALPN
    /// `http/1.1`.
    pub https: Arc<ServerConfig>,
}

impl ServerTls {
    /// The certificates of `tls` (paths relative to `base`), loaded and
    /// checked: each key matches its certificate.
    pub fn load(tls: &TlsConfig, base: &Path) -> Result<ServerTls, String> {
        let provider = provider();
        let clients = peer_certs::verifier(tls, base, &provider)?;
        let serve = |files: (&Path, &Path)| -> Result<(Arc<Served>, Vec<String>), String> {
            let loaded = certs::load(&base.join(files.0), &base.join(files.1), &provider)?;
            let single = Arc::new(Single(Arc::clone(&loaded.key)));
            let postgres =
                server_config(single, tls.min_version, &[ALPN_POSTGRESQL], clients.clone())?;
            let served = Served {
                key: loaded.key,
                postgres,
                end_point: loaded.end_point,
            };
            Ok((Arc::new(served), loaded.names))
        };
        let default = serve((&tls.cert, &tls.key))?;
        let others = tls
            .certificates
            .iter()
            .map(|c| serve((&c.cert, &c.key)))
            .collect::<Result<Vec<_>, _>>()?;
        let certs = Arc::new(SniResolver::new(default, others));
        let https = by_sni(&certs, tls.min_version, &[b"http/1.1"])?;
        Ok(ServerTls {
            certs,
            require: tls.require,
            https,
        })
    }

    /// The certificate for server name `sni` (None: the client sent none).
    pub fn choose(&self, sni: Option<&str>) -> &Arc<Served> {
        self.certs.choose(sni)
    }

    /// A configuration over every certificate, chosen by SNI, offering
    /// `alpn`.
    pub fn any_certificate(
        &self,
        min_version: TlsVersion,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, String> {
        by_sni(&self.certs, min_version, alpn)
    }
}

/// A configuration over every certificate of `certs`, chosen by SNI.
fn by_sni(
    certs: &Arc<SniResolver>,
    min_version: TlsVersion,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, String> {
    server_config(Arc::new(BySni(Arc::clone(certs))), min_version, alpn, None)
}

/// One certificate whatever the client asks.
#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl ResolvesServerCert for Single {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The certificate the client's server name selects.
#[derive(Debug)]
struct BySni(Arc<SniResolver>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.choose(hello.server_name()).key))
    }
}

/// A rustls server configuration over `certs`, with TLS 1.2 and 1.3 or
/// 1.3 only, `alpn` offered (empty: none), and client certificates asked
/// for and checked by `clients` (None: not asked for). No session
/// tickets: the PostgreSQL drivers do not resume sessions, so they would
/// be sent for nothing at every login.
fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    min_version: TlsVersion,
    alpn: &[&[u8]],
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_client_cert_verifier(clients.unwrap_or_else(WebPkiClientVerifier::no_client_auth))
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

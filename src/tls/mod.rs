//! TLS on the server side (`[tls]`): the certificates pgtenant presents,
//! chosen by SNI, and the rustls configuration built from them. One
//! crypto provider is compiled in (ring). Reloadable: a reload builds a
//! new set and swaps it in; handshakes under way keep the one they
//! started with, and no connection is dropped.
//!
//! Clients do not get TLS yet (SSLRequest is still answered `N`); the
//! admin HTTP endpoint is the first user.

mod certs;
mod resolver;
#[cfg(test)]
mod tests;

use crate::config::{TlsConfig, TlsVersion};
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

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

/// The certificates of `tls` (paths relative to `base`), loaded and
/// checked: each key matches its certificate.
pub fn load_certificates(tls: &TlsConfig, base: &Path) -> Result<SniResolver, String> {
    let provider = provider();
    let default = certs::load(&base.join(&tls.cert), &base.join(&tls.key), &provider)?;
    let others = tls
        .certificates
        .iter()
        .map(|c| {
            certs::load(&base.join(&c.cert), &base.join(&c.key), &provider)
                .map(|l| (l.key, l.names))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SniResolver::new((default.key, default.names), others))
}

/// The certificates in use, swapped whole on reload.
#[derive(Debug)]
pub struct Certificates(ArcSwap<SniResolver>);

impl Certificates {
    pub fn new(resolver: SniResolver) -> Arc<Certificates> {
        Arc::new(Certificates(ArcSwap::from_pointee(resolver)))
    }

    /// Replaces the set; handshakes from now on use it.
    pub fn replace(&self, resolver: SniResolver) {
        self.0.store(Arc::new(resolver));
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.load().choose(hello.server_name())))
    }
}

/// A rustls server configuration over `certs`, with TLS 1.2 and 1.3 or
/// 1.3 only, and `alpn` offered (empty: none).
pub fn server_config(
    certs: Arc<Certificates>,
    min_version: TlsVersion,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

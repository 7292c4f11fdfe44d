//! Client certificates (`[tls] client_ca`): the verifier that checks them
//! during the handshake (chain to one of the configured CAs, the
//! clientAuth usage, validity dates, the revocation lists), and the
//! identity a verified certificate proves, matched at login against the
//! user's configured `cert`.
//!
//! A certificate is asked of every TLS client once `client_ca` is set,
//! but the handshake goes on without one: users who log in by password
//! need none, and the login of a user who needs one then fails.

use crate::config::TlsConfig;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::path::Path;
use std::sync::Arc;

/// The verifier of `tls.client_ca` and `tls.client_crl` (paths relative
/// to `base`); None without `client_ca`.
pub fn verifier(
    tls: &TlsConfig,
    base: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
    let Some(ca) = &tls.client_ca else {
        return Ok(None);
    };
    let ca = base.join(ca);
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate rustls accepts: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in the file", ca.display()));
    }
    let mut crls = Vec::new();
    for path in &tls.client_crl {
        let path = base.join(path);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.starts_with(b"-----") {
            for crl in CertificateRevocationListDer::pem_slice_iter(&bytes) {
                crls.push(crl.map_err(|e| format!("{}: {e}", path.display()))?);
            }
        } else {
            crls.push(CertificateRevocationListDer::from(bytes));
        }
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .with_crls(crls)
        .allow_unauthenticated()
        .build()
        .map(Some)
        .map_err(|e| format!("{}: {e}", ca.display()))
}

/// Whether the verified client certificate `leaf` is `identity`: its
/// subject's common name (the only one; a subject with several names
/// none by CN) or one of its subjectAltName URIs, compared exactly.
pub fn certificate_names(leaf: &CertificateDer<'_>, identity: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return false;
    };
    let mut cns = cert.subject().iter_common_name();
    if let (Some(cn), None) = (cns.next(), cns.next())
        && cn.as_str().is_ok_and(|cn| cn == identity)
    {
        return true;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|name| matches!(name, GeneralName::URI(uri) if *uri == identity))
}

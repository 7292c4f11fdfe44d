//! Certificates from PEM files: the chain, its private key (checked to
//! match), and the DNS names the leaf is valid for, which is what SNI
//! selection matches against.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// A certificate ready to serve, the names it answers for (lowercase;
/// `*.example.com` for a wildcard), and its channel-binding hash.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    pub end_point: Option<Box<[u8]>>,
}

/// Loads `cert` (a PEM chain, leaf first) and `key` (PEM, PKCS#8, PKCS#1
/// or SEC1). Errors name the file and say what is wrong.
pub fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: no certificate in the file", cert.display()))?;
    let names = dns_names(leaf).map_err(|e| format!("{}: {e}", cert.display()))?;
    let end_point = end_point_hash(leaf);
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        end_point,
    })
}

/// The DNS names in the leaf's subjectAltName, lowercase. A certificate
/// without any cannot be chosen by name (only as the default).
fn dns_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
    {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// The `tls-server-end-point` channel binding of a certificate (RFC 5929
/// section 4.1): its DER hashed with the hash of its signature algorithm,
/// SHA-256 where that is MD5 or SHA-1. None where the algorithm names no
/// such hash (Ed25519, RSA-PSS), as in PostgreSQL, which then offers no
/// SCRAM-SHA-256-PLUS.
pub fn end_point_hash(leaf: &CertificateDer<'_>) -> Option<Box<[u8]>> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let der = leaf.as_ref();
    let hash: Box<[u8]> = match oid.as_str() {
        // md5/sha1/sha256 with RSA; ecdsa with SHA-1/SHA-256; DSA with
        // SHA-1/SHA-256.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.10040.4.3"
        | "2.16.840.1.101.3.4.3.2" => Box::from(sha2::Sha256::digest(der).as_slice()),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => {
            Box::from(sha2::Sha384::digest(der).as_slice())
        }
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => {
            Box::from(sha2::Sha512::digest(der).as_slice())
        }
        _ => return None,
    };
    Some(hash)
}

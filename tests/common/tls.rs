//! TLS for tests: a throwaway CA with certificates written to files (for
//! `[tls]` and for libpq's `sslrootcert`), and a rustls connector for
//! tokio-postgres that trusts it, names PostgreSQL by ALPN and reports
//! the `tls-server-end-point` channel binding.

use rustls::pki_types::{CertificateDer, ServerName};
use sha2::Digest as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// A CA and the files of the certificates it issued.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
    /// The CA certificate in PEM (libpq's `sslrootcert`).
    pub pem_path: PathBuf,
    dir: PathBuf,
}

/// A certificate's files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pgtenant test CA");
        let cert = params.self_signed(&key).expect("self-sign");
        let pem_path = dir.join("ca.crt");
        std::fs::write(&pem_path, cert.pem()).expect("write CA");
        TestCa {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
            pem_path,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for `names` (DNS names, wildcards allowed), as
    /// `<file>.crt` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }

    /// A client certificate with subject common name `cn`, subjectAltName
    /// URIs `uris`, extended key usage `usage` and serial number
    /// `serial`; its key file is private (libpq insists).
    pub fn issue_client(
        &self,
        file: &str,
        cn: &str,
        uris: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
        serial: u64,
    ) -> Issued {
        use std::os::unix::fs::PermissionsExt;
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).expect("URI")))
            .collect();
        params.extended_key_usages = vec![usage];
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        issued
    }

    /// A revocation list (PEM) revoking the certificates with `serials`,
    /// written to `<file>.crl`.
    pub fn crl(&self, file: &str, serials: &[u64]) -> PathBuf {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(s),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("sign CRL");
        let path = self.dir.join(format!("{file}.crl"));
        std::fs::write(&path, crl.pem().expect("CRL PEM")).expect("write CRL");
        path
    }

    /// A client configuration trusting this CA, offering ALPN
    /// `postgresql` unless `alpn` is false.
    #[allow(deprecated)] // ring, as in the proxy (pgtenant::tls::provider)
    pub fn client_config(&self, alpn: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        Arc::new(config)
    }

    /// A tokio-postgres connector trusting this CA, sending `server_name`
    /// as SNI whatever host the connection string names (the tests
    /// connect to 127.0.0.1).
    pub fn connector(&self, server_name: &str) -> Connector {
        Connector {
            config: self.client_config(true),
            server_name: server_name.to_string(),
            forged_binding: None,
        }
    }
}

#[derive(Clone)]
pub struct Connector {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
    /// Channel binding data to report instead of the real certificate's:
    /// what a client talking to a man in the middle would compute.
    pub forged_binding: Option<Vec<u8>>,
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Tls<S>;
    type TlsConnect = Connector;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, _domain: &str) -> Result<Connector, std::io::Error> {
        Ok(self.clone())
    }
}

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Tls<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Tls<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.server_name.clone())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(Tls(tls, self.forged_binding))
        })
    }
}

pub struct Tls<S>(pub tokio_rustls::client::TlsStream<S>, Option<Vec<u8>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tls<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Tls<S> {
    /// The server certificate's SHA-256 (the test certificates are
    /// ECDSA with SHA-256).
    fn channel_binding(&self) -> ChannelBinding {
        if let Some(forged) = &self.1 {
            return ChannelBinding::tls_server_end_point(forged.clone());
        }
        match self.0.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => {
                ChannelBinding::tls_server_end_point(sha2::Sha256::digest(leaf).to_vec())
            }
            _ => ChannelBinding::none(),
        }
    }
}

/// A client configuration that accepts any certificate, for tests that
/// look at which one is served.
#[allow(deprecated)] // ring, as in the proxy
pub fn trusting_any() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// psql with `conninfo` (libpq keywords) on `port`: the answer of `sql`,
/// or psql's error output.
pub async fn psql(port: u16, conninfo: String, sql: &str) -> Result<String, String> {
    let sql = sql.to_string();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("psql")
            // -w: never ask for a password (a login without one fails).
            .args(["-X", "-w", "-A", "-t", "-c", &sql])
            .arg(format!("{conninfo} port={port} connect_timeout=10"))
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    })
    .await
    .expect("psql thread")
}

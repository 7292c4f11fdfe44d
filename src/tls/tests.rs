//! Which certificate a handshake gets, by real rustls handshakes in
//! memory against certificates made for the test (rcgen).

use super::*;
use crate::config::CertFiles;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConnection};
use sha2::Digest as _;

/// Writes a certificate for `names`, signed by `ca`, and its key.
fn issue(
    dir: &Path,
    file: &str,
    names: &[&str],
    ca: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> (CertFiles, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    let cert = params.signed_by(&key, ca).expect("sign");
    let files = CertFiles {
        cert: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).expect("write cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    (files, cert.der().to_vec())
}

fn ca() -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::Issuer::new(params, key)
}

/// The leaf the server presents to a client asking for `name` (an IP
/// address sends no SNI), over TLS 1.2 only when `tls12`.
fn served(server: &Arc<ServerConfig>, name: &str, tls12: bool) -> Result<Vec<u8>, rustls::Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let client_config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        // Accepts any certificate (`require` without a CA): these tests
        // look at which one is served.
        .with_custom_certificate_verifier(Arc::new(backend::Unverified(provider())))
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_string()).expect("name");
    let mut client = ClientConnection::new(Arc::new(client_config), name).expect("client");
    let mut server = ServerConnection::new(Arc::clone(server)).expect("server");
    let mut buf = Vec::new();
    for _ in 0..10 {
        buf.clear();
        client.write_tls(&mut buf).expect("client writes");
        server.read_tls(&mut &buf[..]).expect("server reads");
        server.process_new_packets()?;
        buf.clear();
        server.write_tls(&mut buf).expect("server writes");
        client.read_tls(&mut &buf[..]).expect("client reads");
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    Ok(client.peer_certificates().expect("a certificate")[0].to_vec())
}

#[test]
fn the_certificate_follows_the_server_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (default, default_der) = issue(dir.path(), "default", &["proxy.internal"], &ca);
    let (wild, wild_der) = issue(dir.path(), "wild", &["*.db.example.com"], &ca);
    let (custom, custom_der) = issue(dir.path(), "custom", &["tenant.com", "www.tenant.com"], &ca);
    let tls = TlsConfig {
        cert: default.cert,
        key: default.key,
        certificates: vec![wild, custom],
        min_version: TlsVersion::Tls12,
        require: false,
        client_ca: None,
        client_crl: Vec::new(),
    };
    let certs = Arc::new(ServerTls::load(&tls, Path::new("/")).expect("load"));
    let server = certs
        .any_certificate(TlsVersion::Tls12, &[])
        .expect("config");
    for (name, want) in [
        ("acme.db.example.com", &wild_der),
        ("ACME.DB.Example.COM", &wild_der),
        ("tenant.com", &custom_der),
        ("www.tenant.com", &custom_der),
        ("proxy.internal", &default_der),
        // A wildcard covers one label, and not its own parent.
        ("a.b.db.example.com", &default_der),
        ("db.example.com", &default_der),
        ("unknown.example.net", &default_der),
        // An IP address: no SNI at all.
        ("127.0.0.1", &default_der),
    ] {
        assert_eq!(&served(&server, name, false).expect(name), want, "{name}");
    }
    assert_eq!(
        &served(&server, "tenant.com", true).expect("1.2"),
        &custom_der
    );

    // Each certificate's own configuration (the PostgreSQL listener's,
    // chosen by the proxy from the ClientHello) presents it whatever the
    // name, and knows its channel-binding hash.
    for (name, want) in [
        ("acme.db.example.com", &wild_der),
        ("tenant.com", &custom_der),
        ("proxy.internal", &default_der),
    ] {
        let chosen = certs.choose(Some(name));
        assert_eq!(
            &served(&chosen.postgres, "x.invalid", false).expect(name),
            want
        );
        let hash = chosen
            .end_point
            .as_deref()
            .expect("an ECDSA-SHA256 certificate binds");
        assert_eq!(hash, sha2::Sha256::digest(want).as_slice(), "{name}");
    }
    assert!(Arc::ptr_eq(
        certs.choose(None),
        certs.choose(Some("nope.example"))
    ));

    // A reload loads the files again: the next handshakes get the new set.
    let (other, other_der) = issue(dir.path(), "other", &["*.db.example.com"], &ca);
    let tls2 = TlsConfig {
        certificates: vec![other],
        ..tls
    };
    let reloaded = Arc::new(ServerTls::load(&tls2, Path::new("/")).expect("load"));
    let server = reloaded
        .any_certificate(TlsVersion::Tls12, &[])
        .expect("config");
    assert_eq!(
        served(&server, "acme.db.example.com", false).expect("after"),
        other_der
    );
}

#[test]
fn tls_1_3_only_refuses_1_2_and_bad_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (default, _) = issue(dir.path(), "default", &["proxy.internal"], &ca);
    let (other, _) = issue(dir.path(), "other", &["x.example"], &ca);
    let tls = TlsConfig {
        cert: default.cert.clone(),
        key: default.key.clone(),
        certificates: vec![],
        min_version: TlsVersion::Tls13,
        require: false,
        client_ca: None,
        client_crl: Vec::new(),
    };
    let certs = Arc::new(ServerTls::load(&tls, Path::new("/")).expect("load"));
    let server = certs
        .any_certificate(TlsVersion::Tls13, &[])
        .expect("config");
    assert!(
        served(&server, "proxy.internal", true).is_err(),
        "TLS 1.2 got in"
    );
    assert!(served(&server, "proxy.internal", false).is_ok());

    // A key that is not the certificate's, a missing file, no PEM.
    let mismatched = TlsConfig {
        key: other.key.clone(),
        ..tls.clone()
    };
    let e = ServerTls::load(&mismatched, Path::new("/")).expect_err("mismatched key");
    assert!(e.contains("default.crt"), "{e}");
    let missing = TlsConfig {
        cert: dir.path().join("nope.crt"),
        ..tls.clone()
    };
    let e = ServerTls::load(&missing, Path::new("/")).expect_err("missing");
    assert!(e.contains("nope.crt"), "{e}");
    std::fs::write(dir.path().join("empty.crt"), "not pem").expect("write");
    let empty = TlsConfig {
        cert: dir.path().join("empty.crt"),
        ..tls
    };
    let e = ServerTls::load(&empty, Path::new("/")).expect_err("empty");
    assert!(e.contains("no certificate"), "{e}");
}

/// A self-signed certificate with subject `cns` (each a common name) and
/// subjectAltName `sans`.
fn client_leaf(cns: &[&str], sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    for (i, cn) in cns.iter().enumerate() {
        // rcgen keeps one value per type: a second common name goes in
        // under the same OID spelled as a custom type.
        let ty = match i {
            0 => rcgen::DnType::CommonName,
            _ => rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]),
        };
        params.distinguished_name.push(ty, *cn);
    }
    params.subject_alt_names = sans;
    params.self_signed(&key).expect("sign").der().clone()
}

#[test]
fn a_client_certificate_names_its_common_name_or_a_uri_exactly() {
    let uri = |u: &str| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(u).expect("uri"));
    let dns =
        |d: &str| rcgen::SanType::DnsName(rcgen::string::Ia5String::try_from(d).expect("dns"));
    let leaf = client_leaf(
        &["batch@acme"],
        vec![uri("spiffe://t/acme/batch"), dns("acme.example")],
    );
    assert!(certificate_names(&leaf, "batch@acme"));
    assert!(certificate_names(&leaf, "spiffe://t/acme/batch"));
    for not in [
        "batch@acm",
        "BATCH@acme",
        "batch@acme ",
        "acme.example",
        "spiffe://t/acme",
        "",
    ] {
        assert!(!certificate_names(&leaf, not), "{not:?}");
    }
    // Two common names: neither counts (which one the CA meant is
    // unclear); URIs still do.
    let two = client_leaf(&["batch@acme", "batch@globex"], vec![uri("spiffe://t/x")]);
    assert!(!certificate_names(&two, "batch@acme"));
    assert!(!certificate_names(&two, "batch@globex"));
    assert!(certificate_names(&two, "spiffe://t/x"));
    assert!(!certificate_names(
        &CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]),
        "x"
    ));
}

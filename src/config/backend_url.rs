//! A placement's `url` parsed into where and as whom to connect, and
//! which authentication the server may ask for (`require_auth`). Here,
//! not in `pool`, so that validating a config needs nothing above it.

/// Where and as whom to connect, parsed from a placement `url`.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub database: String,
    /// What the server may ask for (`require_auth` in the URL).
    pub auth: AllowedAuth,
    /// TLS to the server (`sslmode`, `sslrootcert`).
    pub tls: BackendTls,
}

/// The authentication a placement's server may ask for, as libpq's
/// `require_auth` lists it. Default: SCRAM-SHA-256 only, so a server (or
/// anyone on the path) that asks for the password in clear or as md5, or
/// lets the proxy in unauthenticated, is refused before the password
/// leaves: an on-path attacker cannot downgrade the login to collect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedAuth {
    pub scram: bool,
    pub md5: bool,
    /// Cleartext password (`password`).
    pub password: bool,
    /// No authentication at all (`none`: trust, peer).
    pub none: bool,
}

impl Default for AllowedAuth {
    fn default() -> AllowedAuth {
        AllowedAuth {
            scram: true,
            md5: false,
            password: false,
            none: false,
        }
    }
}

impl AllowedAuth {
    /// A `require_auth` value: methods separated by commas.
    fn parse(value: &str) -> Result<AllowedAuth, String> {
        let mut allowed = AllowedAuth {
            scram: false,
            md5: false,
            password: false,
            none: false,
        };
        for method in value.split(',').map(str::trim) {
            match method {
                "scram-sha-256" => allowed.scram = true,
                "md5" => allowed.md5 = true,
                "password" => allowed.password = true,
                "none" => allowed.none = true,
                m if m.starts_with('!') => {
                    return Err(format!(
                        "require_auth: negated methods ({m}) are not supported; list the methods to allow"
                    ));
                }
                m => {
                    return Err(format!(
                        "require_auth: unknown method {m:?} (scram-sha-256, md5, password, none)"
                    ));
                }
            }
        }
        Ok(allowed)
    }

    /// The `require_auth` spelling, for messages.
    pub fn describe(&self) -> String {
        let names = [
            (self.scram, "scram-sha-256"),
            (self.md5, "md5"),
            (self.password, "password"),
            (self.none, "none"),
        ];
        let listed: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        listed.join(",")
    }
}

/// How a placement's connections use TLS (`sslmode`, `sslrootcert` in
/// its url, as libpq has them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendTls {
    pub mode: SslMode,
    /// CA certificates (PEM) the server's chain must lead to.
    pub root_cert: Option<std::path::PathBuf>,
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    /// TLS if the server offers it (libpq's default).
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, String> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(format!("sslmode: unknown mode {other:?}")),
        })
    }

    /// A server that declines TLS is refused.
    pub fn needs_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// The parameters pgtenant reads itself (tokio-postgres, which parses the
/// rest, knows some of them only partly or not at all).
const OWN_PARAMS: [&str; 3] = ["require_auth", "sslmode", "sslrootcert"];

/// `url` without [`OWN_PARAMS`], and their values: from a URL's query
/// string, or `key=value` words.
fn take_own_params(url: &str) -> (String, Vec<(&'static str, String)>) {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let mut taken = Vec::new();
    let mut take = |word: &str, decode: bool| -> bool {
        for key in OWN_PARAMS {
            if let Some(v) = word.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                let v = if decode {
                    percent_decode(v)
                } else {
                    v.trim_matches('\'').to_string()
                };
                taken.push((key, v));
                return false;
            }
        }
        true
    };
    if is_url {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), taken);
        };
        let kept: Vec<&str> = query.split('&').filter(|p| take(p, true)).collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, taken)
    } else {
        let kept: Vec<&str> = url.split_whitespace().filter(|w| take(w, false)).collect();
        (kept.join(" "), taken)
    }
}

/// `%XX` escapes of a URL query value.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl std::fmt::Debug for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

impl BackendTarget {
    /// Accepts what libpq accepts (URL or `key=value`), limited to one TCP
    /// host, since a placement is one database.
    pub fn from_url(url: &str) -> Result<BackendTarget, String> {
        let (url, own) = take_own_params(url);
        let mut auth = AllowedAuth::default();
        let mut tls = BackendTls::default();
        for (key, value) in own {
            match key {
                "require_auth" => auth = AllowedAuth::parse(&value)?,
                "sslmode" => tls.mode = SslMode::parse(&value)?,
                _ => tls.root_cert = Some(value.into()),
            }
        }
        if matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.root_cert.is_none() {
            return Err("sslmode=verify-ca and verify-full need sslrootcert (a PEM file of CA certificates)".into());
        }
        let cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        let host = match cfg.get_hosts() {
            [tokio_postgres::config::Host::Tcp(h)] => h.clone(),
            [] => return Err("names no host".into()),
            [_] => return Err("Unix-socket hosts are not supported; use a TCP host".into()),
            _ => return Err("names several hosts; a placement is one server".into()),
        };
        let port = match cfg.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Err("names several ports".into()),
        };
        let user = cfg.get_user().ok_or("names no user")?.to_string();
        let database = cfg.get_dbname().unwrap_or(&user).to_string();
        Ok(BackendTarget {
            host,
            port,
            user,
            password: cfg.get_password().map(<[u8]>::to_vec),
            database,
            auth,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_auth_is_read_from_either_form_and_defaults_to_scram() {
        let t = BackendTarget::from_url("postgres://u:p@h:5433/db").expect("url");
        assert_eq!(t.auth, AllowedAuth::default());
        assert_eq!(t.auth.describe(), "scram-sha-256");

        let t = BackendTarget::from_url(
            "postgres://u:p@h/db?application_name=x&require_auth=scram-sha-256%2Cnone",
        )
        .expect("url");
        assert!(t.auth.scram && t.auth.none && !t.auth.md5 && !t.auth.password);
        assert_eq!((t.host.as_str(), t.database.as_str()), ("h", "db"));

        let t = BackendTarget::from_url("host=h user=u dbname=d require_auth=md5,password")
            .expect("key=value");
        assert!(t.auth.md5 && t.auth.password && !t.auth.scram && !t.auth.none);
        assert_eq!(t.auth.describe(), "md5,password");

        let t = BackendTarget::from_url(
            "postgres://u@h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
        )
        .expect("url");
        assert_eq!(t.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            t.tls.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            BackendTarget::from_url("postgres://u@h/d")
                .expect("url")
                .tls
                .mode,
            SslMode::Prefer
        );
        let e = BackendTarget::from_url("postgres://u@h/d?sslmode=verify-ca").expect_err("no CA");
        assert!(e.contains("sslrootcert"), "{e}");
        let t = BackendTarget::from_url("host=h user=u sslmode=require").expect("kv");
        assert_eq!(t.tls.mode, SslMode::Require);

        for bad in ["!md5", "scram", "md5,,none"] {
            let e = BackendTarget::from_url(&format!("postgres://u@h/d?require_auth={bad}"))
                .expect_err(bad);
            assert!(e.contains("require_auth"), "{e}");
        }
    }
}

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

/// `url` without its `require_auth` parameter (which tokio-postgres does
/// not know), and that parameter's value: from a URL's query string, or
/// a `key=value` word.
fn take_require_auth(url: &str) -> (String, Option<String>) {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_url {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), None);
        };
        let mut value = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.strip_prefix("require_auth=") {
                Some(v) => {
                    value = Some(v.replace("%2C", ",").replace("%2c", ","));
                    false
                }
                None => true,
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, value)
    } else {
        let mut value = None;
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|word| match word.strip_prefix("require_auth=") {
                Some(v) => {
                    value = Some(v.trim_matches('\'').to_string());
                    false
                }
                None => true,
            })
            .collect();
        (kept.join(" "), value)
    }
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
        let (url, require_auth) = take_require_auth(url);
        let auth = match require_auth {
            Some(v) => AllowedAuth::parse(&v)?,
            None => AllowedAuth::default(),
        };
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
        if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err("sslmode=require: TLS to placements is not supported yet".into());
        }
        Ok(BackendTarget {
            host,
            port,
            user,
            password: cfg.get_password().map(<[u8]>::to_vec),
            database,
            auth,
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

        for bad in ["!md5", "scram", "md5,,none"] {
            let e = BackendTarget::from_url(&format!("postgres://u@h/d?require_auth={bad}"))
                .expect_err(bad);
            assert!(e.contains("require_auth"), "{e}");
        }
    }
}

//! A placement's `url` parsed into where and as whom to connect. Here,
//! not in `pool`, so that validating a config needs nothing above it.

/// Where and as whom to connect, parsed from a placement `url`.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub database: String,
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
        })
    }
}

//! The certificate for a handshake, chosen by the server name the client
//! sent (SNI): an exact name first, then a wildcard for its first label
//! (`*.db.example.com` answers `acme.db.example.com`, not
//! `a.b.db.example.com` nor `db.example.com`, as RFC 6125 has it), else the
//! default certificate (`[tls] cert`). A client that sends no name, or one
//! no certificate has, gets the default: it then checks the name itself.

use super::Served;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct SniResolver {
    default: Arc<Served>,
    exact: HashMap<String, Arc<Served>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Arc<Served>>,
}

impl SniResolver {
    /// `default` and the others with their names; where two certificates
    /// name the same host, the one listed first keeps it.
    pub fn new(
        default: (Arc<Served>, Vec<String>),
        others: Vec<(Arc<Served>, Vec<String>)>,
    ) -> SniResolver {
        let mut r = SniResolver {
            default: Arc::clone(&default.0),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (key, names) in std::iter::once(default).chain(others) {
            for name in names {
                let map = match name.strip_prefix("*.") {
                    Some(rest) => (&mut r.wildcard, rest.to_string()),
                    None => (&mut r.exact, name),
                };
                map.0.entry(map.1).or_insert_with(|| Arc::clone(&key));
            }
        }
        r
    }

    /// The certificate for server name `sni` (None: no SNI).
    pub fn choose(&self, sni: Option<&str>) -> &Arc<Served> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest))
            .unwrap_or(&self.default)
    }
}

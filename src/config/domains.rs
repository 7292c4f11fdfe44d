//! `[tenants.X] domains`: custom host names that name a tenant by TLS
//! server name (SNI), beside `proxy.sni_suffix` (a tenant on its own
//! domain, `db.tenant.com`, rather than `tenant.db.example.com`).

use super::Config;
use std::collections::HashMap;

/// Every configured domain, lowercase, to its tenant; the first error
/// as (key, message): a name that is no DNS host name (wildcards
/// included: a domain names one tenant), or one claimed twice.
pub fn tenant_domains(cfg: &Config) -> Result<HashMap<String, String>, (String, String)> {
    let mut map: HashMap<String, String> = HashMap::new();
    for (tenant, t) in &cfg.tenants {
        for domain in &t.domains {
            let key = format!("tenants.{tenant}.domains");
            let name = domain.trim_end_matches('.').to_ascii_lowercase();
            if !is_host_name(&name) {
                return Err((key, format!("{domain:?} is not a DNS host name")));
            }
            if let Some(other) = map.get(&name) {
                let whose = if other == tenant {
                    "this tenant".to_string()
                } else {
                    format!("tenant {other:?}")
                };
                return Err((key, format!("{domain:?} is already a domain of {whose}")));
            }
            map.insert(name, tenant.clone());
        }
    }
    Ok(map)
}

/// Letters, digits and hyphens in labels of 1-63 bytes, at least two
/// labels, 253 bytes at most (RFC 1123).
fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tenants: &str) -> Config {
        let text = format!(
            "[placements.p]\nurl = \"postgres://u:p@127.0.0.1/db\"\nisolation = \"database\"\n\
             allow_shared_database = true\n{tenants}"
        );
        toml::from_str(&text).expect("config")
    }

    #[test]
    fn domains_map_to_their_tenant_and_are_checked() {
        let ok = config(
            "[tenants.acme]\nplacement = \"p\"\ndomains = [\"DB.Acme.COM.\", \"acme.example.org\"]\n\
             [tenants.globex]\nplacement = \"p\"\ndomains = [\"globex.io\"]\n",
        );
        let map = tenant_domains(&ok).expect("valid");
        assert_eq!(map.get("db.acme.com").map(String::as_str), Some("acme"));
        assert_eq!(
            map.get("acme.example.org").map(String::as_str),
            Some("acme")
        );
        assert_eq!(map.get("globex.io").map(String::as_str), Some("globex"));
        assert_eq!(map.len(), 3);

        for (bad, why) in [
            ("[\"*.acme.com\"]", "not a DNS host name"),
            ("[\"localhost\"]", "not a DNS host name"),
            ("[\"a..b\"]", "not a DNS host name"),
            ("[\"-a.com\"]", "not a DNS host name"),
            ("[\"a_b.com\"]", "not a DNS host name"),
            ("[\"globex.io\"]", "is already a domain of tenant"),
            ("[\"x.com\", \"X.com\"]", "this tenant"),
        ] {
            let cfg = config(&format!(
                "[tenants.acme]\nplacement = \"p\"\ndomains = {bad}\n\
                 [tenants.globex]\nplacement = \"p\"\ndomains = [\"globex.io\"]\n"
            ));
            let (key, message) = tenant_domains(&cfg).expect_err(bad);
            assert!(key.starts_with("tenants."), "{key}");
            assert!(message.contains(why), "{bad}: {message}");
        }
    }
}

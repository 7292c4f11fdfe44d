//! Builds a [`Catalog`] from the `[tenants.*]` tables of the config file.

use super::{Catalog, ConfigMap, Credential, TenantEntry, UserLogin};
use crate::config::{Config, ConfigError, ConfigSource, Isolation, TenantConfig, schema_names};
use crate::credentials::scram::Verifier;
use crate::credentials::secret::AuthSecret;
use crate::routing::TenantId;
use std::sync::Arc;

/// A user's secret as the config writes it.
enum Written<'a> {
    /// A stored `SCRAM-SHA-256$...` verifier, parsed.
    Verifier(Verifier),
    /// A plaintext password, to derive a verifier from.
    Password(&'a str),
}

/// A plaintext password waiting for its verifier: the index of its
/// tenant's entry, the tenant's name, the user and the password.
type Pending<'a> = (usize, &'a str, &'a str, &'a str);

impl Catalog {
    /// Turns config tenants into catalog entries. Plaintext passwords are
    /// turned into SCRAM verifiers here, once, so no request ever needs
    /// the plaintext again; their salts are keyed by `auth_secret`, so they stay
    /// the same across restarts and look like an unknown user's.
    pub fn from_config(
        cfg: &Config,
        src: &ConfigSource,
        auth_secret: AuthSecret,
    ) -> Result<Catalog, ConfigError> {
        // Everything that can fail first, in file order; then the
        // derivations, which cannot fail and are nearly all the time.
        let per_placement = cfg.tenants_per_placement();
        let mut entries = Vec::with_capacity(cfg.tenants.len());
        let mut pending: Vec<Pending<'_>> = Vec::new();
        for (name, t) in &cfg.tenants {
            let placement = placement_of(cfg, src, name, t)?;
            let mut users = ConfigMap::with_capacity_and_hasher(t.users.len(), Default::default());
            for (user, auth) in &t.users {
                let cert = auth.cert.as_deref().map(Box::from);
                let password = match auth.password.as_ref() {
                    None => None,
                    Some(secret) => match written(src, name, user, secret.expose())? {
                        Written::Verifier(v) => Some(v),
                        Written::Password(p) => {
                            pending.push((entries.len(), name, user, p));
                            None
                        }
                    },
                };
                users.insert(user.clone(), UserLogin { password, cert });
            }
            let search_path = tenant_search_path(cfg, src, name, t, &placement)?;
            let cap = server_cap(cfg, src, name, &per_placement)?;
            entries.push((name, placement, users, t, search_path, cap));
        }
        let derived = derive_all(&pending, &auth_secret);
        for (&(entry, _, user, _), verifier) in pending.iter().zip(derived) {
            if let Some(login) = entries[entry].2.get_mut(user) {
                login.password = Some(verifier);
            }
        }
        let mut tenants = ConfigMap::with_capacity_and_hasher(entries.len(), Default::default());
        for (name, placement, users, t, search_path, max_server_connections) in entries {
            tenants.insert(
                name.clone(),
                Arc::new(TenantEntry {
                    id: TenantId::new(name.clone()),
                    placement,
                    users,
                    max_client_connections: t.max_client_connections,
                    max_pinned_connections: t.max_pinned_connections,
                    max_server_connections,
                    search_path,
                    suspended: t.suspended,
                    watch: t.watch,
                }),
            );
        }
        let operators = super::operators::from_config(cfg, src, &auth_secret)?;
        let admins = super::admins::from_config(cfg, src, &auth_secret)?;
        Ok(Catalog {
            tenants,
            operators,
            admins,
            secret: auth_secret,
        })
    }

    /// Finds what [`Catalog::from_config`] would refuse, without deriving
    /// verifiers from plaintext passwords (that cannot fail, and costs
    /// 4096 HMAC rounds per user): what `pgtenant check` runs.
    pub fn check_config(cfg: &Config, src: &ConfigSource) -> Result<(), ConfigError> {
        let per_placement = cfg.tenants_per_placement();
        for (name, t) in &cfg.tenants {
            let placement = placement_of(cfg, src, name, t)?;
            tenant_search_path(cfg, src, name, t, &placement)?;
            server_cap(cfg, src, name, &per_placement)?;
            for (user, secret) in t
                .users
                .iter()
                .filter_map(|(u, a)| Some((u, a.password.as_ref()?)))
            {
                written(src, name, user, secret.expose())?;
            }
        }
        Ok(())
    }
}

/// On a schema placement, the `search_path` a tenant's clients start with.
fn tenant_search_path(
    cfg: &Config,
    src: &ConfigSource,
    name: &str,
    t: &TenantConfig,
    placement: &str,
) -> Result<Option<Arc<str>>, ConfigError> {
    match cfg.placements.get(placement) {
        Some(pc) if pc.isolation == Isolation::Schema => Ok(Some(
            schema_names::tenant_search_path(
                pc.schema_pattern.as_deref(),
                pc.search_path.as_deref(),
                name,
                t.schema.as_deref(),
            )
            .map_err(|m| src.error(&format!("tenants.{name}"), m))?
            .1
            .into(),
        )),
        _ => Ok(None),
    }
}

/// The server connections of its placement's pool a tenant may hold.
fn server_cap(
    cfg: &Config,
    src: &ConfigSource,
    name: &str,
    per_placement: &std::collections::HashMap<&str, usize>,
) -> Result<u32, ConfigError> {
    cfg.tenant_server_cap(name, per_placement)
        .ok_or_else(|| src.error(&format!("tenants.{name}.placement"), "no such placement"))
}

fn placement_of(
    cfg: &Config,
    src: &ConfigSource,
    name: &str,
    t: &TenantConfig,
) -> Result<String, ConfigError> {
    match &t.placement {
        Some(p) => Ok(p.clone()),
        None => cfg
            .proxy
            .default_placement
            .clone()
            .ok_or_else(|| src.error(&format!("tenants.{name}"), "has no placement")),
    }
}

fn written<'a>(
    src: &ConfigSource,
    tenant: &str,
    user: &str,
    text: &'a str,
) -> Result<Written<'a>, ConfigError> {
    if text.starts_with("SCRAM-SHA-256$") {
        Verifier::parse(text).map(Written::Verifier).ok_or_else(|| {
            src.error(
                &format!("tenants.{tenant}.users.{user}"),
                "malformed SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)",
            )
        })
    } else if text.starts_with("md5") && text.len() == 35 {
        Err(src.error(
            &format!("tenants.{tenant}.users.{user}"),
            "md5 hashes are not accepted; give the password or a SCRAM-SHA-256 verifier",
        ))
    } else {
        Ok(Written::Password(text))
    }
}

/// Below this many passwords per thread, one thread does them all.
const PER_THREAD: usize = 16;

/// Derives the verifiers of `pending`, in order, on every CPU: each one is
/// 4096 rounds of HMAC, so ten thousand tenants with plaintext passwords
/// took seconds on one core, and the proxy serves nobody until this is
/// done anyway.
fn derive_all(pending: &[Pending<'_>], secret: &AuthSecret) -> Vec<Verifier> {
    let derive = |chunk: &[Pending<'_>]| -> Vec<Verifier> {
        chunk
            .iter()
            .map(|&(_, tenant, user, password)| {
                Verifier::from_password(password, &secret.salt(tenant, user))
            })
            .collect()
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(pending.len() / PER_THREAD)
        .max(1);
    if threads == 1 {
        return derive(pending);
    }
    std::thread::scope(|s| {
        let chunks: Vec<_> = pending
            .chunks(pending.len().div_ceil(threads))
            .map(|chunk| {
                let handle = std::thread::Builder::new()
                    .name("pgtenant-verifiers".into())
                    .spawn_scoped(s, move || derive(chunk));
                (chunk, handle)
            })
            .collect();
        let mut out = Vec::with_capacity(pending.len());
        for (chunk, handle) in chunks {
            // A thread that could not start (or, impossibly, panicked):
            // its share is done here instead.
            match handle.map_err(drop).and_then(|h| h.join().map_err(drop)) {
                Ok(v) => out.extend(v),
                Err(()) => out.extend(derive(chunk)),
            }
        }
        out
    })
}

/// A configured password (plaintext, turned into a verifier with the salt
/// `salt` makes) or SCRAM-SHA-256 verifier; `key` is where it is written.
pub(super) fn credential(
    text: &str,
    key: &str,
    src: &ConfigSource,
    salt: impl FnOnce() -> [u8; crate::credentials::secret::SALT_LEN],
) -> Result<Credential, ConfigError> {
    let verifier = if text.starts_with("SCRAM-SHA-256$") {
        Verifier::parse(text).ok_or_else(|| {
            src.error(
                key,
                "malformed SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)",
            )
        })?
    } else if text.starts_with("md5") && text.len() == 35 {
        return Err(src.error(
            key,
            "md5 hashes are not accepted; give the password or a SCRAM-SHA-256 verifier",
        ));
    } else {
        Verifier::from_password(text, &salt())
    };
    Ok(Credential::Scram(verifier))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    /// `n` tenants of one or two users, plaintext passwords and stored
    /// verifiers mixed, on one placement.
    fn config(n: usize) -> String {
        let stored = postgres_protocol::password::scram_sha_256(b"stored-pw");
        let mut text = String::from(
            "[proxy]\ndefault_placement = \"shared\"\n[placements.shared]\n\
             url = \"postgres://u@127.0.0.1/db\"\nisolation = \"rls\"\n",
        );
        for i in 0..n {
            text.push_str(&format!("[tenants.t{i}]\nusers = {{ app = \"pw-{i}\""));
            if i % 3 == 0 {
                text.push_str(&format!(", ops = \"{stored}\""));
            }
            text.push_str(" }\n");
        }
        text
    }

    #[test]
    fn every_user_gets_the_verifier_of_its_own_password() {
        // More passwords than one thread takes, so that the derivations
        // are spread over threads (on a machine with more than one CPU)
        // and come back to the right users.
        let n = PER_THREAD * 5 + 3;
        let (cfg, src) = parse_str(&config(n), "t.toml").expect("valid");
        let secret = AuthSecret::generate().expect("secret");
        let catalog = Catalog::from_config(&cfg, &src, secret.clone()).expect("builds");
        assert_eq!(catalog.len(), n);
        for i in 0..n {
            let tenant = catalog.get(&format!("t{i}")).expect("tenant");
            let expected =
                Verifier::from_password(&format!("pw-{i}"), &secret.salt(&format!("t{i}"), "app"));
            assert_eq!(catalog.scram_verifier(tenant, "app"), expected, "t{i}");
            assert_eq!(tenant.users.len(), if i % 3 == 0 { 2 } else { 1 }, "t{i}");
        }
    }

    #[test]
    fn check_refuses_what_building_refuses() {
        let good = config(4);
        let (cfg, src) = parse_str(&good, "t.toml").expect("valid");
        Catalog::check_config(&cfg, &src).expect("checks");
        for (bad, message) in [
            (
                good.replace("\"pw-2\"", "\"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
                "md5 hashes",
            ),
            (
                good.replace("\"pw-2\"", "\"SCRAM-SHA-256$4096:bad\""),
                "malformed",
            ),
        ] {
            let (cfg, src) = parse_str(&bad, "t.toml").expect("parses");
            let checked = Catalog::check_config(&cfg, &src).expect_err("check refuses");
            let built = Catalog::from_config(&cfg, &src, AuthSecret::generate().expect("secret"))
                .expect_err("build refuses");
            assert_eq!(checked, built);
            assert_eq!(checked.key, "tenants.t2.users.app");
            assert!(checked.message.contains(message), "{checked}");
        }
    }
}

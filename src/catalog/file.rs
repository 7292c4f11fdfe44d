//! Builds a [`Catalog`] from the `[tenants.*]` tables of the config file.

use super::{Catalog, Credential, TenantEntry};
use crate::client::scram::Verifier;
use crate::client::secret::AuthSecret;
use crate::config::{Config, ConfigError, ConfigSource, Isolation, schema_names};
use crate::routing::TenantId;
use std::sync::Arc;

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
        let mut tenants = super::ConfigMap::default();
        let per_placement = cfg.tenants_per_placement();
        for (name, t) in &cfg.tenants {
            let mut users = super::ConfigMap::default();
            for (user, secret) in &t.users {
                let cred = credential(
                    secret.expose(),
                    &format!("tenants.{name}.users.{user}"),
                    src,
                    || auth_secret.salt(name, user),
                )?;
                users.insert(user.clone(), cred);
            }
            let placement = match &t.placement {
                Some(p) => p.clone(),
                None => cfg
                    .proxy
                    .default_placement
                    .clone()
                    .ok_or_else(|| src.error(&format!("tenants.{name}"), "has no placement"))?,
            };
            let search_path = match cfg.placements.get(&placement) {
                Some(pc) if pc.isolation == Isolation::Schema => Some(
                    schema_names::tenant_search_path(
                        pc.schema_pattern.as_deref(),
                        pc.search_path.as_deref(),
                        name,
                        t.schema.as_deref(),
                    )
                    .map_err(|m| src.error(&format!("tenants.{name}"), m))?
                    .1
                    .into(),
                ),
                _ => None,
            };
            tenants.insert(
                name.clone(),
                Arc::new(TenantEntry {
                    id: TenantId::new(name.clone()),
                    placement,
                    users,
                    max_client_connections: t.max_client_connections,
                    max_pinned_connections: t.max_pinned_connections,
                    max_server_connections: cfg
                        .tenant_server_cap(name, &per_placement)
                        .ok_or_else(|| {
                            src.error(&format!("tenants.{name}.placement"), "no such placement")
                        })?,
                    search_path,
                }),
            );
        }
        let operators = super::operators::from_config(cfg, src, &auth_secret)?;
        Ok(Catalog {
            tenants,
            operators,
            secret: auth_secret,
        })
    }
}

/// A configured password (plaintext, turned into a verifier with the salt
/// `salt` makes) or SCRAM-SHA-256 verifier; `key` is where it is written.
pub(super) fn credential(
    text: &str,
    key: &str,
    src: &ConfigSource,
    salt: impl FnOnce() -> [u8; crate::client::secret::SALT_LEN],
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

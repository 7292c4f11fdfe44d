//! Admin console users (`[admin] users`): what their logins run against.
//!
//! Like operators' logins (`operators.rs`), an unknown name and a wrong
//! password fail alike: the exchange for an unknown name runs against a
//! doomed verifier whose salt is keyed like a real one's, so a client
//! cannot probe which admin names exist.

use super::file::credential;
use super::{Catalog, ConfigMap, Credential};
use crate::config::{Config, ConfigError, ConfigSource};
use crate::credentials::scram::Verifier;
use crate::credentials::secret::AuthSecret;

/// The salt namespace of admin users: ':' is in no tenant's name, so no
/// tenant user or operator shares a salt with an admin.
const SALT_NAMESPACE: &str = ":admin";

impl Catalog {
    /// What an admin login of `user` runs against, and whether the user
    /// exists (for the log, never the client).
    pub fn admin_verifier(&self, user: &str) -> (Verifier, bool) {
        match self.admins.get(user) {
            Some(Credential::Scram(v)) => (v.clone(), true),
            None => (
                Verifier::doomed(&self.secret.salt(SALT_NAMESPACE, user)),
                false,
            ),
        }
    }

    /// Admin user names (SHOW CONFIG lists them, never their secrets).
    pub fn admin_names(&self) -> impl Iterator<Item = &str> {
        self.admins.keys().map(String::as_str)
    }
}

/// The `[admin] users`, their passwords made verifiers once.
pub(super) fn from_config(
    cfg: &Config,
    src: &ConfigSource,
    secret: &AuthSecret,
) -> Result<ConfigMap<String, Credential>, ConfigError> {
    let mut out = ConfigMap::default();
    let Some(admin) = &cfg.admin else {
        return Ok(out);
    };
    for (name, password) in &admin.users {
        let credential = credential(
            password.expose(),
            &format!("admin.users.{name}"),
            src,
            || secret.salt(SALT_NAMESPACE, name),
        )?;
        out.insert(name.clone(), credential);
    }
    Ok(out)
}

//! Admin console users (`[admin] users`): what their logins run against.
//!
//! Like operators' logins (`operators.rs`), an unknown name and a wrong
//! password fail alike: the exchange for an unknown name runs against a
//! doomed verifier whose salt is keyed like a real one's, so a client
//! cannot probe which admin names exist. An admin may also (or only) log
//! in by client certificate, as a tenant user may.

use super::file::credential;
use super::{Catalog, ConfigMap, Credential, UserLogin};
use crate::config::{Config, ConfigError, ConfigSource};
use crate::credentials::scram::Verifier;
use crate::credentials::secret::AuthSecret;

/// The salt namespace of admin users: ':' is in no tenant's name, so no
/// tenant user or operator shares a salt with an admin.
const SALT_NAMESPACE: &str = ":admin";

impl Catalog {
    /// What an admin login of `user` runs its exchange against: the
    /// user's verifier, or a doomed one (an unknown user, or one who logs
    /// in by certificate alone), keyed like a real one's.
    pub fn admin_verifier(&self, user: &str) -> Verifier {
        match self.admins.get(user).and_then(|l| l.password.as_ref()) {
            Some(v) => v.clone(),
            None => Verifier::doomed(&self.secret.salt(SALT_NAMESPACE, user)),
        }
    }

    /// How admin `user` logs in, if the user exists.
    pub fn admin_login(&self, user: &str) -> Option<&UserLogin> {
        self.admins.get(user)
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
) -> Result<ConfigMap<String, UserLogin>, ConfigError> {
    let mut out = ConfigMap::default();
    let Some(admin) = &cfg.admin else {
        return Ok(out);
    };
    for (name, auth) in &admin.users {
        let password = match &auth.password {
            None => None,
            Some(password) => {
                let Credential::Scram(v) = credential(
                    password.expose(),
                    &format!("admin.users.{name}"),
                    src,
                    || secret.salt(SALT_NAMESPACE, name),
                )?;
                Some(v)
            }
        };
        let cert = auth.cert.as_deref().map(Box::from);
        out.insert(name.clone(), UserLogin { password, cert });
    }
    Ok(out)
}

//! Platform operators (`[operators.*]`): who they are, which rls
//! placements each may reach, and what their logins run against.
//!
//! An operator's login fails the same way (28P01, one message, a full
//! SCRAM exchange) whether its name is unknown, its password wrong, or the
//! placement it asks for not in its list: the exchange for the last two
//! runs against a doomed verifier with the salt the real one has, so a
//! client learns neither which operators exist nor where they may go.

use super::file::credential;
use super::{Catalog, ConfigMap, Credential};
use crate::config::{Config, ConfigError, ConfigSource};
use crate::credentials::scram::Verifier;
use crate::credentials::secret::AuthSecret;

/// The salt namespace of operators' plaintext passwords and of unknown
/// operator names: ':' is in no tenant's name, so no tenant user shares
/// a salt with an operator.
const SALT_NAMESPACE: &str = ":operators";

/// One operator, as logins need it.
#[derive(Debug)]
pub struct OperatorEntry {
    pub name: String,
    /// The rls placements it may reach (each has an `operator_url`).
    pub placements: Vec<String>,
    pub credential: Credential,
    /// The client certificate identity it must also present, if any.
    pub cert: Option<Box<str>>,
}

/// What an operator's login is checked against, and what the log says
/// about it (never the client).
#[derive(Debug)]
pub enum OperatorCheck {
    /// A configured operator asking for one of its placements.
    Allowed(Verifier),
    /// A configured operator asking for another placement: doomed.
    PlacementNotListed(Verifier),
    /// No such operator: doomed.
    Unknown(Verifier),
}

impl OperatorCheck {
    /// The verifier the SCRAM exchange runs against.
    pub fn verifier(&self) -> &Verifier {
        match self {
            OperatorCheck::Allowed(v)
            | OperatorCheck::PlacementNotListed(v)
            | OperatorCheck::Unknown(v) => v,
        }
    }

    pub fn allowed(&self) -> bool {
        matches!(self, OperatorCheck::Allowed(_))
    }

    /// Why a login failed, for the log.
    pub fn failure(&self) -> &'static str {
        match self {
            OperatorCheck::Allowed(_) => "wrong password",
            OperatorCheck::PlacementNotListed(_) => "placement not in its list",
            OperatorCheck::Unknown(_) => "no such operator",
        }
    }
}

impl Catalog {
    /// How a login of operator `name` asking for `placement` is checked.
    pub fn operator_check(&self, name: &str, placement: &str) -> OperatorCheck {
        match self.operators.get(name) {
            Some(op) => {
                let Credential::Scram(v) = &op.credential;
                if op.placements.iter().any(|p| p == placement) {
                    OperatorCheck::Allowed(v.clone())
                } else {
                    OperatorCheck::PlacementNotListed(v.doomed_like())
                }
            }
            None => {
                OperatorCheck::Unknown(Verifier::doomed(&self.secret.salt(SALT_NAMESPACE, name)))
            }
        }
    }

    /// The client certificate identity operator `name` must present, if
    /// it is configured and needs one.
    pub fn operator_cert(&self, name: &str) -> Option<&str> {
        self.operators.get(name)?.cert.as_deref()
    }

    /// Operators that may reach `placement`.
    pub fn operators_of<'a>(&'a self, placement: &'a str) -> impl Iterator<Item = &'a str> {
        self.operators
            .values()
            .filter(move |o| o.placements.iter().any(|p| p == placement))
            .map(|o| o.name.as_str())
    }
}

/// The `[operators.*]` tables, their passwords made verifiers once.
pub(super) fn from_config(
    cfg: &Config,
    src: &ConfigSource,
    secret: &AuthSecret,
) -> Result<ConfigMap<String, OperatorEntry>, ConfigError> {
    let mut out = ConfigMap::default();
    for (name, op) in &cfg.operators {
        let credential = credential(
            op.password.expose(),
            &format!("operators.{name}.password"),
            src,
            || secret.salt(SALT_NAMESPACE, name),
        )?;
        out.insert(
            name.clone(),
            OperatorEntry {
                name: name.clone(),
                placements: op.placements.clone(),
                credential,
                cert: op.cert.as_deref().map(Box::from),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_unlisted_placements_look_like_real_operators() {
        let text = r#"
[placements.shared]
url = "postgres://pgt_shared:x@127.0.0.1:5432/app"
isolation = "rls"
operator_url = "postgres://pgt_operator:y@127.0.0.1:5432/app"

[placements.other]
url = "postgres://pgt_other:x@127.0.0.1:5432/other"
isolation = "rls"
operator_url = "postgres://pgt_operator2:y@127.0.0.1:5432/other"

[operators.ops]
password = "op-secret"
placements = ["shared"]
"#;
        let (cfg, src) = crate::config::parse_str(text, "t.toml").expect("valid");
        let secret = AuthSecret::generate().expect("random");
        let catalog = Catalog::from_config(&cfg, &src, secret).expect("catalog");
        let allowed = catalog.operator_check("ops", "shared");
        assert!(allowed.allowed());
        let unlisted = catalog.operator_check("ops", "other");
        assert!(matches!(unlisted, OperatorCheck::PlacementNotListed(_)));
        // Same salt and iterations as the real verifier: the server-first
        // message cannot tell them apart.
        let first = |v: &Verifier| {
            crate::credentials::scram::server_first(
                v,
                b"n,,n=,r=abc",
                "xyz",
                crate::credentials::scram::Binding::Unavailable,
            )
            .expect("server-first")
            .1
        };
        assert_eq!(first(allowed.verifier()), first(unlisted.verifier()));
        let unknown = catalog.operator_check("nobody", "shared");
        assert!(matches!(unknown, OperatorCheck::Unknown(_)));
        // Stable per name, like a real one.
        assert_eq!(
            first(unknown.verifier()),
            first(catalog.operator_check("nobody", "other").verifier())
        );
        assert_eq!(catalog.operators_of("shared").collect::<Vec<_>>(), ["ops"]);
        assert_eq!(catalog.operators_of("other").count(), 0);
    }
}

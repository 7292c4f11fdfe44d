//! How one tenant user logs in (`[tenants.X] users`): a password (a
//! string, `{ env = .. }` or `{ file = .. }`, as every secret), a client
//! certificate (`{ cert = "identity" }`), or both
//! (`{ password = .., cert = .. }`, as PostgreSQL's `clientcert=verify-full`
//! on a password method).
//!
//! The identity is matched exactly against the verified certificate's
//! subject common name or one of its subjectAltName URIs (SPIFFE IDs and
//! the like); it names one user of one tenant, so a certificate issued to
//! another tenant's user of the same name never matches.

use super::Secret;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// A tenant user's credentials as configured; at least one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAuth {
    /// Checked by SCRAM-SHA-256.
    pub password: Option<Secret>,
    /// The client certificate's identity (needs `[tls] client_ca`).
    pub cert: Option<String>,
}

impl UserAuth {
    pub fn password(s: Secret) -> UserAuth {
        UserAuth {
            password: Some(s),
            cert: None,
        }
    }
}

const SHAPES: &str = "a password (a string, { env = \"VARIABLE\" } or { file = \"PATH\" }), \
                      { cert = \"IDENTITY\" }, or { password = ..., cert = \"IDENTITY\" }";

impl<'de> Deserialize<'de> for UserAuth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UserVisitor;

        impl<'de> Visitor<'de> for UserVisitor {
            type Value = UserAuth;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SHAPES)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<UserAuth, E> {
                Ok(UserAuth::password(Secret::new(v)))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserAuth, A::Error> {
                let mut auth = UserAuth {
                    password: None,
                    cert: None,
                };
                let mut source: Option<(String, String)> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "password" if auth.password.is_none() => {
                            auth.password = Some(map.next_value::<Secret>()?);
                        }
                        "cert" if auth.cert.is_none() => {
                            let identity = map.next_value::<String>()?;
                            if identity.is_empty() || identity.len() > 1024 {
                                return Err(de::Error::custom(
                                    "cert: name the identity (the certificate's common name or a URI in its subjectAltName)",
                                ));
                            }
                            auth.cert = Some(identity);
                        }
                        "env" | "file" if source.is_none() => {
                            source = Some((key, map.next_value::<String>()?));
                        }
                        other => {
                            return Err(de::Error::custom(format!(
                                "unexpected key {other:?}; expected {SHAPES}"
                            )));
                        }
                    }
                }
                if let Some((kind, name)) = source {
                    // `{ env = .. }` or `{ file = .. }` alone: a password
                    // from there, read as any secret is.
                    if auth.password.is_some() || auth.cert.is_some() {
                        return Err(de::Error::custom(format!(
                            "{kind} names a password source by itself; write password = {{ {kind} = ... }} beside cert"
                        )));
                    }
                    let secret = Secret::from_source(&kind, &name).map_err(de::Error::custom)?;
                    return Ok(UserAuth::password(secret));
                }
                if auth.password.is_none() && auth.cert.is_none() {
                    return Err(de::Error::custom(format!("expected {SHAPES}")));
                }
                Ok(auth)
            }
        }
        d.deserialize_any(UserVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        u: UserAuth,
    }

    fn parse(text: &str) -> Result<UserAuth, String> {
        toml::from_str::<Doc>(text)
            .map(|d| d.u)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn every_shape() {
        let u = parse("u = \"pw\"").expect("string");
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("pw"));
        assert_eq!(u.cert, None);

        let u = parse("u = { cert = \"app.acme\" }").expect("cert");
        assert!(u.password.is_none());
        assert_eq!(u.cert.as_deref(), Some("app.acme"));

        let u = parse("u = { password = \"pw\", cert = \"spiffe://x/acme/app\" }").expect("both");
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("pw"));
        assert_eq!(u.cert.as_deref(), Some("spiffe://x/acme/app"));

        // SAFETY (edition 2024 marks set_var unsafe): a name no other
        // test reads, set before any thread of this test reads it.
        unsafe { std::env::set_var("PGTENANT_TEST_USER_AUTH_B2", "from-env") };
        let u = parse("u = { env = \"PGTENANT_TEST_USER_AUTH_B2\" }").expect("env");
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("from-env"));
        let u = parse("u = { cert = \"c\", password = { env = \"PGTENANT_TEST_USER_AUTH_B2\" } }")
            .expect("nested env");
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("from-env"));
    }

    #[test]
    fn refused_shapes() {
        for bad in [
            "u = {}",
            "u = { cert = \"\" }",
            "u = { cert = \"a\", env = \"X\" }",
            "u = { cert = \"a\", cert = \"b\" }",
            "u = { certificate = \"a\" }",
            "u = 3",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}

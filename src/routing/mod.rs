//! Works out which tenant a connection belongs to (CONTRACT §2), from TLS
//! SNI, the `options` startup parameter, a `user.tenant` user name, or the
//! database name, in the configured order.
//!
//! Pure: the caller passes what the client sent and a way to ask whether a
//! name is a known tenant; the catalog lookup itself happens in `client`.
//!
//! Rules:
//! - `sni`, `options` and `user` are explicit: when present they name a
//!   tenant, known or not (an unknown one is `3D000` later).
//! - `database` is implicit, because drivers fill it in by default (libpq
//!   uses the user name): it names a tenant when the name is a known
//!   tenant, or when no explicit source named one.
//! - The first source in order that names a tenant wins; any other source
//!   naming a *different* tenant refuses the connection.

use crate::config::TenantSource;
use std::fmt;

/// A tenant's name, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn new(s: impl Into<String>) -> TenantId {
        TenantId(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How resolution is set up (from `[proxy]`).
#[derive(Debug, Clone)]
pub struct RoutingRules {
    pub order: Vec<TenantSource>,
    pub user_separator: String,
    pub sni_suffix: Option<String>,
    /// `[tenants.X] domains`, lowercase, to the tenant they name.
    pub domains: std::collections::HashMap<String, String>,
}

/// What the client sent that may name a tenant.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoutingInput<'a> {
    pub sni: Option<&'a str>,
    pub user: &'a str,
    pub database: Option<&'a str>,
    pub options: Option<&'a str>,
}

/// The outcome: the tenant, the user name with the tenant suffix removed,
/// and the `options` settings other than `tenant=` (as name/value pairs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tenant: TenantId,
    pub source: TenantSource,
    pub user: String,
    pub settings: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("{0}")]
    NoTenant(String),
    #[error(
        "tenant sources disagree: {first_source} names tenant \"{first}\" but {second_source} names \"{second}\""
    )]
    Mismatch {
        first_source: &'static str,
        first: String,
        second_source: &'static str,
        second: String,
    },
    #[error("invalid options startup parameter: {0}")]
    BadOptions(String),
}

/// A platform operator's connection: `options=operator=PLACEMENT`, the
/// user is the operator's name (`[operators.NAME]`), and an optional
/// `tenant=T` narrows it to one tenant's rows. Nothing else names the
/// tenant of an operator connection: the database name (which drivers
/// fill in) and the user separator are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRoute {
    pub operator: String,
    pub placement: String,
    pub tenant: Option<TenantId>,
    pub settings: Vec<(String, String)>,
}

/// Whom a connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Tenant(Resolved),
    Operator(OperatorRoute),
}

/// Resolves a connection: an operator's if its `options` hold
/// `operator=`, else a tenant's (see [`resolve`]).
pub fn route(
    rules: &RoutingRules,
    input: &RoutingInput<'_>,
    is_known: impl Fn(&str) -> bool,
) -> Result<Route, RoutingError> {
    let parsed = match input.options {
        Some(o) => parse_options(o)?,
        None => ParsedOptions::default(),
    };
    match parsed.operator {
        Some(placement) => Ok(Route::Operator(OperatorRoute {
            operator: input.user.to_string(),
            placement,
            tenant: parsed.tenant.map(TenantId),
            settings: parsed.settings,
        })),
        None => resolve_tenant(rules, input, parsed.tenant, parsed.settings, is_known)
            .map(Route::Tenant),
    }
}

/// Resolves the tenant. `is_known` tells whether a name is a configured
/// tenant. Refuses an operator's connection (`options=operator=...`),
/// which [`route`] tells apart.
pub fn resolve(
    rules: &RoutingRules,
    input: &RoutingInput<'_>,
    is_known: impl Fn(&str) -> bool,
) -> Result<Resolved, RoutingError> {
    match route(rules, input, is_known)? {
        Route::Tenant(r) => Ok(r),
        Route::Operator(_) => Err(RoutingError::BadOptions(
            "operator= is not a tenant's option".into(),
        )),
    }
}

fn resolve_tenant(
    rules: &RoutingRules,
    input: &RoutingInput<'_>,
    options_tenant: Option<String>,
    settings: Vec<(String, String)>,
    is_known: impl Fn(&str) -> bool,
) -> Result<Resolved, RoutingError> {
    let user_split = input.user.rsplit_once(rules.user_separator.as_str());
    let uses = |s: TenantSource| rules.order.contains(&s);

    // Explicit sources first, in configured order.
    let explicit = |s: TenantSource| -> Option<String> {
        match s {
            TenantSource::Sni => {
                let sni = input.sni?;
                if let Some(t) = rules.domains.get(&sni.to_ascii_lowercase()) {
                    return Some(t.clone());
                }
                let suffix = rules.sni_suffix.as_deref()?;
                let head = sni.strip_suffix(suffix)?.strip_suffix('.')?;
                (!head.is_empty()).then(|| head.to_ascii_lowercase())
            }
            TenantSource::Options => options_tenant.clone(),
            TenantSource::User => {
                let (_, t) = user_split?;
                (!t.is_empty()).then(|| t.to_string())
            }
            TenantSource::Database => None,
        }
    };
    let any_explicit = rules.order.iter().any(|&s| explicit(s).is_some());
    let named = |s: TenantSource| -> Option<String> {
        match s {
            TenantSource::Database => {
                let db = input.database.filter(|d| !d.is_empty())?;
                (is_known(db) || !any_explicit).then(|| db.to_string())
            }
            other => explicit(other),
        }
    };

    let mut winner: Option<(TenantSource, String)> = None;
    for &source in &rules.order {
        let Some(name) = named(source) else { continue };
        match &winner {
            None => winner = Some((source, name)),
            Some((first_source, first)) if *first != name => {
                return Err(RoutingError::Mismatch {
                    first_source: first_source.as_str(),
                    first: first.clone(),
                    second_source: source.as_str(),
                    second: name,
                });
            }
            Some(_) => {}
        }
    }
    let Some((source, tenant)) = winner else {
        return Err(RoutingError::NoTenant(no_tenant_message(rules)));
    };
    let user = match user_split {
        Some((u, _)) if uses(TenantSource::User) => u.to_string(),
        _ => input.user.to_string(),
    };
    Ok(Resolved {
        tenant: TenantId(tenant),
        source,
        user,
        settings,
    })
}

fn no_tenant_message(rules: &RoutingRules) -> String {
    let how: Vec<String> = rules
        .order
        .iter()
        .map(|s| match s {
            TenantSource::Sni => match (&rules.sni_suffix, rules.domains.is_empty()) {
                (Some(suffix), true) => format!("TLS server name TENANT.{suffix}"),
                (Some(suffix), false) => {
                    format!("TLS server name TENANT.{suffix} or a tenant's domain")
                }
                (None, false) => "TLS server name (a tenant's domain)".into(),
                (None, true) => "TLS server name (proxy.sni_suffix is not set)".into(),
            },
            TenantSource::Options => "options=tenant=TENANT".into(),
            TenantSource::User => format!("user USER{}TENANT", rules.user_separator),
            TenantSource::Database => "database TENANT".into(),
        })
        .collect();
    format!(
        "no tenant could be determined (tried {}); name one with {}",
        rules
            .order
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        how.join(" or ")
    )
}

/// The `options` parameter, split: the tenant and operator tokens and
/// the settings.
#[derive(Debug, Default)]
struct ParsedOptions {
    tenant: Option<String>,
    operator: Option<String>,
    settings: Vec<(String, String)>,
}

/// Takes the value of a `NAME=value` token (`tenant=`, `operator=`):
/// not empty, and not given twice with different values.
fn take_token(slot: &mut Option<String>, name: &str, value: &str) -> Result<(), RoutingError> {
    if value.is_empty() {
        return Err(RoutingError::BadOptions(format!("{name}= names nothing")));
    }
    if slot.as_deref().is_some_and(|prev| prev != value) {
        return Err(RoutingError::BadOptions(format!("{name}= given twice")));
    }
    *slot = Some(value.to_string());
    Ok(())
}

/// Splits the `options` parameter as PostgreSQL does (`pg_split_opts`:
/// whitespace separates, backslash escapes the next character), takes out
/// `tenant=NAME` and `operator=PLACEMENT` (neither ever reaches a
/// backend), and turns `-c name=value` / `--name=value` into settings.
fn parse_options(options: &str) -> Result<ParsedOptions, RoutingError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else {
            cur.push(c);
        }
    }
    if in_word {
        words.push(cur);
    }

    let mut parsed = ParsedOptions::default();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if let Some(t) = w.strip_prefix("tenant=") {
            take_token(&mut parsed.tenant, "tenant", t)?;
            continue;
        } else if let Some(p) = w.strip_prefix("operator=") {
            take_token(&mut parsed.operator, "operator", p)?;
            continue;
        } else if w == "-c" {
            it.next()
                .ok_or_else(|| RoutingError::BadOptions("-c without a setting".into()))?
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_string()
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_string()
        } else {
            return Err(RoutingError::BadOptions(format!(
                "unrecognized option {w:?}: use tenant=NAME, -c name=value or --name=value"
            )));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| RoutingError::BadOptions(format!("{setting:?} is not name=value")))?;
        // PostgreSQL treats '-' in option names as '_'.
        parsed
            .settings
            .push((name.replace('-', "_"), value.to_string()));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TenantSource::*;

    fn rules() -> RoutingRules {
        RoutingRules {
            order: vec![Sni, Options, User, Database],
            user_separator: ".".into(),
            sni_suffix: Some("db.example.com".into()),
            domains: [("db.globex.io".to_string(), "globex".to_string())].into(),
        }
    }

    fn known(n: &str) -> bool {
        ["acme", "globex"].contains(&n)
    }

    fn input<'a>(user: &'a str, db: Option<&'a str>, options: Option<&'a str>) -> RoutingInput<'a> {
        RoutingInput {
            sni: None,
            user,
            database: db,
            options,
        }
    }

    #[test]
    fn each_source_names_a_tenant() {
        let r = resolve(&rules(), &input("app.acme", Some("app.acme"), None), known).expect("ok");
        assert_eq!(
            (r.tenant.as_str(), r.source, r.user.as_str()),
            ("acme", User, "app")
        );

        let r = resolve(
            &rules(),
            &input("app", Some("app"), Some("tenant=acme")),
            known,
        )
        .expect("ok");
        assert_eq!((r.tenant.as_str(), r.source), ("acme", Options));

        let r = resolve(&rules(), &input("app", Some("globex"), None), known).expect("ok");
        assert_eq!((r.tenant.as_str(), r.source), ("globex", Database));

        let mut i = input("app", Some("app"), None);
        i.sni = Some("acme.db.example.com");
        let r = resolve(&rules(), &i, known).expect("ok");
        assert_eq!((r.tenant.as_str(), r.source), ("acme", Sni));

        // A tenant's own domain, any case.
        i.sni = Some("DB.Globex.io");
        let r = resolve(&rules(), &i, known).expect("ok");
        assert_eq!((r.tenant.as_str(), r.source), ("globex", Sni));
        // Another name under it names nothing (the database does).
        i.sni = Some("x.db.globex.io");
        let r = resolve(&rules(), &i, known).expect("ok");
        assert_eq!((r.tenant.as_str(), r.source), ("app", Database));
        // A domain and a user name that disagree.
        let mut i = input("app.acme", Some("app"), None);
        i.sni = Some("db.globex.io");
        assert!(matches!(
            resolve(&rules(), &i, known),
            Err(RoutingError::Mismatch { .. })
        ));
    }

    #[test]
    fn disagreement_is_refused() {
        let e = resolve(
            &rules(),
            &input("app.acme", Some("x"), Some("tenant=globex")),
            known,
        )
        .expect_err("mismatch");
        assert!(matches!(e, RoutingError::Mismatch { .. }), "{e}");
        // A known tenant in the database field that disagrees is refused too.
        let e = resolve(&rules(), &input("app.acme", Some("globex"), None), known)
            .expect_err("mismatch");
        assert!(e.to_string().contains("user names tenant \"acme\""), "{e}");
        // Agreement is fine.
        resolve(
            &rules(),
            &input("app.acme", Some("acme"), Some("tenant=acme")),
            known,
        )
        .expect("agree");
    }

    #[test]
    fn unknown_database_defers_to_explicit_sources() {
        let r = resolve(&rules(), &input("app.acme", Some("myapp"), None), known).expect("ok");
        assert_eq!(r.tenant.as_str(), "acme");
        // Alone, an unknown database still names a tenant (3D000 later).
        let r = resolve(&rules(), &input("app", Some("nope"), None), known).expect("ok");
        assert_eq!(r.tenant.as_str(), "nope");
        // An explicit unknown tenant is named as such.
        let r = resolve(&rules(), &input("app.nope", Some("app.nope"), None), known).expect("ok");
        assert_eq!(r.tenant.as_str(), "nope");
    }

    #[test]
    fn order_and_disabled_sources() {
        let mut r = rules();
        r.order = vec![Options];
        let e = resolve(&r, &input("app.acme", Some("acme"), None), known).expect_err("none");
        let RoutingError::NoTenant(msg) = e else {
            panic!("{e}")
        };
        assert!(
            msg.contains("tried options") && msg.contains("tenant=TENANT"),
            "{msg}"
        );
        // With the user source off, the user name is kept whole.
        let ok = resolve(&r, &input("app.acme", None, Some("tenant=acme")), known).expect("ok");
        assert_eq!(ok.user, "app.acme");
    }

    #[test]
    fn options_are_split_and_stripped() {
        let r = resolve(
            &rules(),
            &input(
                "app",
                None,
                Some(r"-c search_path=a\ b tenant=acme --statement-timeout=5s -cwork_mem=64MB"),
            ),
            known,
        )
        .expect("ok");
        assert_eq!(r.tenant.as_str(), "acme");
        assert_eq!(
            r.settings,
            vec![
                ("search_path".into(), "a b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64MB".into()),
            ]
        );
        for bad in ["bogus", "-c", "-c novalue", "tenant=", "tenant=a tenant=b"] {
            assert!(
                matches!(
                    resolve(&rules(), &input("app", None, Some(bad)), known),
                    Err(RoutingError::BadOptions(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn operator_connections_are_told_apart_and_their_tokens_removed() {
        let route_of = |user, db, options| route(&rules(), &input(user, db, Some(options)), known);
        let r = route_of("ops", Some("ops"), "operator=shared -c work_mem=64MB").expect("ok");
        assert_eq!(
            r,
            Route::Operator(OperatorRoute {
                operator: "ops".into(),
                placement: "shared".into(),
                tenant: None,
                settings: vec![("work_mem".into(), "64MB".into())],
            })
        );
        // A tenant narrows it; the database and a user suffix name none.
        let Route::Operator(r) =
            route_of("ops.acme", Some("globex"), "tenant=acme operator=shared").expect("ok")
        else {
            panic!("an operator route")
        };
        assert_eq!(r.operator, "ops.acme");
        assert_eq!(r.tenant, Some(TenantId::new("acme")));
        assert!(r.settings.is_empty());
        // Without operator=, a tenant's route as before.
        assert!(matches!(
            route_of("app.acme", None, "tenant=acme"),
            Ok(Route::Tenant(_))
        ));
        // resolve() never hands back an operator's connection as a tenant's.
        let e = resolve(
            &rules(),
            &input("app.acme", None, Some("operator=shared")),
            known,
        )
        .expect_err("operator");
        assert!(matches!(e, RoutingError::BadOptions(_)), "{e}");
        for bad in ["operator=", "operator=a operator=b"] {
            assert!(
                matches!(route_of("ops", None, bad), Err(RoutingError::BadOptions(_))),
                "{bad}"
            );
        }
        route_of("ops", None, "operator=a operator=a").expect("the same twice");
    }

    #[test]
    fn no_source_names_a_tenant() {
        let e = resolve(&rules(), &input("app", None, None), known).expect_err("none");
        let msg = e.to_string();
        assert!(msg.contains("tried sni, options, user, database"), "{msg}");
        assert!(msg.contains("user USER.TENANT"), "{msg}");
    }
}

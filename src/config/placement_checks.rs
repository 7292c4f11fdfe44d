//! The checks `load.rs` runs on the keys of one placement, tenant or
//! operator that go beyond syntax: rls-only keys (operators, shared
//! tables, the mirror setting), schema keys, server-connection caps.

use super::load::{ConfigError, ConfigSource, check_name};
use super::{Config, schema_names};
use std::collections::{HashMap, HashSet};

/// `operator_url` and `operator_pool_size`: rls placements only, the
/// same database as `url`, and another role than the tenants'.
pub(super) fn check_operator_keys(
    pl: &super::PlacementConfig,
    key: &str,
    target: &super::BackendTarget,
    src: &ConfigSource,
) -> Result<(), ConfigError> {
    let Some(url) = &pl.operator_url else {
        if pl.operator_pool_size.is_some() {
            return Err(src.error(
                &format!("{key}.operator_pool_size"),
                "applies only to a placement with an operator_url",
            ));
        }
        return Ok(());
    };
    let at = format!("{key}.operator_url");
    if pl.isolation != super::Isolation::Rls {
        return Err(src.error(&at, "applies only to isolation = \"rls\" placements"));
    }
    let op = super::BackendTarget::from_url(url.expose()).map_err(|m| src.error(&at, m))?;
    // The tenants' role with the operators' policies would hand every
    // tenant every row.
    if op.user == target.user {
        return Err(src.error(
            &at,
            format!(
                "logs in as {:?}, the placement's own (tenants') role; give operators a role of \
                 their own, such as pgt_operator",
                op.user
            ),
        ));
    }
    // Another database would hold another context key (and other rows);
    // another host may be a replica of this one.
    if op.database != target.database {
        return Err(src.error(
            &at,
            format!(
                "names database {:?}, but the placement's url names {:?}; the operators' role \
                 must reach the same shared database",
                op.database, target.database
            ),
        ));
    }
    if pl.operator_pool_size == Some(0) {
        return Err(src.error(&format!("{key}.operator_pool_size"), "must be at least 1"));
    }
    Ok(())
}

/// No operator role is any placement's login role: a tenant logging in as
/// it would see what operators see.
pub(super) fn check_operator_roles(
    cfg: &Config,
    roles: &HashMap<(String, u16, String), &str>,
    src: &ConfigSource,
) -> Result<(), ConfigError> {
    for (name, pl) in &cfg.placements {
        let Some(url) = &pl.operator_url else {
            continue;
        };
        let Ok(op) = super::BackendTarget::from_url(url.expose()) else {
            continue; // reported by check_operator_keys
        };
        if let Some(other) = roles.get(&(op.host.to_ascii_lowercase(), op.port, op.user.clone())) {
            return Err(src.error(
                &format!("placements.{name}.operator_url"),
                format!(
                    "logs in as {:?}, the login role of placements.{other}; an operator role \
                     must be no placement's role",
                    op.user
                ),
            ));
        }
    }
    Ok(())
}

/// `[operators.NAME]`: a safe name, and placements that exist, are rls and
/// have an `operator_url`.
pub(super) fn check_operators(cfg: &Config, src: &ConfigSource) -> Result<(), ConfigError> {
    for (name, op) in &cfg.operators {
        let key = format!("operators.{name}");
        check_name(name).map_err(|m| src.error(&key, m))?;
        if op.cert.as_ref().is_some_and(String::is_empty) {
            return Err(src.error(&format!("{key}.cert"), "name the certificate's identity"));
        }
        if op.cert.is_some() && !cfg.asks_client_certificates() {
            return Err(src.error(
                &format!("{key}.cert"),
                "needs [tls] client_ca, the CA that issues client certificates",
            ));
        }
        let at = format!("{key}.placements");
        if op.placements.is_empty() {
            return Err(src.error(
                &at,
                "list at least one isolation = \"rls\" placement, e.g. placements = [\"shared\"]",
            ));
        }
        let mut seen = HashSet::new();
        for p in &op.placements {
            if !seen.insert(p) {
                return Err(src.error(&at, format!("{p:?} is listed twice")));
            }
            match cfg.placements.get(p) {
                None => return Err(src.error(&at, format!("no [placements.{p}] is defined"))),
                Some(pc) if pc.operator_url.is_none() => {
                    return Err(src.error(
                        &at,
                        format!(
                            "placements.{p} has no operator_url (operators reach only \
                             isolation = \"rls\" placements that name an operator role)"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// A tenant's share of a pool: at least one connection, and no more than
/// the pool has (a larger cap would read as a promise the pool cannot
/// keep).
pub(super) fn check_server_cap(cap: u32, pool_size: u32) -> Result<(), String> {
    if cap == 0 {
        return Err("must be at least 1".into());
    }
    if cap > pool_size {
        return Err(format!(
            "{cap} is more than the placement's pool_size ({pool_size})"
        ));
    }
    Ok(())
}

/// `schema_pattern` and `search_path` belong to schema placements, and
/// must be well formed there.
pub(super) fn check_schema_keys(
    pl: &super::PlacementConfig,
    key: &str,
    src: &ConfigSource,
) -> Result<(), ConfigError> {
    let keys = [
        ("schema_pattern", &pl.schema_pattern),
        ("search_path", &pl.search_path),
    ];
    if pl.isolation != super::Isolation::Schema {
        if let Some((k, _)) = keys.iter().find(|(_, v)| v.is_some()) {
            return Err(src.error(
                &format!("{key}.{k}"),
                "applies only to isolation = \"schema\" placements",
            ));
        }
        return Ok(());
    }
    if let Some(p) = &pl.schema_pattern {
        schema_names::check_pattern(p)
            .map_err(|m| src.error(&format!("{key}.schema_pattern"), m))?;
    }
    if let Some(p) = &pl.search_path {
        schema_names::check_search_path(p)
            .map_err(|m| src.error(&format!("{key}.search_path"), m))?;
    }
    Ok(())
}

/// `app.tenant_id`: what `pgtenant.enter()` accepts as a mirror setting
/// (a placeholder, never one of PostgreSQL's own settings).
pub(super) fn valid_custom_setting(name: &str) -> bool {
    let ident = |p: &str| {
        p.len() <= 63
            && p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() >= 2 && parts.iter().all(|p| ident(p))
}

/// `context_store = "setting"`: on an rls placement, and without a mirror
/// setting (`enter()` sets one setting, and this one is already readable).
pub(super) fn check_context_store(pl: &super::PlacementConfig) -> Result<(), String> {
    if pl.context_store == super::ContextStore::Sequences {
        return Ok(());
    }
    if pl.isolation != super::Isolation::Rls {
        return Err("applies to isolation = \"rls\" placements only".into());
    }
    if pl.tenant_setting.is_some() {
        return Err(format!(
            "\"setting\" keeps the tenant in {} already, which every role can read: \
             remove tenant_setting (applications read current_setting('{}') or \
             pgtenant.current_tenant())",
            super::CONTEXT_SETTING,
            super::CONTEXT_SETTING
        ));
    }
    Ok(())
}

/// A tenant on a `context_store = "setting"` placement: its name must pass
/// the setting's own check (letters, digits, `_`), or no context call
/// could ever set it.
pub(super) fn check_setting_tenant_name(name: &str) -> Result<(), String> {
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is on a placement with context_store = \"setting\", whose tenant names \
             are letters, digits and '_' only ({} accepts nothing else)",
            super::CONTEXT_SETTING
        ))
    }
}

/// `shared_tables` entries: schema-qualified names, as `to_regclass`
/// reads them, on an rls placement only.
pub(super) fn check_shared_tables(pl: &super::PlacementConfig) -> Result<(), String> {
    if pl.shared_tables.is_empty() {
        return Ok(());
    }
    if pl.isolation != super::Isolation::Rls {
        return Err("only an isolation = \"rls\" placement has shared tables".into());
    }
    for name in &pl.shared_tables {
        if !is_qualified_name(name) {
            return Err(format!(
                "{name:?} is not a schema-qualified table name such as \"public.countries\" \
                 (a part that needs them goes in double quotes)"
            ));
        }
    }
    Ok(())
}

/// `schema.table`, each part a plain identifier or a double-quoted one.
pub(super) fn is_qualified_name(name: &str) -> bool {
    fn part(s: &str) -> Option<&str> {
        if let Some(rest) = s.strip_prefix('"') {
            // A quoted identifier: up to the closing quote, `""` inside.
            let mut chars = rest.char_indices().peekable();
            let mut len = 0;
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().map(|&(_, c)| c) == Some('"') {
                        chars.next();
                        len += 1;
                        continue;
                    }
                    return (len > 0).then(|| &rest[i + 1..]);
                }
                len += 1;
            }
            None
        } else {
            let end = s
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(s.len());
            let first = s.chars().next()?;
            (end > 0 && (first.is_ascii_alphabetic() || first == '_')).then(|| &s[end..])
        }
    }
    // The check passes the list as lines; no name may break one.
    if name.len() > 300 || name.chars().any(char::is_control) {
        return false;
    }
    let Some(rest) = part(name) else { return false };
    let Some(rest) = rest.strip_prefix('.') else {
        return false;
    };
    part(rest) == Some("")
}

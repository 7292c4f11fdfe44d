//! Reading and validating a config file. Every error names the key it is
//! about and, where the file has it, the line.

use super::{Config, schema_names};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use toml::de::{DeTable, DeValue};

/// A problem with the config: which file, which key, which line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where a config came from, kept so that later checks (e.g. the catalog's
/// credential parsing) can point at a key's line too.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: String,
    pub text: Arc<str>,
}

impl ConfigSource {
    /// An error about `key` (dotted path such as `placements.shared.url`).
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: line_of_key(&self.text, key),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Reads, parses and validates `path`. Relative paths inside resolve from
/// the file's folder.
pub fn load_file(path: &Path) -> Result<(Config, ConfigSource), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    // `pgtenant.toml` has the parent "": the current directory.
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let base = base.canonicalize().unwrap_or(base);
    let (mut cfg, src) = parse_str(&text, &path.display().to_string())?;
    cfg.base_dir = base;
    Ok((cfg, src))
}

/// Parses and validates config text; `file` is only used in messages.
pub fn parse_str(text: &str, file: &str) -> Result<(Config, ConfigSource), ConfigError> {
    let src = ConfigSource {
        file: file.to_string(),
        text: Arc::from(text),
    };
    let cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_string(),
        line: e.span().map(|s| line_at(text, s.start)),
        key: e
            .span()
            .and_then(|s| key_at(text, s.start))
            .unwrap_or_default(),
        message: e.message().trim().to_string(),
    })?;
    validate(&cfg, &src)?;
    Ok((cfg, src))
}

fn validate(cfg: &Config, src: &ConfigSource) -> Result<(), ConfigError> {
    let p = &cfg.proxy;
    p.listen.parse::<SocketAddr>().map_err(|_| {
        src.error(
            "proxy.listen",
            format!(
                "{:?} is not an address such as \"127.0.0.1:6432\"",
                p.listen
            ),
        )
    })?;
    if p.tenant_from.is_empty() {
        return Err(src.error("proxy.tenant_from", "name at least one source"));
    }
    let mut seen = HashSet::new();
    for s in &p.tenant_from {
        if !seen.insert(*s) {
            return Err(src.error(
                "proxy.tenant_from",
                format!("{:?} is listed twice", s.as_str()),
            ));
        }
    }
    if p.secret_file
        .as_ref()
        .is_some_and(|f| f.as_os_str().is_empty())
    {
        return Err(src.error("proxy.secret_file", "must not be empty"));
    }
    if p.user_separator.is_empty() {
        return Err(src.error("proxy.user_separator", "must not be empty"));
    }
    if p.workers > 256 {
        return Err(src.error("proxy.workers", "at most 256"));
    }
    for (key, value) in [
        ("max_client_connections", p.max_client_connections),
        (
            "max_unauthenticated_connections",
            p.max_unauthenticated_connections,
        ),
        (
            "max_unauthenticated_per_address",
            p.max_unauthenticated_per_address,
        ),
        (
            "default_tenant_max_client_connections",
            p.default_tenant_max_client_connections,
        ),
    ] {
        if value == 0 {
            return Err(src.error(&format!("proxy.{key}"), "must be at least 1"));
        }
    }
    // Zero would refuse every client; a client that must never be timed
    // out is not one the proxy can defend against.
    for (key, value) in [
        ("client_startup_timeout", p.client_startup_timeout),
        ("client_login_timeout", p.client_login_timeout),
    ] {
        if value.is_zero() {
            return Err(src.error(&format!("proxy.{key}"), "must be more than 0"));
        }
    }
    if p.max_message_size.0 < 1024 || p.max_message_size.0 > (1 << 30) {
        return Err(src.error("proxy.max_message_size", "must be between 1kB and 1GB"));
    }
    if p.max_statement_size.0 < 1024 || p.max_statement_size.0 > p.max_client_memory.0 {
        return Err(src.error(
            "proxy.max_statement_size",
            "must be at least 1kB and at most max_client_memory",
        ));
    }
    if let Some(dp) = &p.default_placement
        && !cfg.placements.contains_key(dp)
    {
        return Err(src.error(
            "proxy.default_placement",
            format!("no [placements.{dp}] is defined"),
        ));
    }
    if let Some(admin) = &cfg.admin
        && let Some(listen) = &admin.listen
    {
        listen
            .parse::<SocketAddr>()
            .map_err(|_| src.error("admin.listen", format!("{listen:?} is not an address")))?;
    }
    let mut roles: HashMap<(String, u16, String), &str> = HashMap::new();
    for (name, pl) in &cfg.placements {
        let key = format!("placements.{name}");
        check_name(name).map_err(|m| src.error(&key, m))?;
        if pl.pool_size == 0 {
            return Err(src.error(&format!("{key}.pool_size"), "must be at least 1"));
        }
        if let Some(setting) = &pl.tenant_setting {
            if pl.isolation != super::Isolation::Rls {
                return Err(src.error(
                    &format!("{key}.tenant_setting"),
                    "applies to isolation = \"rls\" placements only",
                ));
            }
            if !valid_custom_setting(setting) {
                return Err(src.error(
                    &format!("{key}.tenant_setting"),
                    format!(
                        "{setting:?} is not a custom setting name: two or more ASCII \
                         identifiers joined by '.', such as \"app.tenant_id\""
                    ),
                ));
            }
        }
        if let Some(cap) = pl.tenant_max_server_connections {
            check_server_cap(cap, pl.pool_size)
                .map_err(|m| src.error(&format!("{key}.tenant_max_server_connections"), m))?;
        }
        check_schema_keys(pl, &key, src)?;
        let target = crate::pool::BackendTarget::from_url(pl.url.expose())
            .map_err(|m| src.error(&format!("{key}.url"), m))?;
        check_shared_tables(pl).map_err(|m| src.error(&format!("{key}.shared_tables"), m))?;
        check_operator_keys(pl, &key, &target, src)?;
        // One backend role serving two placements can signal and watch
        // the other's backends and change its password: no boundary.
        let role = (target.host.to_ascii_lowercase(), target.port, target.user);
        if let Some(first) = roles.insert(role.clone(), name)
            && !(pl.trust_backend_role && cfg.placements[first].trust_backend_role)
        {
            return Err(src.error(
                &format!("{key}.url"),
                format!(
                    "placements.{first} and placements.{name} both log in as user {:?} on {}:{}; \
                     each could terminate, cancel and watch the other's backends. Give each \
                     placement its own role, or set trust_backend_role = true on both",
                    role.2, role.0, role.1
                ),
            ));
        }
    }
    check_operator_roles(cfg, &roles, src)?;
    check_operators(cfg, src)?;
    let mut dedicated: HashMap<&str, &str> = HashMap::new();
    // (placement, schema) -> the tenant that has it.
    let mut schemas: HashMap<(&str, String), &str> = HashMap::new();
    for (name, t) in &cfg.tenants {
        let key = format!("tenants.{name}");
        check_name(name).map_err(|m| src.error(&key, m))?;
        match &t.placement {
            Some(pl) if !cfg.placements.contains_key(pl) => {
                return Err(src.error(
                    &format!("{key}.placement"),
                    format!("no [placements.{pl}] is defined"),
                ));
            }
            None if p.default_placement.is_none() => {
                return Err(src.error(
                    &key,
                    "has no placement and proxy.default_placement is not set",
                ));
            }
            _ => {}
        }
        // Several tenants in one database see each other's data.
        let placement = t.placement.as_deref().or(p.default_placement.as_deref());
        if let Some(pl) = placement
            && let Some(pc) = cfg.placements.get(pl)
            && pc.isolation == super::Isolation::Database
            && !pc.allow_shared_database
            && let Some(first) = dedicated.insert(pl, name)
        {
            return Err(src.error(
                &format!("{key}.placement"),
                format!(
                    "tenants {first} and {name} are both on placements.{pl}, whose isolation is \
                     \"database\": one database holds one tenant. Give each tenant its own \
                     placement, or set allow_shared_database = true on placements.{pl}"
                ),
            ));
        }
        match placement.and_then(|pl| cfg.placements.get_key_value(pl)) {
            Some((pl, pc)) if pc.isolation == super::Isolation::Schema => {
                let (schema, _) = schema_names::tenant_search_path(
                    pc.schema_pattern.as_deref(),
                    pc.search_path.as_deref(),
                    name,
                    t.schema.as_deref(),
                )
                .map_err(|m| {
                    let at = if t.schema.is_some() {
                        format!("{key}.schema")
                    } else {
                        format!("placements.{pl}.schema_pattern")
                    };
                    src.error(&at, m)
                })?;
                // Two tenants in one schema see each other's tables.
                if let Some(first) = schemas.insert((pl.as_str(), schema.clone()), name) {
                    return Err(src.error(
                        &format!("{key}.schema"),
                        format!(
                            "tenants {first} and {name} would both use schema {schema:?} of \
                             placements.{pl}; give one of them its own `schema`"
                        ),
                    ));
                }
            }
            _ if t.schema.is_some() => {
                return Err(src.error(
                    &format!("{key}.schema"),
                    "applies only to tenants on an isolation = \"schema\" placement",
                ));
            }
            _ => {}
        }
        if t.users.is_empty() {
            return Err(src.error(
                &format!("{key}.users"),
                "list at least one user, e.g. users = { app = \"secret\" }",
            ));
        }
        if t.max_pinned_connections == Some(0) {
            return Err(src.error(
                &format!("{key}.max_pinned_connections"),
                "must be at least 1",
            ));
        }
        if t.max_client_connections == Some(0) {
            return Err(src.error(
                &format!("{key}.max_client_connections"),
                "must be at least 1",
            ));
        }
        if let Some(cap) = t.max_server_connections
            && let Some(pc) = placement.and_then(|pl| cfg.placements.get(pl))
        {
            check_server_cap(cap, pc.pool_size)
                .map_err(|m| src.error(&format!("{key}.max_server_connections"), m))?;
        }
    }
    Ok(())
}

/// `operator_url` and `operator_pool_size`: rls placements only, the
/// same database as `url`, and another role than the tenants'.
fn check_operator_keys(
    pl: &super::PlacementConfig,
    key: &str,
    target: &crate::pool::BackendTarget,
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
    let op = crate::pool::BackendTarget::from_url(url.expose()).map_err(|m| src.error(&at, m))?;
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
fn check_operator_roles(
    cfg: &Config,
    roles: &HashMap<(String, u16, String), &str>,
    src: &ConfigSource,
) -> Result<(), ConfigError> {
    for (name, pl) in &cfg.placements {
        let Some(url) = &pl.operator_url else {
            continue;
        };
        let Ok(op) = crate::pool::BackendTarget::from_url(url.expose()) else {
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
fn check_operators(cfg: &Config, src: &ConfigSource) -> Result<(), ConfigError> {
    for (name, op) in &cfg.operators {
        let key = format!("operators.{name}");
        check_name(name).map_err(|m| src.error(&key, m))?;
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
fn check_server_cap(cap: u32, pool_size: u32) -> Result<(), String> {
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
fn check_schema_keys(
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

/// Tenant and placement names travel in host names, user names and metric
/// labels, so they are kept to a safe alphabet.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1-63 characters of letters, digits, '_' or '-'"
        ))
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line where a dotted key (or the deepest existing prefix of it) is
/// written, found from the parser's spans.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable = root.get_ref();
    let mut best = None;
    for part in key.split('.') {
        let (k, v) = table.get_key_value(part)?;
        best = Some(line_at(text, k.span().start));
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    best
}

/// The dotted key written last at or before byte `offset`, for errors
/// the parser reports by position only (unknown keys, bad values). An
/// error about a whole table (a missing field) points at its header's
/// `[`: the keys of that header, written just after, name it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    fn walk(table: &DeTable, prefix: &str, upto: usize, best: &mut Option<(usize, String)>) {
        for (k, v) in table.iter() {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            let start = k.span().start;
            if start <= upto && best.as_ref().is_none_or(|(b, _)| start >= *b) {
                *best = Some((start, path.clone()));
            }
            if let DeValue::Table(t) = v.get_ref() {
                walk(t, &path, upto, best);
            }
        }
    }
    let rest = text.get(offset..)?;
    let upto = if rest.starts_with('[') {
        offset + rest.find(']').unwrap_or(0)
    } else {
        offset
    };
    let root = DeTable::parse(text).ok()?;
    let mut best = None;
    walk(root.get_ref(), "", upto, &mut best);
    best.map(|(_, path)| path)
}

/// `app.tenant_id`: what `pgtenant.enter()` accepts as a mirror setting
/// (a placeholder, never one of PostgreSQL's own settings).
fn valid_custom_setting(name: &str) -> bool {
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

/// `shared_tables` entries: schema-qualified names, as `to_regclass`
/// reads them, on an rls placement only.
fn check_shared_tables(pl: &super::PlacementConfig) -> Result<(), String> {
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
fn is_qualified_name(name: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:6432"
default_placement = "shared"

[placements.shared]
url = "postgres://pgtenant:secret@127.0.0.1:5432/app_shared"
isolation = "rls"

[placements.acme_db]
url = "postgres://pgt_acme:secret@127.0.0.1:5432/tenant_acme"
isolation = "database"
pool_size = 10

[tenants.acme]
placement = "acme_db"
users = { app = "acme-secret" }
max_client_connections = 500

[tenants.globex]
users = { app = "globex-secret" }
"#;

    #[test]
    fn shared_tables_are_qualified_names_on_rls_placements() {
        for good in [
            "public.countries",
            "ref.\"Country Codes\"",
            "\"a\"\"b\".c_1$",
        ] {
            assert!(is_qualified_name(good), "{good}");
        }
        for bad in [
            "countries",
            "public.",
            ".countries",
            "a.b.c",
            "public.\"\"",
            "public.\"open",
            "public.coun tries",
            "public.countries;drop",
            "public.\"a\nb\"",
            "1x.y",
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
        let ok = GOOD.replace(
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\nshared_tables = [\"public.countries\"]\n",
        );
        parse_str(&ok, "t.toml").expect("valid");
        let unqualified = ok.replace("\"public.countries\"", "\"countries\"");
        let err = parse_str(&unqualified, "t.toml").expect_err("unqualified");
        assert_eq!(err.key, "placements.shared.shared_tables", "{err}");
        let on_database = GOOD.replace(
            "pool_size = 10\n",
            "pool_size = 10\nshared_tables = [\"public.countries\"]\n",
        );
        let err = parse_str(&on_database, "t.toml").expect_err("not rls");
        assert_eq!(err.key, "placements.acme_db.shared_tables", "{err}");
    }

    #[test]
    fn parses_the_contract_example() {
        let (cfg, _) = parse_str(GOOD, "t.toml").expect("valid");
        assert_eq!(cfg.placements["shared"].pool_size, 20);
        assert_eq!(cfg.placements["acme_db"].pool_size, 10);
        assert_eq!(cfg.tenants["acme"].max_client_connections, Some(500));
        assert_eq!(cfg.proxy.tenant_from.len(), 4);
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let bad = GOOD.replace("pool_size = 10", "pool_size = 0");
        let err = parse_str(&bad, "t.toml").expect_err("invalid");
        assert_eq!(err.key, "placements.acme_db.pool_size");
        assert_eq!(err.line, Some(13));
        assert!(
            err.to_string()
                .starts_with("t.toml:13: placements.acme_db.pool_size")
        );
    }

    #[test]
    fn unknown_placement_is_named() {
        let bad = GOOD.replace("placement = \"acme_db\"", "placement = \"nope\"");
        let err = parse_str(&bad, "t.toml").expect_err("invalid");
        assert_eq!(err.key, "tenants.acme.placement");
        assert_eq!(err.line, Some(16));
    }

    #[test]
    fn syntax_and_type_errors_carry_a_line() {
        let bad = GOOD.replace("pool_size = 10", "pool_size = \"ten\"");
        let err = parse_str(&bad, "t.toml").expect_err("invalid");
        assert_eq!(err.line, Some(13));
        let unknown = GOOD.replace("pool_size = 10", "pool_sise = 10");
        let err = parse_str(&unknown, "t.toml").expect_err("invalid");
        assert!(err.message.contains("pool_sise"), "{err}");
        assert_eq!(err.line, Some(13));
        assert_eq!(err.key, "placements.acme_db.pool_sise");
        let dur = GOOD.replace("[proxy]\n", "[proxy]\nquery_wait_timeout = \"soon\"\n");
        let err = parse_str(&dur, "t.toml").expect_err("invalid");
        assert_eq!(err.key, "proxy.query_wait_timeout", "{err}");
    }

    #[test]
    fn a_missing_field_names_its_table() {
        let bad = GOOD.replace("isolation = \"database\"\n", "");
        let err = parse_str(&bad, "t.toml").expect_err("invalid");
        assert!(err.message.contains("isolation"), "{err}");
        assert_eq!(err.key, "placements.acme_db", "{err}");
        assert_eq!(err.line, Some(10), "{err}");
    }

    #[test]
    fn missing_default_placement_is_reported_on_the_tenant() {
        let bad = GOOD.replace("default_placement = \"shared\"\n", "");
        let err = parse_str(&bad, "t.toml").expect_err("invalid");
        assert_eq!(err.key, "tenants.globex");
    }

    #[test]
    fn one_role_on_two_placements_is_refused_unless_both_trust_it() {
        let bad = GOOD.replace("pgt_acme:secret", "pgtenant:other");
        let err = parse_str(&bad, "t.toml").expect_err("invalid");
        assert!(err.message.contains("trust_backend_role"), "{err}");
        assert!(err.message.contains("placements.acme_db"), "{err}");
        // Host names compare without case; another port is another server.
        let other_host = bad.replace("127.0.0.1:5432/tenant_acme", "LOCALHOST:5432/tenant_acme");
        parse_str(&other_host, "t.toml").expect("another host");
        let upper = bad.replace("127.0.0.1:5432/app_shared", "LOCALHOST:5432/app_shared");
        let upper = upper.replace("127.0.0.1:5432/tenant_acme", "localhost:5432/tenant_acme");
        parse_str(&upper, "t.toml").expect_err("same host");
        let other_port = bad.replace("5432/tenant_acme", "5433/tenant_acme");
        parse_str(&other_port, "t.toml").expect("another port");
        let one = bad.replace(
            "pool_size = 10\n",
            "pool_size = 10\ntrust_backend_role = true\n",
        );
        parse_str(&one, "t.toml").expect_err("only one placement opted out");
        let both = one.replace(
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\ntrust_backend_role = true\n",
        );
        parse_str(&both, "t.toml").expect("both opted out");
    }

    #[test]
    fn two_tenants_on_one_database_placement_are_refused_unless_allowed() {
        let bad = GOOD.replace(
            "users = { app = \"globex-secret\" }",
            "placement = \"acme_db\"\nusers = { app = \"globex-secret\" }",
        );
        let err = parse_str(&bad, "t.toml").expect_err("invalid");
        assert_eq!(err.key, "tenants.globex.placement", "{err}");
        assert!(err.message.contains("allow_shared_database"), "{err}");
        let allowed = bad.replace(
            "pool_size = 10\n",
            "pool_size = 10\nallow_shared_database = true\n",
        );
        parse_str(&allowed, "t.toml").expect("opted out");
        // Several tenants on an rls placement are what it is for.
        let rls = GOOD.replace("placement = \"acme_db\"\n", "");
        parse_str(&rls, "t.toml").expect("rls");
    }

    #[test]
    fn schema_placements_check_their_keys_and_every_tenants_schema() {
        let schema = GOOD.replace("isolation = \"rls\"", "isolation = \"schema\"");
        parse_str(&schema, "t.toml").expect("defaults");
        let keyed = |placement: &str, tenant: &str| {
            schema
                .replace(
                    "isolation = \"schema\"\n",
                    &format!("isolation = \"schema\"\n{placement}\n"),
                )
                .replace(
                    "users = { app = \"globex-secret\" }",
                    &format!("users = {{ app = \"globex-secret\" }}\n{tenant}"),
                )
        };
        parse_str(
            &keyed(
                "schema_pattern = \"{tenant}_data\"\nsearch_path = \"{schema}, public\"",
                "schema = \"globex-eu\"",
            ),
            "t.toml",
        )
        .expect("both keys and an override");
        for (placement, tenant, key) in [
            (
                "schema_pattern = \"{tenant}\"",
                "",
                "placements.shared.schema_pattern",
            ),
            (
                "schema_pattern = \"x\"",
                "",
                "placements.shared.schema_pattern",
            ),
            (
                "search_path = \"public\"",
                "",
                "placements.shared.search_path",
            ),
            (
                "search_path = \"{schema};x\"",
                "",
                "placements.shared.search_path",
            ),
            ("", "schema = \"public\"", "tenants.globex.schema"),
            ("", "schema = \"a.b\"", "tenants.globex.schema"),
        ] {
            // "{tenant}" alone gives tenant "globex" the schema "globex";
            // refused only where it names a shared one.
            let text = keyed(placement, tenant).replace("[tenants.globex]", "[tenants.public]");
            let err = parse_str(&text, "t.toml").expect_err(placement);
            let key = key.replace("tenants.globex", "tenants.public");
            assert_eq!(err.key, key, "{err}");
        }
        // Two tenants, one schema.
        let twice = keyed("", "schema = \"tenant_acme\"").replace(
            "[tenants.acme]\nplacement = \"acme_db\"\n",
            "[tenants.acme]\n",
        );
        let err = parse_str(&twice, "t.toml").expect_err("one schema");
        assert_eq!(err.key, "tenants.globex.schema", "{err}");
        assert!(err.message.contains("acme"), "{err}");
        // The keys belong to schema placements only.
        let err = parse_str(
            &GOOD.replace(
                "isolation = \"rls\"",
                "isolation = \"rls\"\nsearch_path = \"{schema}\"",
            ),
            "t.toml",
        )
        .expect_err("rls");
        assert_eq!(err.key, "placements.shared.search_path", "{err}");
        let err = parse_str(
            &GOOD.replace(
                "users = { app = \"acme-secret\" }",
                "users = { app = \"acme-secret\" }\nschema = \"acme\"",
            ),
            "t.toml",
        )
        .expect_err("database");
        assert_eq!(err.key, "tenants.acme.schema", "{err}");
    }

    #[test]
    fn login_limits_default_and_refuse_zero() {
        let (cfg, _) = parse_str(GOOD, "t.toml").expect("valid");
        let p = &cfg.proxy;
        assert_eq!(p.max_unauthenticated_connections, 2_000);
        assert_eq!(p.max_unauthenticated_per_address, 128);
        assert_eq!(p.default_tenant_max_client_connections, 1_000);
        assert_eq!(p.client_startup_timeout.as_secs(), 5);
        assert_eq!(p.client_login_timeout.as_secs(), 15);
        for line in [
            "max_unauthenticated_connections = 0",
            "max_unauthenticated_per_address = 0",
            "default_tenant_max_client_connections = 0",
            "client_startup_timeout = \"0s\"",
            "client_login_timeout = \"0s\"",
        ] {
            let bad = GOOD.replace("[proxy]\n", &format!("[proxy]\n{line}\n"));
            let err = parse_str(&bad, "t.toml").expect_err(line);
            let key = line.split(' ').next().expect("key");
            assert_eq!(err.key, format!("proxy.{key}"), "{err}");
            assert_eq!(err.line, Some(3), "{err}");
        }
    }

    #[test]
    fn tenant_server_caps_default_to_the_pool_or_half_of_a_shared_one() {
        let (cfg, _) = parse_str(GOOD, "t.toml").expect("valid");
        let n = cfg.tenants_per_placement();
        // Alone on their placements: the whole pool.
        assert_eq!(cfg.tenant_server_cap("acme", &n), Some(10));
        assert_eq!(cfg.tenant_server_cap("globex", &n), Some(20));
        assert_eq!(cfg.tenant_server_cap("nobody", &n), None);
        let shared = format!("{GOOD}\n[tenants.initech]\nusers = {{ app = \"i\" }}\n");
        let (cfg, _) = parse_str(&shared, "t.toml").expect("valid");
        let n = cfg.tenants_per_placement();
        assert_eq!(n.get("shared"), Some(&2));
        assert_eq!(cfg.tenant_server_cap("globex", &n), Some(10));
        assert_eq!(cfg.tenant_server_cap("initech", &n), Some(10));
        assert_eq!(cfg.tenant_server_cap("acme", &n), Some(10));
        // The placement's default, then the tenant's own.
        let set = shared
            .replace(
                "isolation = \"rls\"\n",
                "isolation = \"rls\"\ntenant_max_server_connections = 3\n",
            )
            .replace(
                "[tenants.initech]\n",
                "[tenants.initech]\nmax_server_connections = 20\n",
            );
        let (cfg, _) = parse_str(&set, "t.toml").expect("valid");
        let n = cfg.tenants_per_placement();
        assert_eq!(cfg.tenant_server_cap("globex", &n), Some(3));
        assert_eq!(cfg.tenant_server_cap("initech", &n), Some(20));
        // A pool of one shared: still one each.
        let tiny = shared.replace("pool_size = 20\n", "").replace(
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\npool_size = 1\n",
        );
        let (cfg, _) = parse_str(&tiny, "t.toml").expect("valid");
        let n = cfg.tenants_per_placement();
        assert_eq!(cfg.tenant_server_cap("globex", &n), Some(1));
    }

    #[test]
    fn tenant_server_caps_must_fit_the_pool() {
        for (find, put, key) in [
            (
                "isolation = \"rls\"\n",
                "isolation = \"rls\"\ntenant_max_server_connections = 0\n",
                "placements.shared.tenant_max_server_connections",
            ),
            (
                "isolation = \"rls\"\n",
                "isolation = \"rls\"\ntenant_max_server_connections = 21\n",
                "placements.shared.tenant_max_server_connections",
            ),
            (
                "max_client_connections = 500\n",
                "max_client_connections = 500\nmax_server_connections = 0\n",
                "tenants.acme.max_server_connections",
            ),
            (
                "max_client_connections = 500\n",
                "max_client_connections = 500\nmax_server_connections = 11\n",
                "tenants.acme.max_server_connections",
            ),
        ] {
            let bad = GOOD.replace(find, put);
            let err = parse_str(&bad, "t.toml").expect_err(put);
            assert_eq!(err.key, key, "{err}");
            assert!(err.line.is_some(), "{err}");
        }
        let fits = GOOD.replace(
            "max_client_connections = 500\n",
            "max_client_connections = 500\nmax_server_connections = 10\n",
        );
        parse_str(&fits, "t.toml").expect("the whole pool is allowed");
    }

    #[test]
    fn operators_reach_rls_placements_through_a_role_of_their_own() {
        let op_url = "operator_url = \"postgres://pgt_operator:op@127.0.0.1:5432/app_shared\"\n";
        let with_url = GOOD.replace(
            "isolation = \"rls\"\n",
            &format!("isolation = \"rls\"\n{op_url}"),
        );
        let ok =
            format!("{with_url}\n[operators.ops]\npassword = \"p\"\nplacements = [\"shared\"]\n");
        let (cfg, _) = parse_str(&ok, "t.toml").expect("valid");
        assert_eq!(cfg.placements["shared"].operator_pool(), Some(2));
        assert_eq!(cfg.placements["acme_db"].operator_pool(), None);
        assert_eq!(cfg.operators["ops"].placements, ["shared"]);
        let sized = ok.replace(op_url, &format!("{op_url}operator_pool_size = 5\n"));
        let (cfg, _) = parse_str(&sized, "t.toml").expect("valid");
        assert_eq!(cfg.placements["shared"].operator_pool(), Some(5));

        let refused = |text: &str, key: &str, needle: &str| {
            let err = parse_str(text, "t.toml").expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(err.message.contains(needle), "{err}");
            assert!(err.line.is_some(), "{err}");
        };
        // The tenants' own role, another placement's role, another database.
        refused(
            &ok.replace("pgt_operator:op", "pgtenant:op"),
            "placements.shared.operator_url",
            "tenants') role",
        );
        refused(
            &ok.replace("pgt_operator:op", "pgt_acme:op"),
            "placements.shared.operator_url",
            "placements.acme_db",
        );
        refused(
            &ok.replace("5432/app_shared\"\noperator", "5432/other\"\noperator")
                .replace("op@127.0.0.1:5432/app_shared", "op@127.0.0.1:5432/other"),
            "placements.shared.operator_url",
            "same shared database",
        );
        refused(
            &ok.replace(op_url, &format!("{op_url}operator_pool_size = 0\n")),
            "placements.shared.operator_pool_size",
            "at least 1",
        );
        refused(
            &GOOD.replace(
                "isolation = \"rls\"\n",
                "isolation = \"rls\"\noperator_pool_size = 3\n",
            ),
            "placements.shared.operator_pool_size",
            "operator_url",
        );
        // Not on a database placement.
        refused(
            &GOOD.replace("pool_size = 10\n", &format!("pool_size = 10\n{op_url}")),
            "placements.acme_db.operator_url",
            "rls",
        );
        // [operators.*]: placements required, existing, with an operator_url.
        for (placements, needle) in [
            ("[]", "at least one"),
            ("[\"nope\"]", "no [placements.nope]"),
            ("[\"acme_db\"]", "no operator_url"),
            ("[\"shared\", \"shared\"]", "twice"),
        ] {
            refused(
                &ok.replace(
                    "placements = [\"shared\"]",
                    &format!("placements = {placements}"),
                ),
                "operators.ops.placements",
                needle,
            );
        }
        refused(
            &ok.replace("[operators.ops]", "[operators.\"o ps\"]"),
            "operators.o ps",
            "letters, digits",
        );
        let err = parse_str(&ok.replace("password = \"p\"\n", ""), "t.toml").expect_err("password");
        assert!(err.message.contains("password"), "{err}");
    }

    #[test]
    fn durations_and_sizes() {
        let text = format!("{GOOD}\n",).replace(
            "[proxy]\n",
            "[proxy]\nquery_wait_timeout = \"1500ms\"\nmax_message_size = \"2MB\"\n",
        );
        let (cfg, _) = parse_str(&text, "t.toml").expect("valid");
        assert_eq!(cfg.proxy.query_wait_timeout.as_millis(), 1500);
        assert_eq!(cfg.proxy.max_message_size.0, 2 << 20);
    }
}

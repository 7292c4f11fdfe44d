//! Reading and validating a config file. Every error names the key it is
//! about and, where the file has it, the line.

use super::placement_checks::{
    check_context_store, check_operator_keys, check_operator_roles, check_operators,
    check_schema_keys, check_server_cap, check_setting_tenant_name, check_shared_tables,
    valid_custom_setting,
};
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
    // Secret files (`{ file = "..." }`) resolve from the same folder.
    let (mut cfg, src) =
        super::secrets::with_base_dir(&base, || parse_str(&text, &path.display().to_string()))?;
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
    super::domains::tenant_domains(cfg).map_err(|(key, m)| src.error(&key, m))?;
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
        ("pause_timeout", p.pause_timeout),
        ("auth_failure_window", p.auth_failure_window),
        ("auth_ban_time", p.auth_ban_time),
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
    if cfg.admin.as_ref().is_some_and(|a| a.tls) && cfg.tls.is_none() {
        return Err(src.error(
            "admin.tls",
            "needs a [tls] table: the admin endpoint serves its certificates",
        ));
    }
    if let Some(admin) = &cfg.admin {
        if let Some(token) = &admin.token {
            // Sent in a header: visible ASCII, and long enough not to guess.
            let t = token.expose();
            if t.len() < 16 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(src.error("admin.token", "must be 16 to 256 visible ASCII characters"));
            }
        }
        if admin.top_tenants > super::MAX_TOP_TENANTS {
            return Err(src.error(
                "admin.top_tenants",
                format!("at most {}", super::MAX_TOP_TENANTS),
            ));
        }
        certificates_asked_for(cfg, src, "admin.users", &admin.users)?;
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
        check_context_store(pl).map_err(|m| src.error(&format!("{key}.context_store"), m))?;
        if let Some(cap) = pl.tenant_max_server_connections {
            check_server_cap(cap, pl.pool_size)
                .map_err(|m| src.error(&format!("{key}.tenant_max_server_connections"), m))?;
        }
        check_schema_keys(pl, &key, src)?;
        let target = super::BackendTarget::from_url(pl.url.expose())
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
        if name == super::ADMIN_DATABASE {
            return Err(src.error(
                &key,
                format!(
                    "the name {name:?} is reserved: database {name:?} is the admin console; \
                     rename the tenant"
                ),
            ));
        }
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
        if placement
            .and_then(|pl| cfg.placements.get(pl))
            .is_some_and(|pc| pc.context_store == super::ContextStore::Setting)
        {
            check_setting_tenant_name(name).map_err(|m| src.error(&key, m))?;
        }
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
        certificates_asked_for(cfg, src, &format!("{key}.users"), &t.users)?;
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

/// Tenant and placement names travel in host names, user names and metric
/// labels, so they are kept to a safe alphabet.
pub(super) fn check_name(name: &str) -> Result<(), String> {
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

/// A user of `users` (at `key`) who logs in by client certificate needs
/// `[tls] client_ca`, or no certificate would ever be asked for.
fn certificates_asked_for(
    cfg: &Config,
    src: &ConfigSource,
    key: &str,
    users: &std::collections::BTreeMap<String, super::UserAuth>,
) -> Result<(), ConfigError> {
    match users.iter().find(|(_, u)| u.cert.is_some()) {
        Some((user, _)) if !cfg.asks_client_certificates() => Err(src.error(
            &format!("{key}.{user}"),
            "logs in by client certificate: set [tls] client_ca to the CA that issues them",
        )),
        _ => Ok(()),
    }
}
#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "load_placement_tests.rs"]
mod placement_tests;

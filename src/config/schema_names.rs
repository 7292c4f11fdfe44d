//! `isolation = "schema"` placements: the schema each tenant's names
//! resolve in (`schema_pattern`, or the tenant's own `schema`) and the
//! `search_path` its clients start with. Checked at load, so that every
//! tenant's schema is a valid, unique identifier before any client logs in.
//!
//! Pure text work; what the path does at run time is `client`'s and
//! `session::params`'s.

use postgres_protocol::escape::escape_identifier;

/// The placement's schema name for a tenant, unless it sets its own.
/// Prefixed, so that no tenant name (`public`, `pg_catalog`) can name a
/// schema every tenant shares.
pub const DEFAULT_SCHEMA_PATTERN: &str = "tenant_{tenant}";

/// The path a tenant's clients start with: its schema alone.
pub const DEFAULT_SEARCH_PATH: &str = "{schema}";

/// PostgreSQL cuts identifiers at NAMEDATALEN - 1 bytes; two long names
/// that agree up to the cut would name one schema.
const MAX_IDENTIFIER: usize = 63;

/// Schemas every tenant of a database shares (or the system's own): a
/// tenant's schema may not be one of them.
const SHARED_SCHEMAS: &[&str] = &["public", "information_schema", "pgtenant"];

/// The schema `pattern` gives `tenant`. `pattern` holds `{tenant}` exactly
/// once; the rest is letters, digits, `_` or `-`, as tenant names are.
pub fn expand_pattern(pattern: &str, tenant: &str) -> Result<String, String> {
    check_pattern(pattern)?;
    let schema = pattern.replace("{tenant}", tenant);
    check_schema(&schema).map_err(|e| format!("for tenant {tenant:?}: {e}"))?;
    Ok(schema)
}

/// Checks a `schema_pattern` by itself (`expand_pattern` checks what it
/// gives each tenant).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.matches("{tenant}").count() != 1 {
        return Err(format!(
            "{pattern:?} must contain {{tenant}} exactly once (default {DEFAULT_SCHEMA_PATTERN:?})"
        ));
    }
    let literal = pattern.replace("{tenant}", "");
    if !literal.bytes().all(name_byte) {
        return Err(format!(
            "{pattern:?}: outside {{tenant}}, use only letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

/// A tenant's schema and the `search_path` its clients start with, on a
/// placement with this `schema_pattern` and `search_path` (defaults when
/// `None`); `own` is the tenant's `schema` key.
pub fn tenant_search_path(
    pattern: Option<&str>,
    template: Option<&str>,
    tenant: &str,
    own: Option<&str>,
) -> Result<(String, String), String> {
    let schema = match own {
        Some(s) => {
            check_schema(s)?;
            s.to_string()
        }
        None => expand_pattern(pattern.unwrap_or(DEFAULT_SCHEMA_PATTERN), tenant)?,
    };
    let template = template.unwrap_or(DEFAULT_SEARCH_PATH);
    check_search_path(template)?;
    let path = render_search_path(template, &schema);
    Ok((schema, path))
}

/// A tenant's schema name: 1-63 letters, digits, `_` or `-`, not a shared
/// or system schema. It is used exactly as written (always quoted), so
/// upper case and `-` are kept.
pub fn check_schema(schema: &str) -> Result<(), String> {
    if schema.is_empty() || schema.len() > MAX_IDENTIFIER || !schema.bytes().all(name_byte) {
        return Err(format!(
            "schema name {schema:?} must be 1-{MAX_IDENTIFIER} characters of letters, digits, '_' or '-'"
        ));
    }
    let lower = schema.to_ascii_lowercase();
    if lower.starts_with("pg_") || SHARED_SCHEMAS.contains(&lower.as_str()) {
        return Err(format!(
            "schema name {schema:?} is a shared or system schema, not a tenant's own"
        ));
    }
    Ok(())
}

/// Checks a placement's `search_path` template: a comma-separated list
/// holding `{schema}` exactly once; other entries are schema names
/// (plain, or double-quoted without quotes inside).
pub fn check_search_path(template: &str) -> Result<(), String> {
    let mut found = 0;
    for entry in template.split(',').map(str::trim) {
        if entry == "{schema}" {
            found += 1;
        } else if !plain_entry(entry) {
            return Err(format!(
                "{template:?}: {entry:?} is not a schema name (list {{schema}} and names such as public, separated by commas)"
            ));
        }
    }
    if found != 1 {
        return Err(format!(
            "{template:?} must list {{schema}} exactly once (default {DEFAULT_SEARCH_PATH:?})"
        ));
    }
    Ok(())
}

/// The `search_path` value for `schema` from a checked template: the
/// schema quoted as an identifier where `{schema}` stands, entries joined
/// the way PostgreSQL shows them.
pub fn render_search_path(template: &str, schema: &str) -> String {
    template
        .split(',')
        .map(str::trim)
        .map(|entry| {
            if entry == "{schema}" {
                escape_identifier(schema)
            } else {
                entry.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// `public`, `"$user"`, `"My Schema"`: what a search_path entry may be
/// besides `{schema}`.
fn plain_entry(entry: &str) -> bool {
    if let Some(inner) = entry.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
        return !inner.is_empty() && inner.len() <= MAX_IDENTIFIER && !inner.contains('"');
    }
    let mut bytes = entry.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$')
        && entry.len() <= MAX_IDENTIFIER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_to_quoted_unique_names() {
        assert_eq!(
            expand_pattern(DEFAULT_SCHEMA_PATTERN, "acme-eu").as_deref(),
            Ok("tenant_acme-eu")
        );
        assert_eq!(
            expand_pattern("{tenant}_data", "a").as_deref(),
            Ok("a_data")
        );
        for bad in [
            "tenant",
            "{tenant}{tenant}",
            "t.{tenant}",
            "\"{tenant}\"",
            "",
        ] {
            assert!(expand_pattern(bad, "a").is_err(), "{bad}");
        }
        // The bare name would put these tenants in shared schemas.
        assert!(expand_pattern("{tenant}", "public").is_err());
        assert!(expand_pattern("{tenant}", "pg_catalog").is_err());
        assert!(expand_pattern("{tenant}", "Information_Schema").is_err());
        // PostgreSQL would cut it at 63 bytes.
        assert!(expand_pattern(DEFAULT_SCHEMA_PATTERN, &"x".repeat(57)).is_err());
        assert!(expand_pattern(DEFAULT_SCHEMA_PATTERN, &"x".repeat(56)).is_ok());
    }

    #[test]
    fn search_paths_list_the_schema_once() {
        check_search_path(DEFAULT_SEARCH_PATH).expect("default");
        check_search_path("{schema}, public").expect("with public");
        check_search_path("{schema},\"$user\", ext_1").expect("quoted");
        for bad in [
            "public",
            "{schema}, {schema}",
            "{schema}; DROP TABLE x",
            "{schema}, \"a\"b\"",
            "{schema}, Public",
            "{schema}, ",
        ] {
            assert!(check_search_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            render_search_path("{schema} ,public", "tenant_acme-eu"),
            "\"tenant_acme-eu\", public"
        );
        assert_eq!(render_search_path("{schema}", "t_A"), "\"t_A\"");
    }
}

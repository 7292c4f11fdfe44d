//! Plaintext secrets in a config file others may read (issue 20): `check`
//! and `serve` warn, naming each key, so an operator learns it before an
//! attacker does. Client passwords can be replaced by SCRAM verifiers
//! (`pgtenant hash-password`); placement URLs need their password in
//! clear, so their only protection is the file's mode.

use super::Config;
use super::backend_url::BackendTarget;
use std::path::Path;

/// The keys of `cfg` that hold a secret in clear: plaintext passwords
/// (not `SCRAM-SHA-256$...` verifiers), URL passwords, the admin token.
pub fn plaintext_secrets(cfg: &Config) -> Vec<String> {
    // Secrets read from the environment or a file are not in the file.
    let plain = |s: &super::Secret| s.is_inline() && !s.expose().starts_with("SCRAM-SHA-256$");
    let mut keys = Vec::new();
    for (t, tenant) in &cfg.tenants {
        for (u, auth) in &tenant.users {
            if auth.password.as_ref().is_some_and(plain) {
                keys.push(format!("tenants.{t}.users.{u}"));
            }
        }
    }
    for (p, placement) in &cfg.placements {
        let urls = [
            ("url", Some(&placement.url)),
            ("operator_url", placement.operator_url.as_ref()),
        ];
        for (key, url) in urls {
            if let Some(url) = url
                && url.is_inline()
                && BackendTarget::from_url(url.expose()).is_ok_and(|t| t.password.is_some())
            {
                keys.push(format!("placements.{p}.{key}"));
            }
        }
    }
    for (o, op) in &cfg.operators {
        if plain(&op.password) {
            keys.push(format!("operators.{o}.password"));
        }
    }
    if let Some(admin) = &cfg.admin {
        for (u, auth) in &admin.users {
            if auth.password.as_ref().is_some_and(plain) {
                keys.push(format!("admin.users.{u}"));
            }
        }
        if admin.token.as_ref().is_some_and(|t| t.is_inline()) {
            keys.push("admin.token".into());
        }
    }
    keys
}

/// A warning when the file at `path` may be read by any local user and
/// `cfg` holds secrets in clear; None otherwise (or when its mode cannot
/// be read: the load itself would have failed).
pub fn exposure_warning(path: &Path, cfg: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o004 == 0 {
        return None;
    }
    let keys = plaintext_secrets(cfg);
    if keys.is_empty() {
        return None;
    }
    let shown = keys.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = if keys.len() > 5 {
        format!(" and {} more", keys.len() - 5)
    } else {
        String::new()
    };
    Some(format!(
        "{} is readable by every local user (mode {:o}) and holds secrets in clear: {shown}{more}; \
         run `chmod 600 {}` (or 640 for a group the proxy runs in), and replace client passwords \
         with verifiers from `pgtenant hash-password`",
        path.display(),
        mode & 0o777,
        path.display()
    ))
}

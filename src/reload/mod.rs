//! Live reload: re-reads the config file the proxy was started with and
//! puts the new configuration in effect without dropping what need not be
//! dropped. Called on SIGHUP (`main.rs`), by the admin console's RELOAD
//! and by HTTP `POST /reload`, all through [`reload`].
//!
//! The rules (README, "Live reload"):
//! - The new file is parsed, validated and built whole first, off the
//!   async threads (SCRAM verifiers take seconds for many tenants); any
//!   error rejects it whole and nothing changes.
//! - A placement whose connection settings (URL, credentials, isolation,
//!   role policy, context) are unchanged keeps its pool and every
//!   connection in it; its `pool_size` and its tenants' caps change live
//!   ([`crate::pool::PlacementPool::resize`], `set_tenants`). A changed
//!   placement gets a new pool; the old one is retired (idle connections
//!   closed now, busy ones when released) and goes with its last user.
//! - Sessions follow between transactions (`session/follow.rs`).
//! - Keys that cannot change live keep their running values, with a
//!   warning ([`diff::keep_restart_only`]).
//!
//! Reloads are serialized by `ProxyState::reload_lock`, held only by the
//! reloading thread.

mod diff;

pub use diff::ReloadSummary;

use crate::config::ConfigError;
use crate::state::{PoolUpdate, ProxyState, Snapshot};
use std::sync::Arc;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the proxy was not started from a config file; nothing to reload")]
    NoConfigFile,
    /// The new config is invalid: where and why, as `pgtenant check`
    /// says it.
    #[error("the new configuration was rejected, the running one stays: {0}")]
    Config(#[from] ConfigError),
    #[error("reload failed, the running configuration stays: {0}")]
    Internal(String),
}

/// Re-reads the config file and puts it in effect; the summary says what
/// changed. Logs the outcome either way. Safe to call from any thread or
/// runtime: the work runs on a thread of its own.
pub async fn reload(state: &Arc<ProxyState>) -> Result<ReloadSummary, ReloadError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let worker = Arc::clone(state);
    std::thread::Builder::new()
        .name("pgtenant-reload".into())
        .spawn(move || {
            let _ = tx.send(reload_now(&worker));
        })
        .map_err(|e| ReloadError::Internal(format!("cannot start the reload thread: {e}")))?;
    let result = rx
        .await
        .unwrap_or_else(|_| Err(ReloadError::Internal("the reload thread panicked".into())));
    match &result {
        Ok(summary) => tracing::info!("{summary}"),
        Err(e) => tracing::error!("{e}"),
    }
    state.metrics.reload_done(result.is_ok());
    result
}

/// The reload itself, on the calling thread (blocking).
fn reload_now(state: &ProxyState) -> Result<ReloadSummary, ReloadError> {
    let _one_at_a_time = state.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
    let path = state
        .config_path
        .as_ref()
        .ok_or(ReloadError::NoConfigFile)?;
    let (mut config, src) = crate::config::load_file(path)?;
    let old = state.snapshot();
    let kept = diff::keep_restart_only(&mut config, &old.config);
    for k in &kept {
        tracing::warn!("reload: {k}");
    }
    let (new, updates) = Snapshot::rebuild(config, &src, state.workers, &old)?;
    drop(src);
    let mut summary = diff::summarize(&old, &new);
    summary.kept_restart_values = kept;
    // Accepted: from here on nothing fails. Kept pools first, so that the
    // new snapshot's tenants have their seats when it is swapped in.
    for update in &updates {
        apply(update, &mut summary);
    }
    let old = state.swap_snapshot(new);
    // `suspended = true` now: its open sessions close after their
    // transaction, as after the console's SUSPEND.
    let now = state.snapshot();
    for t in now.catalog.iter().filter(|t| t.suspended) {
        if !old.catalog.get(t.id.as_str()).is_some_and(|o| o.suspended) {
            state.suspend_sessions(&t.id);
        }
    }
    let current = now.pools();
    for pool in old.pools() {
        if !current.iter().any(|p| Arc::ptr_eq(p, &pool)) {
            pool.retire();
        }
    }
    Ok(summary)
}

/// A kept pool's new size and tenants.
fn apply(update: &PoolUpdate, summary: &mut ReloadSummary) {
    let before = update.pool.counts().max;
    let after = update.size.max(1);
    if before != after {
        update.pool.resize(after);
        summary
            .pools_resized
            .push((update.pool.name().to_string(), before, after));
    }
    // The operators' pool's seats are a handful; a tenants' pool's may be
    // many, and are written only when its tenants changed.
    let touched = match &update.placement {
        None => true,
        Some(name) => summary.touches(name),
    };
    if touched {
        update.pool.set_tenants(&update.tenants);
    }
}

//! Per-tenant control state set from the admin console: paused tenants
//! (and a pause of every tenant), suspended tenants, and what SHOW
//! CLIENTS lists about each client session.
//!
//! Cost on the data plane: a session checks [`Controls::any_paused`] (one
//! atomic load) before each lease, and looks at the table only when some
//! pause is in effect; a login checks [`Controls::any_suspended`] (one
//! atomic load) the same way. The table's lock is never held across an
//! await. SUSPEND and KILL reach running sessions through their stop
//! subscription (`shutdown.rs`), whose check is the one load sessions
//! already pay for shutdown.

use crate::routing::TenantId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// One client session as SHOW CLIENTS lists it; made once at login.
#[derive(Debug)]
pub struct ClientInfo {
    /// Unique for the proxy's life.
    pub id: u64,
    pub tenant: TenantId,
    pub user: String,
    pub peer: SocketAddr,
    pub connect_time: SystemTime,
    pub application_name: Option<String>,
    /// An admin console session (never reached by SUSPEND or KILL).
    pub console: bool,
    /// Its encryption, for SHOW CLIENTS' `tls`: the TLS version and
    /// cipher suite, or [`RELAYED_TLS`]; None in plaintext.
    pub tls: Option<Box<str>>,
    /// Since when it waits for its tenant's pause to end: microseconds
    /// after [`epoch`], plus one; 0 while it does not (set on the pause's
    /// slow path only). One word, so an idle client pays no lock for it.
    paused_since: AtomicU64,
}

/// SHOW CLIENTS' `tls` for a client whose TLS a load balancer ended (its
/// PROXY header said so): pgtenant saw only the decrypted stream.
pub const RELAYED_TLS: &str = "ended by the load balancer";

/// A new connection id, unique for the proxy's life: the `conn` field of
/// a connection's log lines and the `id` column of SHOW CLIENTS.
pub fn next_client_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl ClientInfo {
    pub fn new(
        id: u64,
        tenant: TenantId,
        user: String,
        peer: SocketAddr,
        application_name: Option<String>,
        console: bool,
    ) -> ClientInfo {
        ClientInfo {
            id,
            tenant,
            user,
            peer,
            connect_time: SystemTime::now(),
            application_name,
            console,
            tls: None,
            paused_since: AtomicU64::new(0),
        }
    }

    /// The same, encrypted as `tls` says (None: plaintext).
    pub fn with_tls(self, tls: Option<String>) -> ClientInfo {
        ClientInfo {
            tls: tls.map(String::into_boxed_str),
            ..self
        }
    }

    /// It started waiting for its tenant's pause to end at `at` (a reading
    /// of `runtime::time::now()`).
    pub fn pause_began(&self, at: Instant) {
        let us = at.saturating_duration_since(epoch()).as_micros();
        let us = u64::try_from(us).unwrap_or(u64::MAX - 1);
        self.paused_since.store(us + 1, Ordering::Relaxed);
    }

    /// Its wait for a pause to end is over.
    pub fn pause_ended(&self) {
        self.paused_since.store(0, Ordering::Relaxed);
    }

    /// Since when it waits for its tenant's pause to end, if it does.
    pub fn paused_since(&self) -> Option<Instant> {
        match self.paused_since.load(Ordering::Relaxed) {
            0 => None,
            n => Some(epoch() + Duration::from_micros(n - 1)),
        }
    }
}

/// The instant pause times count from: the first time one is asked for.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(crate::runtime::time::now)
}

/// What the console set on one tenant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TenantControl {
    paused: bool,
    suspended: bool,
}

/// The control state every connection shares (in `ProxyState`).
#[derive(Default)]
pub struct Controls {
    /// Pauses in effect: tenants paused one by one, plus one while every
    /// tenant is paused. 0: no lease looks further.
    pauses: AtomicUsize,
    /// Tenants suspended from the console. 0: no login looks further.
    suspensions: AtomicUsize,
    all_paused: AtomicBool,
    tenants: Mutex<HashMap<TenantId, TenantControl>>,
    /// Woken by every RESUME: paused sessions look again.
    resumed: Notify,
    /// KILLs so far. A login reads it once its tenant is known and looks
    /// again once its session is subscribed (`killed_since`): a KILL in
    /// between signalled the subscribed sessions without it.
    kills: AtomicU64,
    /// Each killed tenant's latest KILL, by that count (KILL names a
    /// catalog tenant, so this holds at most one entry per tenant).
    killed: Mutex<HashMap<TenantId, u64>>,
}

/// A tenant's state as SHOW TENANTS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantState {
    Active,
    Paused,
    Suspended,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Paused => "paused",
            TenantState::Suspended => "suspended",
        }
    }
}

impl Controls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, TenantControl>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Some pause is in effect (the lease's one load).
    #[inline]
    pub fn any_paused(&self) -> bool {
        self.pauses.load(Ordering::Acquire) != 0
    }

    /// Some tenant is suspended from the console (the login's one load).
    #[inline]
    pub fn any_suspended(&self) -> bool {
        self.suspensions.load(Ordering::Acquire) != 0
    }

    /// `tenant`'s new transactions must wait.
    pub fn is_paused(&self, tenant: &TenantId) -> bool {
        if !self.any_paused() {
            return false;
        }
        self.all_paused.load(Ordering::Acquire) || self.lock().get(tenant).is_some_and(|c| c.paused)
    }

    /// `tenant` was suspended from the console.
    pub fn is_suspended(&self, tenant: &TenantId) -> bool {
        self.any_suspended() && self.lock().get(tenant).is_some_and(|c| c.suspended)
    }

    /// What SHOW TENANTS says; `config_suspended` is the tenant's
    /// `suspended` key.
    pub fn state(&self, tenant: &TenantId, config_suspended: bool) -> TenantState {
        if config_suspended || self.is_suspended(tenant) {
            TenantState::Suspended
        } else if self.is_paused(tenant) {
            TenantState::Paused
        } else {
            TenantState::Active
        }
    }

    /// Whether every tenant is paused.
    pub fn all_paused(&self) -> bool {
        self.all_paused.load(Ordering::Acquire)
    }

    /// Pauses `tenant` (or every tenant); false if it already was.
    pub fn pause(&self, tenant: Option<&TenantId>) -> bool {
        match tenant {
            None => {
                let first = !self.all_paused.swap(true, Ordering::AcqRel);
                if first {
                    self.pauses.fetch_add(1, Ordering::AcqRel);
                }
                first
            }
            Some(t) => {
                let mut map = self.lock();
                let c = map.entry(t.clone()).or_default();
                if c.paused {
                    return false;
                }
                c.paused = true;
                self.pauses.fetch_add(1, Ordering::AcqRel);
                true
            }
        }
    }

    /// Lifts the pause of `tenant` (or of every tenant: the pause of all
    /// and each tenant's own). What was lifted.
    pub fn resume(&self, tenant: Option<&TenantId>) -> Resumed {
        let mut lifted = Resumed::default();
        {
            let mut map = self.lock();
            match tenant {
                None => {
                    if self.all_paused.swap(false, Ordering::AcqRel) {
                        self.pauses.fetch_sub(1, Ordering::AcqRel);
                        lifted.paused = true;
                    }
                    for c in map.values_mut() {
                        if std::mem::take(&mut c.paused) {
                            self.pauses.fetch_sub(1, Ordering::AcqRel);
                            lifted.paused = true;
                        }
                    }
                }
                Some(t) => {
                    if let Some(c) = map.get_mut(t) {
                        if std::mem::take(&mut c.paused) {
                            self.pauses.fetch_sub(1, Ordering::AcqRel);
                            lifted.paused = true;
                        }
                        if std::mem::take(&mut c.suspended) {
                            self.suspensions.fetch_sub(1, Ordering::AcqRel);
                            lifted.suspended = true;
                        }
                    }
                }
            }
            map.retain(|_, c| *c != TenantControl::default());
        }
        self.resumed.notify_waiters();
        lifted
    }

    /// Suspends `tenant`; false if it already was.
    pub fn suspend(&self, tenant: &TenantId) -> bool {
        let mut map = self.lock();
        let c = map.entry(tenant.clone()).or_default();
        if c.suspended {
            return false;
        }
        c.suspended = true;
        self.suspensions.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// How many KILLs have begun: a login reads it once it knows its
    /// tenant, for [`Controls::killed_since`].
    pub fn kill_count(&self) -> u64 {
        self.kills.load(Ordering::SeqCst)
    }

    /// A KILL of `tenant` begins. Counted before its sessions are
    /// signalled, so that a login subscribing too late to be signalled
    /// still finds it.
    pub fn count_kill(&self, tenant: &TenantId) {
        let mut killed = self.killed.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.kills.fetch_add(1, Ordering::SeqCst) + 1;
        killed.insert(tenant.clone(), n);
    }

    /// Whether a KILL of `tenant` began after the login that read `seen`
    /// from [`Controls::kill_count`] knew its tenant (one load unless
    /// some KILL ran since).
    pub fn killed_since(&self, tenant: &TenantId, seen: u64) -> bool {
        if self.kills.load(Ordering::SeqCst) == seen {
            return false;
        }
        let killed = self.killed.lock().unwrap_or_else(|p| p.into_inner());
        killed.get(tenant).is_some_and(|&n| n > seen)
    }

    /// Waits (at most until `deadline`) while `tenant` is paused; false
    /// if the deadline came first. The caller races it against its stop.
    pub async fn wait_resumed(&self, tenant: &TenantId, deadline: std::time::Instant) -> bool {
        loop {
            let notified = self.resumed.notified();
            let mut notified = std::pin::pin!(notified);
            // Enabled before the check: a RESUME after it wakes us.
            notified.as_mut().enable();
            if !self.is_paused(tenant) {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = crate::runtime::time::sleep_until(deadline) => return !self.is_paused(tenant),
            }
        }
    }
}

/// What a RESUME lifted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    pub paused: bool,
    pub suspended: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_count_what_is_in_effect() {
        let c = Controls::default();
        let a = TenantId::new("a");
        let b = TenantId::new("b");
        assert!(!c.any_paused());
        assert!(c.pause(Some(&a)));
        assert!(!c.pause(Some(&a)));
        assert!(c.is_paused(&a) && !c.is_paused(&b));
        assert!(c.pause(None));
        assert!(c.is_paused(&b));
        assert!(c.resume(Some(&a)).paused);
        assert!(c.is_paused(&a), "the pause of every tenant still holds");
        assert!(c.resume(None).paused);
        assert!(!c.any_paused() && !c.is_paused(&a));
        assert!(c.suspend(&a) && !c.suspend(&a));
        assert_eq!(c.state(&a, false), TenantState::Suspended);
        assert_eq!(c.state(&b, true), TenantState::Suspended);
        assert_eq!(c.state(&b, false), TenantState::Active);
        assert!(c.resume(Some(&a)).suspended);
        assert!(!c.any_suspended());
        assert!(c.lock().is_empty());
    }

    /// A login sees a KILL of its tenant that began after it read the
    /// count, not one before, nor another tenant's.
    #[test]
    fn a_login_sees_only_kills_of_its_tenant_since_it_looked() {
        let c = Controls::default();
        let (a, b) = (TenantId::new("a"), TenantId::new("b"));
        c.count_kill(&a);
        let seen = c.kill_count();
        assert!(!c.killed_since(&a, seen), "a KILL before the login began");
        c.count_kill(&b);
        assert!(!c.killed_since(&a, seen), "another tenant's KILL");
        assert!(c.killed_since(&b, seen));
        c.count_kill(&a);
        assert!(c.killed_since(&a, seen));
        assert!(!c.killed_since(&a, c.kill_count()));
    }

    /// `pause_timeout` on a paused clock: the wait ends at its deadline
    /// to the millisecond, or at once when RESUME comes first.
    #[tokio::test(start_paused = true)]
    async fn a_paused_wait_ends_at_its_deadline_or_at_resume() {
        use std::time::Duration;
        use tokio::time::Instant;
        let c = std::sync::Arc::new(Controls::default());
        let a = TenantId::new("a");
        c.pause(Some(&a));
        let limit = Duration::from_secs(300);
        let start = Instant::now();
        assert!(
            !c.wait_resumed(&a, crate::runtime::time::now() + limit)
                .await
        );
        let took = start.elapsed();
        assert!(
            took >= limit && took < limit + Duration::from_millis(10),
            "{took:?}"
        );
        assert!(c.is_paused(&a), "the pause outlives the wait");

        let resumer = {
            let (c, a) = (std::sync::Arc::clone(&c), a.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(7)).await;
                c.resume(Some(&a))
            })
        };
        let start = Instant::now();
        assert!(
            c.wait_resumed(&a, crate::runtime::time::now() + limit)
                .await
        );
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        assert!(resumer.await.expect("join").paused);
        // Not paused: no wait at all.
        let start = Instant::now();
        assert!(c.wait_resumed(&a, crate::runtime::time::now()).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}

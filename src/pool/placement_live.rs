//! A pool changed by a live reload (`crate::reload`): its size, its
//! tenants and their caps, or its retirement when the placement's
//! connection settings changed. None of these interrupts a running
//! transaction: what is leased stays leased, and the pool settles as
//! leases come back.

use super::super::context::TenantContext;
use super::super::queue::{pop_any, serve_waiters};
use super::super::role_check::RolePolicy;
use super::{PlacementPool, PoolTenant};
use crate::config::BackendTarget;
use crate::runtime::current_worker;

impl PlacementPool {
    /// Whether a pool made from these settings would open the same
    /// connections as this one, checked no less strictly (then a reload
    /// keeps this pool).
    pub fn same_settings(
        &self,
        target: &BackendTarget,
        roles: &RolePolicy,
        context: Option<&TenantContext>,
    ) -> bool {
        self.target == *target
            && checked_as_strictly(&self.roles, roles)
            && self.context.as_ref() == context
    }

    /// Changes the size live: growth serves waiters at once; shrinking
    /// closes idle connections now and others as they come back.
    pub fn resize(&self, max: usize) {
        let mut doomed = Vec::new();
        {
            let mut s = self.lock();
            s.max = max.max(1);
            while s.total > s.max && s.idle_count > 0 {
                if let Some(c) = pop_any(&mut s, current_worker()) {
                    doomed.push(c);
                    s.total -= 1;
                }
            }
            serve_waiters(&mut s);
        }
        doomed.into_iter().for_each(|c| c.close());
    }

    /// The pool's tenants and caps become `tenants`: a tenant already
    /// seated keeps its seat with the new cap, a new one gets a seat, and
    /// one not listed loses its name (no new login finds it). A lost
    /// seat's entry stays in the fair-share table, so connections its
    /// clients still hold come back to it; the entry (a few dozen bytes)
    /// goes when the pool does.
    pub fn set_tenants(&self, tenants: &[PoolTenant]) {
        let mut seats = self.seats.write().unwrap_or_else(|p| p.into_inner());
        let mut s = self.lock();
        let listed: std::collections::HashSet<&str> =
            tenants.iter().map(|t| t.name.as_str()).collect();
        seats.retain(|name, _| listed.contains(&**name));
        for t in tenants {
            match seats.get(t.name.as_str()) {
                Some(seat) => s.tenants.set_cap(*seat, t.max_server_connections),
                None => {
                    let seat = s.tenants.add(t.max_server_connections);
                    seats.insert(t.name.clone().into_boxed_str(), seat);
                }
            }
        }
        serve_waiters(&mut s);
    }

    /// A reload replaced this pool: its idle connections are closed now,
    /// leased ones when they come back (unless a client that was already
    /// waiting here takes one), and the pool goes with its last user.
    pub fn retire(&self) {
        let doomed: Vec<_> = {
            let mut s = self.lock();
            s.retired = true;
            let doomed: Vec<_> = s.idle.iter_mut().flat_map(|l| l.drain(..)).collect();
            s.idle_count = 0;
            s.total -= doomed.len();
            doomed
        };
        if !doomed.is_empty() {
            tracing::info!(placement = %self.name, closed = doomed.len(), "old pool retired by a reload");
        }
        doomed.into_iter().for_each(|c| c.close());
    }

    pub fn is_retired(&self) -> bool {
        self.lock().retired
    }
}

/// Whether connections vetted under `was` are as good as vetted under
/// `now`. The lists of other placements' roles change whenever a
/// placement comes or goes: one that went only loosens the check; one
/// that came must be checked against (fail closed: the pool is rebuilt,
/// so its connections are vetted again), unless the role is trusted.
fn checked_as_strictly(was: &RolePolicy, now: &RolePolicy) -> bool {
    let same_kind =
        was.trusted == now.trusted && was.operator == now.operator && was.rls == now.rls;
    if !same_kind {
        return false;
    }
    if now.trusted && !now.operator {
        return true; // no check either way
    }
    let covered =
        |old: &[(String, String)], new: &[(String, String)]| new.iter().all(|r| old.contains(r));
    covered(&was.other_placements, &now.other_placements)
        && covered(&was.operator_roles, &now.operator_roles)
}

//! What a new connection of a pool goes through before anyone uses it:
//! the backend role checks (`role_check`, `rls_check`, `operator_check`,
//! until one connection passes) and, on an rls placement, the tenant
//! context's setup (`context`). A connection that fails either is closed
//! and the connect fails, so the pool backs off and logs why.

use super::super::context::{self, TenantContext};
use super::super::server_conn::{ServerConn, ServerError};
use super::super::{operator_check, rls_check, role_check};
use super::PlacementPool;
use std::sync::atomic::Ordering;

impl PlacementPool {
    /// Until the placement's role has passed its check, runs it on each
    /// new connection before anyone uses it; a refused role closes the
    /// connection and fails the connect (so the pool backs off and logs
    /// why once per attempt).
    pub(super) async fn vet_role(&self, mut conn: ServerConn) -> Result<ServerConn, ServerError> {
        if self.role_vetted.load(Ordering::Acquire) {
            return Ok(conn);
        }
        let checked =
            crate::runtime::time::timeout(self.timeouts.connect, self.check_role(&mut conn)).await;
        let (conn, warnings) = keep_if_passed(conn, checked)?;
        for w in warnings {
            tracing::warn!(placement = %self.name, "backend role {:?}: {w}", self.target.user);
        }
        self.role_vetted.store(true, Ordering::Release);
        Ok(conn)
    }

    /// The tenant context each lease of this placement starts with
    /// (`isolation = "rls"`).
    pub fn context(&self) -> Option<&TenantContext> {
        self.context.as_ref()
    }

    /// `isolation = "rls"`: finds the context functions on a new
    /// connection and gives its session a secret, and until the self-test
    /// has passed once, runs it first. Failing
    /// either closes the connection and fails the connect (so the pool
    /// backs off and logs what to install).
    pub(super) async fn prepare_context(
        &self,
        mut conn: ServerConn,
    ) -> Result<ServerConn, ServerError> {
        let Some(ctx) = &self.context else {
            return Ok(conn);
        };
        let prepared = crate::runtime::time::timeout(self.timeouts.connect, async {
            let functions = context::resolve(&mut conn).await?;
            context::check_store(&mut conn, ctx).await?;
            let secret = context::open(&mut conn, ctx, functions).await?;
            if !self.context_vetted.load(Ordering::Acquire) {
                context::self_test(&mut conn, ctx, functions, secret).await?;
                self.context_vetted.store(true, Ordering::Release);
            }
            Ok::<_, ServerError>((functions, secret))
        })
        .await;
        let (mut conn, (functions, secret)) = keep_if_passed(conn, prepared)?;
        conn.context_functions = Some(functions);
        conn.context_secret = Some(secret);
        Ok(conn)
    }

    /// The role check, then on an rls placement the row-level security
    /// check; the latter's warnings (what only a superuser can close).
    async fn check_role(&self, conn: &mut ServerConn) -> Result<Vec<String>, ServerError> {
        if self.roles.operator {
            return operator_check::check(conn, &self.target.user).await;
        }
        role_check::check(conn, &self.target.user, &self.roles).await?;
        match &self.roles.rls {
            Some(rls) => rls_check::check(conn, &self.target.user, rls).await,
            None => Ok(Vec::new()),
        }
    }
}

/// `conn` and what its check found if the check passed within its time;
/// otherwise the connection is closed (it may be half-checked) and the
/// check's error, or a timeout, is returned.
fn keep_if_passed<T, E>(
    conn: ServerConn,
    outcome: Result<Result<T, ServerError>, E>,
) -> Result<(ServerConn, T), ServerError> {
    match outcome {
        Ok(Ok(found)) => Ok((conn, found)),
        Ok(Err(e)) => {
            conn.close();
            Err(e)
        }
        Err(_) => {
            conn.close();
            Err(ServerError::Timeout)
        }
    }
}

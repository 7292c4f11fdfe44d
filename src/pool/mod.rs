//! Server connections: opening and authenticating them (`server_conn`),
//! checking that a placement's backend role stays in its own database
//! (`role_check`) and, on an rls placement, cannot reach around
//! row-level security (`rls_check`), that the operators' role of an rls
//! placement cannot either (`operator_check`), driving the tenant context of rls
//! placements (`context`), pooling them per placement (`placement`, with `lease`
//! for a connection handed to a session, `timing` for the time limits and
//! backoff, `stats` for what a pool reports, `startup_params` for the server
//! parameters logins show, `fair` for each tenant's share of a pool and
//! the round robin among waiting tenants, `queue` for the pool's locked
//! state), the pools' upkeep (`janitor`), and what the session keeps with
//! a connection or a placement, opaque here (`carried`). Never names
//! clients or sessions (`tests/module_walls.rs`).

mod carried;
mod context;
mod fair;
pub mod janitor;
mod lease;
mod operator_check;
mod placement;
mod queue;
pub mod rls_check;
mod role_check;
mod server_conn;
pub mod servers;
#[cfg(test)]
pub(crate) mod stand_in;
mod startup_params;
mod stats;
mod timing;

pub use carried::{Carried, SharedCarried};
pub use context::{
    ContextFunctions, GUARD_ENDS, SessionSecret, TenantContext, new_secret, write_guard,
};
pub use fair::{TenantCounts, TenantSeat};
pub use lease::Lease;
pub use placement::{CheckoutError, PlacementName, PlacementPool, PoolTenant};
pub use role_check::RolePolicy;
pub use server_conn::{ServerConn, ServerError};
pub use startup_params::StartupParams;
pub use stats::{PoolCounts, PoolStats};
pub use timing::{CONNECT_CONCURRENCY, PoolTimeouts, RETRY_BASE, jittered_lifetime, retry_delay};

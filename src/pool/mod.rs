//! Server connections: opening and authenticating them (`server_conn`),
//! pooling them per placement (`placement`), and the pools' upkeep
//! (`janitor`). Never names clients.

pub mod janitor;
mod placement;
mod server_conn;

pub use placement::{
    CONNECT_CONCURRENCY, CheckoutError, Lease, PlacementName, PlacementPool, PoolCounts, PoolStats,
    PoolTimeouts, RETRY_BASE, StartupParams, jittered_lifetime, retry_delay,
};
pub use server_conn::{BackendTarget, ServerConn, ServerError};

//! Server connections: opening and authenticating them (`server_conn`)
//! and pooling them per placement (`placement`). Never names clients.

mod placement;
mod server_conn;

pub use placement::{
    CheckoutError, Lease, PlacementName, PlacementPool, PoolCounts, StartupParams,
};
pub use server_conn::{BackendTarget, ServerConn, ServerError};

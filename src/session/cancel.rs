//! Query cancellation. Each client gets a proxy-issued, random
//! BackendKeyData; the backend's real key never leaves the proxy. A
//! CancelRequest with a client's key is forwarded only while that client
//! holds a server connection with work outstanding, and only to that
//! connection, so a late or forged cancel cannot hit anyone else.

use crate::pool::{BackendTarget, PlacementPool};
use crate::protocol::CancelKey;
use bytes::BytesMut;
use dashmap::DashMap;
use rand::RngExt;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// Where a cancel for a client goes right now.
#[derive(Clone)]
struct Target {
    pool: Arc<PlacementPool>,
    server_key: CancelKey,
}

/// A client's cancel slot: set while it holds a server connection.
#[derive(Default)]
pub struct CancelSlot {
    target: Mutex<Option<Target>>,
}

impl CancelSlot {
    /// The client now runs work on this server connection.
    pub fn arm(&self, pool: &Arc<PlacementPool>, server_key: CancelKey) {
        *self.lock() = Some(Target {
            pool: Arc::clone(pool),
            server_key,
        });
    }

    /// The client no longer holds a server connection.
    pub fn disarm(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Target>> {
        self.target.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All live clients' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    slots: DashMap<CancelKey, Arc<CancelSlot>>,
}

/// Removes a client's key when its session ends.
pub struct Registration<'a> {
    registry: &'a CancelRegistry,
    pub key: CancelKey,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.slots.remove(&self.key);
    }
}

impl CancelRegistry {
    /// Issues a fresh random key for a client.
    pub fn register(&self) -> Registration<'_> {
        let slot = Arc::new(CancelSlot::default());
        let mut rng = rand::rng();
        loop {
            // Positive pids look like real ones to drivers that print them.
            let key = CancelKey {
                pid: rng.random_range(1..i32::MAX),
                secret: rng.random(),
            };
            if let dashmap::Entry::Vacant(v) = self.slots.entry(key) {
                v.insert(Arc::clone(&slot));
                return Registration {
                    registry: self,
                    key,
                    slot,
                };
            }
        }
    }

    /// Forwards a cancel if `key` belongs to a client that is running
    /// something; otherwise does nothing (as PostgreSQL does for unknown
    /// keys, the requester learns nothing either way).
    pub async fn cancel(&self, key: CancelKey) {
        let target = {
            let Some(slot) = self.slots.get(&key).map(|s| Arc::clone(s.value())) else {
                tracing::debug!("cancel request with an unknown key");
                return;
            };
            slot.lock().clone()
        };
        let Some(t) = target else {
            tracing::debug!("cancel request for a client with nothing running");
            return;
        };
        send_cancel(t.pool.target(), t.server_key).await;
    }
}

/// Sends a CancelRequest for `key` to the server behind `target` on a new
/// connection (protocol docs, "Canceling Requests in Progress").
pub async fn send_cancel(target: &BackendTarget, key: CancelKey) {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut out);
    let send = async {
        let mut s = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
        s.write_all(&out).await?;
        s.shutdown().await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), send).await {
        Ok(Ok(())) => tracing::debug!("cancel forwarded"),
        Ok(Err(e)) => tracing::warn!("cancel not delivered: {e}"),
        Err(_) => tracing::warn!("cancel timed out"),
    }
}

//! Query cancellation. Each client gets a proxy-issued, random
//! BackendKeyData; the backend's real key never leaves the proxy. A
//! CancelRequest with a client's key is forwarded only while that client
//! holds a server connection with work outstanding, and only to that
//! connection, so a late or forged cancel cannot hit anyone else. While
//! the client's request still waits for a server connection, the cancel
//! ends that wait instead: the request is answered as canceled and never
//! reaches a server (PgBouncer leaves such a client waiting).

use crate::config::BackendTarget;
use crate::pool::PlacementPool;
use crate::protocol::CancelKey;
use bytes::BytesMut;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use rand::RngExt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::io::AsyncWriteExt;

/// A client's cancel slot: armed with its server connection's key while
/// it holds one. Arming and disarming happen on every lease, so they are
/// one atomic store each; the placement is set once per session.
#[derive(Default)]
pub struct CancelSlot {
    pool: Mutex<Option<Arc<PlacementPool>>>,
    /// The backend key, packed (pid in the high half); 0: nothing runs.
    /// Backend pids are never 0, so an armed key is never 0.
    key: AtomicU64,
    /// Cancels being forwarded for this client right now. The session
    /// does not hand its server connection to anyone else until this is
    /// 0, so a cancel that PostgreSQL applies late (after the query ended)
    /// can only meet an idle backend, which ignores it.
    inflight: AtomicU32,
    /// A cancel for this client was given up on (its delivery timed out
    /// or failed): PostgreSQL may still act on it later, so the server
    /// connection must not go to anyone else.
    lost: AtomicBool,
    done: tokio::sync::Notify,
    /// Whether the client's request waits for a server connection, and
    /// whether a cancel came for it: `NOT_WAITING`, `WAITING`, `CANCELED`.
    /// One state, so a cancel can only mark a wait that is still on.
    wait: AtomicU8,
    /// The waiting session's waker: registered before `wait` is read, so
    /// a cancel after the read wakes it. (A `Notify` would queue a waiter
    /// node under its mutex at every wait, and take it out again.)
    wake: AtomicWaker,
}

const NOT_WAITING: u8 = 0;
const WAITING: u8 = 1;
const CANCELED: u8 = 2;

impl CancelSlot {
    /// Where this client's server connections come from.
    pub fn set_pool(&self, pool: &Arc<PlacementPool>) {
        *self.pool.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(pool));
    }

    /// The client now runs work on the server connection with this key.
    pub fn arm(&self, server_key: CancelKey) {
        let packed = (u64::from(server_key.pid as u32) << 32) | u64::from(server_key.secret as u32);
        self.key.store(packed, Ordering::SeqCst);
    }

    /// The client no longer holds a server connection.
    pub fn disarm(&self) {
        self.key.store(0, Ordering::SeqCst);
    }

    /// The client's request starts waiting for a server connection: a
    /// cancel from now on ends the wait (`wait_canceled`).
    pub fn begin_wait(&self) {
        self.wait.store(WAITING, Ordering::SeqCst);
    }

    /// The wait is over: a cancel from now on finds nothing waiting.
    pub fn end_wait(&self) {
        self.wait.store(NOT_WAITING, Ordering::SeqCst);
    }

    /// Ready once a cancel came for the waiting request.
    pub async fn wait_canceled(&self) {
        std::future::poll_fn(|cx| {
            self.wake.register(cx.waker());
            if self.wait.load(Ordering::SeqCst) == CANCELED {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// A cancel for this client: ends its wait for a server connection,
    /// if it is waiting for one (true).
    fn cancel_wait(&self) -> bool {
        let marked = self
            .wait
            .compare_exchange(WAITING, CANCELED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if marked {
            self.wake.wake();
        }
        marked
    }

    /// Waits (bounded) until no cancel for this client is being forwarded.
    /// Call after `disarm`, before the server connection is released.
    /// The common case, nothing in flight, is two atomic loads and no
    /// future (`None`: the connection may be released). The future's
    /// answer is whether it may: not after a cancel that was given up on,
    /// or one still in flight when the wait ended, since PostgreSQL may
    /// apply it to whoever holds the connection next.
    pub fn settle(&self) -> Option<impl Future<Output = bool> + '_> {
        if self.inflight.load(Ordering::SeqCst) == 0 && !self.lost.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.wait_settled())
    }

    async fn wait_settled(&self) -> bool {
        let wait = async {
            while self.inflight.load(Ordering::SeqCst) > 0 {
                let notified = self.done.notified();
                if self.inflight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let settled = crate::runtime::time::timeout(CANCEL_TIMEOUT, wait)
            .await
            .is_ok();
        let lost = self.lost.swap(false, Ordering::SeqCst);
        settled && !lost
    }

    fn target(&self) -> Option<(Arc<PlacementPool>, CancelKey)> {
        let packed = self.key.load(Ordering::SeqCst);
        if packed == 0 {
            return None;
        }
        let key = CancelKey {
            pid: (packed >> 32) as u32 as i32,
            secret: packed as u32 as i32,
        };
        let pool = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some((pool, key))
    }
}

/// All live clients' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    /// Keys the proxy drew at random; a client can only look them up, so
    /// a fast hasher is safe (see `catalog::FastHash`).
    slots: DashMap<CancelKey, Arc<CancelSlot>, crate::catalog::FastHash>,
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
        let Some(slot) = self.slots.get(&key).map(|s| Arc::clone(s.value())) else {
            tracing::debug!("cancel request with an unknown key");
            return;
        };
        // Counted before the key is read: a session that disarms after
        // this sees the cancel in flight and waits for it in `settle`.
        slot.inflight.fetch_add(1, Ordering::SeqCst);
        if let Some((pool, server_key)) = slot.target() {
            if !send_cancel(pool.target(), server_key).await {
                slot.lost.store(true, Ordering::SeqCst);
            }
        } else if slot.cancel_wait() {
            tracing::debug!("cancel request for a client waiting for a server connection");
        } else {
            tracing::debug!("cancel request for a client with nothing running");
        }
        slot.inflight.fetch_sub(1, Ordering::SeqCst);
        slot.done.notify_waiters();
    }
}

/// How long forwarding one cancel may take.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends a CancelRequest for `key` to the server behind `target` on a new
/// connection (protocol docs, "Canceling Requests in Progress"), and, as
/// libpq does, waits for the server to close that connection: then the
/// server has processed the request and signalled the backend. False if
/// that was not seen: the cancel may still reach the backend later.
pub async fn send_cancel(target: &BackendTarget, key: CancelKey) -> bool {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut out);
    let send = async {
        let mut s = crate::runtime::net::Socket::connect(&target.host, target.port).await?;
        s.write_all(&out).await?;
        let mut sink = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut s, &mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    match crate::runtime::time::timeout(CANCEL_TIMEOUT, send).await {
        Ok(Ok(())) => {
            tracing::debug!("cancel forwarded");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!("cancel not delivered: {e}");
            false
        }
        Err(_) => {
            tracing::warn!("cancel timed out");
            false
        }
    }
}

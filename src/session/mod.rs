//! One authenticated client's life: wait for a request, lease a server
//! connection, bring its settings in line with the client's, pump bytes
//! until the transaction (transaction mode) or the client (session mode)
//! ends, then give the connection back clean or close it.
//!
//! Modules: `transaction` (one request's lease, checkout to release),
//! `pump` (the forwarding hot path, over `runtime::stream`), `txn` (what the pump tracks while frames go by), `lease`
//! (checkout and settings sync) with `params` (settings that follow the
//! client), `pinning` (session state that ties a client to a connection),
//! `recover` (making a connection clean), `context` (the tenant context
//! a lease of an rls placement starts with), `cancel` (proxy-issued cancel
//! keys), `idle` (the client between requests), `probe` (the
//! session-state check), `boundary` (what the server owes), `control`
//! (the proxy's own queries), `statements`/`prepared`/`replies`/`known`
//! (named statements), `conn_state` (what the session keeps with a
//! server connection or a placement, in the pool's opaque slots),
//! `budget` (per-client bounds), `follow` (a live reload seen between
//! transactions).

pub mod boundary;
#[cfg(test)]
mod boundary_prop;
pub mod budget;
pub mod cancel;
pub mod client_conn;
pub mod conn_state;
mod context;
mod control;
pub mod deallocate;
pub mod error;
mod flow;
mod follow;
mod idle;
pub mod known;
mod lease;
pub mod params;
pub mod pinning;
pub mod prepared;
mod probe;
pub mod pump;
#[cfg(test)]
mod pump_random_tests;
#[cfg(test)]
mod pump_tests;
pub mod recover;
pub mod replies;
mod spare_buffers;
pub mod statements;
mod transaction;
pub mod txn;

use crate::catalog::TenantEntry;
use crate::config::{PoolMode, ProxyConfig};
use crate::pool::{Lease, PlacementPool, TenantSeat};
use crate::runtime::stream::unless_peer_gone;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use bytes::Buf;
use cancel::CancelSlot;
use pump::{Flow, PumpExit};
use replies::{Replies, Undo};
use statements::{ClientStatements, Rewriter};
use std::sync::Arc;
use txn::TxnState;

pub use conn_state::{ConnState, conn_state, known_statements};
pub use follow::{Follows, OperatorOn};
pub use lease::checkout_error;

/// How much of a request's first message must have arrived before a
/// server connection is leased for it: all of it, up to this.
const LEASE_AFTER: usize = 64 * 1024;

/// Server messages may be large (a DataRow up to 1 GB); the proxy only
/// reads the bodies of tiny ones, so this cap just bounds a corrupt length.
const SERVER_MAX_FRAME: usize = (1 << 30) + 5;

/// What the session needs besides the client socket.
pub struct Session<'a> {
    /// The settings of the snapshot it logged in with, which it keeps
    /// (timeouts, limits, reset query): read there, not copied, as an
    /// idle client's future holds the session.
    pub config: &'a ProxyConfig,
    pub tenant: Arc<TenantEntry>,
    /// This session's counters (metrics), registered with its tenant at
    /// login.
    pub stats: crate::metrics::SessionCounters,
    pub pool: Arc<PlacementPool>,
    /// This client's tenant at `pool`: what its leases count against.
    pub seat: TenantSeat,
    pub mode: PoolMode,
    pub cancel: &'a CancelSlot,
    /// The pid this client was given in BackendKeyData: what it sees in
    /// place of its server connection's real pid.
    pub client_pid: i32,
    /// The stop signal (shutdown, and SUSPEND or KILL of its tenant),
    /// watched between transactions without a lock.
    pub stop: crate::shutdown::StopWait,
    /// Paused tenants: looked at before each lease (one atomic load
    /// while nothing is paused).
    pub controls: &'a crate::control::Controls,
    /// Settings that follow this client onto every server connection.
    pub wanted: params::Settings,
    /// The client's startup settings: what RESET returns to.
    pub startup_settings: Vec<(String, String)>,
    /// ParameterStatus values the client has been told.
    pub reported: params::Reported,
    /// Custom (dotted) settings this client has set, read by name when
    /// learning its settings (at most `MAX_CUSTOM_SETTINGS`).
    pub custom_settings: Vec<String>,
    /// The client's named statements (transaction mode).
    pub statements: ClientStatements,
    /// How much named-statement text the client may keep.
    pub statement_limits: budget::StatementLimits,
    /// Requests between transactions are walked for a local answer again
    /// only once the buffer holds this many bytes (`known::Local::NeedMore`).
    pub walk_again_at: usize,
    /// Pins started, proxy-wide.
    pub pins: &'a std::sync::atomic::AtomicU64,
    /// This tenant's pinned server connections now, and its cap.
    pub pin_slots: Arc<std::sync::atomic::AtomicU32>,
    pub max_pins: u32,
    /// Held while this client is pinned.
    pub pin_guard: Option<crate::state::CountGuard>,
    /// Where a reload's new snapshot is read (`follow.rs`).
    pub state: &'a crate::state::ProxyState,
    pub follows: Follows,
    /// A reload ended this session: told once its transaction is over.
    /// Boxed: rare, and an idle client's future holds this field.
    pub ending: Option<Box<ClientError>>,
    /// What is left of a request the client canceled while it waited
    /// for a server connection, dropped as it arrives (None at login).
    pub skip_request: Option<SkipRequest>,
}

/// What is left of a request canceled while it waited for a server
/// connection (`Session::answer_canceled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipRequest {
    /// A Query or FunctionCall: that one message (answered already).
    Message,
    /// An extended-protocol batch: every message up to its Sync, which
    /// gets the ReadyForQuery.
    UntilSync,
}

/// What the idle client did next.
pub(super) enum Next {
    Request,
    Leave,
}

impl Session<'_> {
    /// Runs until the client leaves. An `Err` is for the caller to send
    /// to the client (if it still can) before closing.
    pub async fn run(&mut self, client: &mut ClientConn) -> Result<(), ClientError> {
        let mut server_flow = Flow::new(SERVER_MAX_FRAME);
        self.cancel.set_pool(&self.pool);
        let transaction_mode = self.mode == PoolMode::Transaction;
        // Reused across leases so tracking allocates nothing per transaction.
        let mut txn = TxnState::new(
            transaction_mode,
            transaction_mode && self.config.max_prepared_statements > 0,
        );
        txn.rest_in_transaction = !self.config.idle_transaction_timeout.is_zero();
        txn.rest_when_idle = !transaction_mode && !self.config.client_idle_timeout.is_zero();
        // The idle and message limits between requests (`idle.rs`), and
        // the wait for a server connection (`lease.rs`).
        let mut timer = crate::runtime::time::LazyTimer::default();
        loop {
            if let Next::Leave = self.wait_for_request(client, &mut timer).await? {
                return Ok(());
            }
            self.walk_again_at = 0;
            if self.controls.any_paused() {
                // The end of the last result still goes out meanwhile. A
                // client that leaves meanwhile is gone, its request with
                // it: nobody waits for its answer after RESUME.
                let paused = self.wait_while_paused();
                match Box::pin(unless_peer_gone(&mut client.stream, paused)).await {
                    None => {
                        tracing::debug!("the client closed its connection while paused");
                        return Ok(());
                    }
                    Some(canceled) => {
                        if canceled? {
                            // Canceled while held: answered, never sent.
                            Box::pin(self.answer_canceled(client)).await?;
                            continue;
                        }
                    }
                }
            }
            self.follow_reload()?;
            // Boxed, so that the lease, pump and recovery states (most of
            // a session's future) exist only while a request is served:
            // an idle client's future holds none of them. One small
            // allocation per transaction (mimalloc: a thread-local free
            // list), nothing per message.
            let ended =
                boxed_in_place(|| self.transaction(client, &mut server_flow, &mut txn, &mut timer))
                    .await?;
            if let transaction::Ended::Closed = ended {
                return Ok(());
            }
        }
    }

    /// Forwards until the pump reports. In session mode a shutdown asks
    /// the pump to stop at the next idle point rather than cutting a
    /// transaction.
    async fn pump(
        &mut self,
        client: &mut ClientConn,
        lease: &mut Lease,
        server_flow: &mut Flow,
        txn: &mut TxnState,
    ) -> PumpExit {
        loop {
            // Transaction mode, or a stop already seen: the pump stops at
            // the next idle point by itself; nothing else to watch.
            let watch_stop = !txn.stop_when_idle;
            let stall_deadline = txn.stall_deadline;
            // Made in each `select!` rather than once before: a future
            // held in a local as well would take room twice in this
            // future, which every transaction allocates.
            macro_rules! pumped {
                () => {
                    pump::pump(
                        &mut client.stream,
                        &mut client.flow,
                        &mut lease.conn_mut().stream,
                        server_flow,
                        txn,
                    )
                };
            }
            let exit = if let Some(deadline) = stall_deadline {
                // The client's backlog is over its limit, or it takes
                // none of its results: it has until the deadline to read
                // (only while still so). The timer is boxed: rare, and
                // large.
                tokio::select! {
                    biased;
                    _ = Box::pin(crate::runtime::time::sleep_until(deadline)) => {
                        txn.stall_deadline = None;
                        if txn.client_paused {
                            PumpExit::ClientStalled
                        } else if txn.not_reading_reported && server_flow.write_blocked {
                            if server_flow.send_progress() == txn.not_reading_mark {
                                // Not a byte taken in a whole period.
                                PumpExit::ClientStalled
                            } else {
                                // Reading, slowly: another period.
                                txn.not_reading_mark = server_flow.send_progress();
                                txn.stall_deadline =
                                    Some(crate::runtime::time::now() + self.config.client_read_timeout);
                                continue;
                            }
                        } else if txn.mid_message_reported && client.flow.mid_message() {
                            if client.flow.progress() == txn.mid_message_mark {
                                // Not a byte of it in a whole period.
                                PumpExit::MessageStalled
                            } else {
                                // Still arriving: another period from now.
                                txn.mid_message_mark = client.flow.progress();
                                txn.stall_deadline =
                                    Some(crate::runtime::time::now() + self.config.client_message_timeout);
                                continue;
                            }
                        } else {
                            continue;
                        }
                    }
                    exit = pumped!() => exit,
                }
            } else if watch_stop {
                tokio::select! {
                    biased;
                    // A stop, or a reload that may end this session
                    // (`follow.rs`): either way it ends at the next idle
                    // point, unless it is a KILL.
                    _ = self.stop.changed() => {
                        if self.is_killed() {
                            return PumpExit::Killed;
                        }
                        if !self.is_stopping() && !self.reload_ends_session() {
                            continue;
                        }
                        txn.stop_when_idle = true;
                        if txn.is_idle() && client.flow.at_rest() && server_flow.at_rest() {
                            PumpExit::Idle
                        } else {
                            continue;
                        }
                    }
                    exit = pumped!() => exit,
                }
            } else {
                // A stop has begun: the pump ends at the next idle point,
                // unless a KILL comes first.
                tokio::select! {
                    biased;
                    _ = self.stop.killed() => return PumpExit::Killed,
                    exit = pumped!() => exit,
                }
            };
            if !txn.has_session_effects() {
                return exit;
            }
            let conn = lease.conn_mut();
            for (name, value) in txn.param_changes.drain(..) {
                conn.set_param(&name, &value);
                let applied = &mut conn_state(conn).applied;
                params::upsert(Arc::make_mut(applied), &name, &value);
                params::upsert(Arc::make_mut(&mut self.wanted), &name, &value);
                self.reported.set(&name, &value);
            }
            let prepared = &mut conn_state(conn).prepared;
            apply_undo(&mut txn.replies, &mut self.statements, prepared);
            for name in txn.custom_names.drain(..) {
                let name = String::from_utf8_lossy(&name).into_owned();
                let known = self
                    .custom_settings
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(&name));
                if !known && self.custom_settings.len() < params::MAX_CUSTOM_SETTINGS {
                    self.custom_settings.push(name);
                }
            }
            if std::mem::take(&mut txn.statements_dropped) {
                // DEALLOCATE ALL / DISCARD ALL ran on the server.
                prepared.clear();
                self.statements.clear();
            }
            return exit;
        }
    }

    /// Handles a client message that names a prepared statement: reads it
    /// whole, rewrites it for this server connection, and drops it from
    /// the client's buffer.
    async fn rewrite(
        &mut self,
        client: &mut ClientConn,
        lease: &mut Lease,
        server_flow: &mut Flow,
        txn: &mut TxnState,
    ) -> Result<(), ClientError> {
        if client.flow.ready != 0 {
            // The pump reports a rewrite only after writing what precedes
            // the message; anything else would rewrite the wrong frame.
            return Err(ClientError::Protocol(
                "internal: rewrite with unwritten bytes".into(),
            ));
        }
        // Buffers grown for an earlier large message, now written.
        if client.flow.inject.is_empty() {
            budget::shrink(&mut client.flow.inject);
        }
        if server_flow.inject.is_empty() {
            budget::shrink(&mut server_flow.inject);
        }
        // The rest of a message the pump stopped at: bounded like any
        // half-sent message (the lease is held meanwhile).
        let read = statements::read_whole_frame(&mut client.stream, &mut client.flow);
        let len = if self.config.client_message_timeout.is_zero() {
            read.await?
        } else {
            crate::runtime::time::timeout(self.config.client_message_timeout, read)
                .await
                .map_err(|_| ClientError::MessageTimeout(self.tenant.id.clone()))??
        };
        let conn = lease.conn_mut();
        let nothing_in_flight = txn.is_quiet() && server_flow.at_rest();
        let status = txn.position.last_status();
        let lease_goes_on = status == boundary::TxStatus::InBlock
            || (status == boundary::TxStatus::Idle && txn.pinned);
        let mut rw = Rewriter {
            statements: &mut self.statements,
            prepared: &mut conn_state(conn).prepared,
            cache_size: self.config.max_prepared_statements,
            replies: &mut txn.replies,
            to_server: &mut client.flow.inject,
            to_client: &mut server_flow.inject,
            answer_status: (nothing_in_flight && lease_goes_on).then_some(status.as_byte()),
            limits: self.statement_limits,
            cache_events: &self.stats.prepared,
        };
        let frame = &client.flow.buf[..len];
        // What the rewritten message leaves owed: a ReadyForQuery (a
        // Query the rewriter forwarded), or replies until a Sync.
        if rw.handle(frame)? {
            txn.position = txn.position.step(boundary::Event::Request);
        } else if frame[0] != b'Q' {
            txn.position = txn.position.step(boundary::Event::Extended);
        }
        client.flow.buf.advance(len);
        budget::shrink(&mut client.flow.buf);
        Ok(())
    }

    fn is_stopping(&self) -> bool {
        self.stop.is_stopping()
    }

    fn is_killed(&self) -> bool {
        self.stop.reasons() & crate::shutdown::reason::KILL != 0
    }

    /// What the client is told when its session stops between
    /// transactions (or, for a KILL, at once).
    pub(super) fn stop_error(&self) -> ClientError {
        use crate::shutdown::reason;
        let reasons = self.stop.reasons();
        if reasons & reason::KILL != 0 {
            ClientError::Killed(self.tenant.id.clone())
        } else if reasons & reason::SUSPEND != 0 {
            ClientError::SuspendedSession(self.tenant.id.clone())
        } else {
            ClientError::ShuttingDown
        }
    }

    /// Before a lease while some pause is in effect: waits while this
    /// client's tenant is paused, up to `pause_timeout` (the checkout's
    /// own `query_wait_timeout` starts after it). A stop (shutdown,
    /// SUSPEND, KILL) ends the wait; so does the client's cancel (true:
    /// its request is to be answered as canceled).
    async fn wait_while_paused(&self) -> Result<bool, ClientError> {
        if !self.controls.is_paused(&self.tenant.id) {
            return Ok(false);
        }
        let began = crate::runtime::time::now();
        let deadline = began + self.config.pause_timeout;
        let marker = self.stop.client();
        if let Some(m) = marker {
            m.pause_began(began);
        }
        self.cancel.begin_wait();
        let resumed = tokio::select! {
            biased;
            _ = self.stop.stopped() => Err(self.stop_error()),
            () = self.cancel.wait_canceled() => Ok(None),
            r = self.controls.wait_resumed(&self.tenant.id, deadline) => Ok(Some(r)),
        };
        self.cancel.end_wait();
        if let Some(m) = marker {
            m.pause_ended();
        }
        match resumed? {
            None => Ok(true),
            Some(true) => Ok(false),
            Some(false) => {
                tracing::info!(tenant = %self.tenant.id, "paused longer than pause_timeout");
                Err(ClientError::PauseTimeout(self.tenant.id.clone()))
            }
        }
    }
}

/// Takes back statement-map effects of messages the server failed or
/// skipped.
pub(crate) fn apply_undo(
    replies: &mut Replies,
    statements: &mut ClientStatements,
    prepared: &mut prepared::PreparedSet,
) {
    for u in replies.undo.drain(..) {
        match u {
            Undo::ServerForget(n) => prepared.remove(&n),
            Undo::ServerKeep(n) => prepared.insert(n),
            Undo::ClientRestore(name, Some(s)) => {
                statements.insert(name, s);
            }
            Undo::ClientRestore(name, None) => {
                statements.remove(&name);
            }
        }
    }
}

/// `Box::pin(make())`, but with the box allocated before `make` runs, so
/// that the future can be written straight into it instead of made on the
/// stack and copied whole (every byte of its largest state, used or not).
#[inline(always)]
fn boxed_in_place<F>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

//! Property test of the release boundary: random interleavings of client
//! messages (simple and extended protocol, errors, COPY, pipelines,
//! FunctionCall, state-making SQL, Terminate at any point) and of a model
//! PostgreSQL's replies, cut into random pieces, go through the real
//! sinks (`ClientSink`, `ServerSink`) and the real release decision
//! (`Recovery::plan`). Whenever the connection would go back to the pool,
//! as it is or after recovery, the model server must be idle with nothing
//! owed and no session state the proxy did not clear.

use super::boundary::{Event, TxStatus};
use super::pump::Flow;
use super::recover::Recovery;
use super::txn::{ClientSink, Halt, ServerSink, TxnState};
use crate::protocol::FrameScanner;
use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

/// What the model client sends.
#[derive(Debug, Clone, Copy)]
enum Msg {
    Select,
    Begin,
    Commit,
    Rollback,
    /// A statement that fails.
    Fail,
    /// LISTEN: session state the proxy can see (keyword, tag, probe).
    Listen,
    /// A DO block: may leave any state, invisible to the probe.
    Do,
    /// COPY ... FROM STDIN, then its data.
    CopyIn,
    CopyData,
    CopyDone,
    CopyFail,
    Parse,
    /// A Parse the server refuses.
    ParseFail,
    Bind,
    Describe,
    Execute,
    Sync,
    Flush,
    FunctionCall,
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        Just(Msg::Select),
        Just(Msg::Begin),
        Just(Msg::Commit),
        Just(Msg::Rollback),
        Just(Msg::Fail),
        Just(Msg::Listen),
        Just(Msg::Do),
        Just(Msg::CopyIn),
        Just(Msg::CopyData),
        Just(Msg::CopyDone),
        Just(Msg::CopyFail),
        Just(Msg::Parse),
        Just(Msg::ParseFail),
        Just(Msg::Bind),
        Just(Msg::Describe),
        Just(Msg::Execute),
        Just(Msg::Sync),
        Just(Msg::Flush),
        Just(Msg::FunctionCall),
    ]
}

/// One step of a run.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The client sends a message.
    Client(Msg),
    /// Up to this many bytes of the server's pending replies arrive.
    Server(usize),
    /// The client sends Terminate (or vanishes).
    Terminate,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => msg().prop_map(Step::Client),
        4 => (1usize..64).prop_map(Step::Server),
        1 => Just(Step::Terminate),
    ]
}

pub(super) fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

pub(super) fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    let mut out = Vec::new();
    frame(&mut out, b'Q', &body);
    out
}

/// The client message's bytes (`None`: not sendable in the model's
/// current protocol state, skipped).
fn encode(m: Msg, server: &Model) -> Option<Vec<u8>> {
    let copy = matches!(m, Msg::CopyData | Msg::CopyDone | Msg::CopyFail);
    if server.copy_in != copy && !matches!(m, Msg::Sync | Msg::Flush) {
        return None; // a real client follows the COPY sub-protocol
    }
    let mut out = Vec::new();
    match m {
        Msg::Select => return Some(query("SELECT 1")),
        Msg::Begin => return Some(query("BEGIN")),
        Msg::Commit => return Some(query("COMMIT")),
        Msg::Rollback => return Some(query("ROLLBACK")),
        Msg::Fail => return Some(query("SELECT 1/0")),
        Msg::Listen => return Some(query("LISTEN chan")),
        Msg::Do => return Some(query("DO $$BEGIN EXECUTE 'LIS' || 'TEN x'; END$$")),
        Msg::CopyIn => return Some(query("COPY t FROM STDIN")),
        Msg::CopyData => frame(&mut out, b'd', b"1\n"),
        Msg::CopyDone => frame(&mut out, b'c', b""),
        Msg::CopyFail => frame(&mut out, b'f', b"no\0"),
        Msg::Parse => frame(&mut out, b'P', b"\0SELECT 1\0\0\0"),
        Msg::ParseFail => frame(&mut out, b'P', b"\0SELEC 1\0\0\0"),
        Msg::Bind => frame(&mut out, b'B', b"\0\0\0\0\0\0\0\0"),
        Msg::Describe => frame(&mut out, b'D', b"P\0"),
        Msg::Execute => frame(&mut out, b'E', b"\0\0\0\0\0"),
        Msg::Sync => frame(&mut out, b'S', b""),
        Msg::Flush => frame(&mut out, b'H', b""),
        Msg::FunctionCall => frame(&mut out, b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
    }
    Some(out)
}

/// A model PostgreSQL backend: enough of its protocol behaviour to check
/// the proxy's bookkeeping against.
#[derive(Debug, Default)]
struct Model {
    /// 'I', 'T' or 'E'.
    status: u8,
    /// After an extended-protocol error: everything up to Sync is ignored.
    skipping: bool,
    copy_in: bool,
    /// Session state the probe can see (LISTEN), committed.
    listening: bool,
    /// LISTEN run in the open transaction block, not committed yet.
    listen_pending: bool,
    /// State nothing but a full reset is sure to remove (DO, FunctionCall).
    hidden: bool,
    /// Replies not yet delivered to the proxy.
    pending: Vec<u8>,
}

impl Model {
    fn new() -> Model {
        Model {
            status: b'I',
            ..Model::default()
        }
    }

    fn reply(&mut self, tag: u8, body: &[u8]) {
        frame(&mut self.pending, tag, body);
    }

    fn complete(&mut self, tag: &str) {
        let mut b = tag.as_bytes().to_vec();
        b.push(0);
        self.reply(b'C', &b);
    }

    fn ready(&mut self) {
        let s = self.status;
        self.reply(b'Z', &[s]);
    }

    fn error(&mut self) {
        self.reply(b'E', b"SERROR\0C22012\0Mboom\0\0");
        if self.status == b'T' {
            self.status = b'E';
        }
    }

    fn commit(&mut self) {
        self.listening |= std::mem::take(&mut self.listen_pending);
    }

    /// Runs one client message, queueing its replies.
    fn run(&mut self, m: Msg) {
        if self.skipping && !matches!(m, Msg::Sync) {
            return; // PostgreSQL ignores everything but Sync
        }
        if !self.copy_in && matches!(m, Msg::CopyData | Msg::CopyDone | Msg::CopyFail) {
            return; // and COPY messages outside COPY
        }
        let aborted = self.status == b'E';
        match m {
            Msg::Select | Msg::Listen | Msg::Do | Msg::Fail | Msg::CopyIn if aborted => {
                self.error();
                self.ready();
            }
            Msg::Select => {
                self.reply(b'T', b"\0\0");
                self.reply(b'D', b"\0\0");
                self.complete("SELECT 1");
                self.ready();
            }
            Msg::Begin => {
                if self.status == b'I' {
                    self.status = b'T';
                }
                self.complete("BEGIN");
                self.ready();
            }
            Msg::Commit | Msg::Rollback => {
                if matches!(m, Msg::Commit) && self.status == b'T' {
                    self.commit();
                }
                self.listen_pending = false;
                self.status = b'I';
                self.complete(if matches!(m, Msg::Commit) {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                });
                self.ready();
            }
            Msg::Fail => {
                self.error();
                self.ready();
            }
            Msg::Listen => {
                self.listen_pending = true;
                self.complete("LISTEN");
                if self.status == b'I' {
                    self.commit();
                }
                self.ready();
            }
            Msg::Do => {
                self.hidden = true;
                self.complete("DO");
                self.ready();
            }
            Msg::CopyIn => {
                self.copy_in = true;
                self.reply(b'G', b"\0\0\0");
            }
            Msg::CopyData => {}
            Msg::CopyDone => {
                self.copy_in = false;
                self.complete("COPY 1");
                self.ready();
            }
            Msg::CopyFail => {
                self.copy_in = false;
                self.error();
                self.ready();
            }
            Msg::FunctionCall => {
                if aborted {
                    self.error();
                } else {
                    self.hidden = true;
                    self.reply(b'V', &(-1i32).to_be_bytes());
                }
                self.ready();
            }
            Msg::Parse | Msg::Bind | Msg::Describe | Msg::Execute if aborted => {
                self.error();
                self.skipping = true;
            }
            Msg::Parse => self.reply(b'1', b""),
            Msg::ParseFail => {
                self.error();
                self.skipping = true;
            }
            Msg::Bind => self.reply(b'2', b""),
            Msg::Describe => self.reply(b'n', b""),
            Msg::Execute => self.complete("SELECT 0"),
            Msg::Sync => {
                if self.copy_in {
                    return; // ignored during copy-in
                }
                self.skipping = false;
                self.ready();
            }
            Msg::Flush => {}
        }
    }

    /// Fit for another client, from the model's side.
    fn clean(&self) -> Result<(), String> {
        if self.status != b'I' || self.copy_in || self.skipping || !self.pending.is_empty() {
            return Err(format!("not idle: {self:?}"));
        }
        if self.listening || self.listen_pending || self.hidden {
            return Err(format!("session state left: {self:?}"));
        }
        Ok(())
    }

    /// What `Recovery::run` does, played against the model: the proxy's
    /// idea of what is owed must never stop it before the server's last
    /// reply. `Ok` when the connection goes back clean, or is closed.
    fn recover(&mut self, r: &Recovery) -> Result<(), String> {
        let mut position = r.position;
        if r.copy_in {
            self.run(Msg::CopyFail);
        }
        if position.unsynced() {
            self.run(Msg::Sync);
            position = position.step(Event::Sync { answered: true });
        }
        if r.skip > 0 && !r.leftover.is_empty() {
            return Err(format!("leftover bytes inside a frame: {r:?}"));
        }
        // What recovery reads: the bytes it holds, then, past the rest of
        // a frame already half-forwarded (`skip`), the socket.
        let mut stream = r.leftover.to_vec();
        stream.extend_from_slice(self.pending.get(r.skip..).unwrap_or_default());
        self.pending.clear();
        let mut at = 0;
        while position.owed() > 0 {
            let Some((tag, body, len)) = next_frame(&stream[at..]) else {
                // It would wait for more until RECOVERY_TIMEOUT, then
                // close the connection: safe. The next lease gets a new
                // connection.
                *self = Model::new();
                return Ok(());
            };
            at += len;
            match tag {
                b'Z' => position = position.step(Event::Ready(body[0])),
                b'G' => {
                    self.run(Msg::CopyFail);
                    stream.append(&mut self.pending);
                }
                _ => {}
            }
        }
        if at != stream.len() {
            return Err(format!(
                "recovery stopped with replies still to come: {:?} {r:?} {self:?}",
                &stream[at..]
            ));
        }
        if position.last_status() != TxStatus::Idle {
            self.run(Msg::Rollback);
            self.pending.clear();
        }
        if r.reset.is_some() || r.settings_unknown {
            // DISCARD ALL
            self.listening = false;
            self.listen_pending = false;
            self.hidden = false;
        }
        self.clean()
    }
}

/// The first whole frame of `b`: (tag, body, length with header).
fn next_frame(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    let len = i32::from_be_bytes(b.get(1..5)?.try_into().ok()?) as usize;
    let body = b.get(5..1 + len)?;
    Some((b[0], body, 1 + len))
}

/// The proxy's side of one server connection used by successive clients.
struct Harness {
    st: TxnState,
    model: Model,
    /// Server bytes delivered and not yet scanned.
    sbuf: Vec<u8>,
    sscanner: FrameScanner,
    cscanner: FrameScanner,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            st: TxnState::new(true, false),
            model: Model::new(),
            sbuf: Vec::new(),
            sscanner: FrameScanner::new(1 << 20),
            cscanner: FrameScanner::new(1 << 20),
        }
    }

    fn client(&mut self, m: Msg) -> Result<(), String> {
        let Some(bytes) = encode(m, &self.model) else {
            return Ok(());
        };
        let scan = self
            .cscanner
            .scan(&bytes, &mut ClientSink(&mut self.st))
            .map_err(|e| e.to_string())?;
        if scan.forward != bytes.len() {
            return Err(format!("client message held back: {m:?} {scan:?}"));
        }
        self.model.run(m);
        Ok(())
    }

    fn server(&mut self, n: usize) -> Result<(), String> {
        let n = n.min(self.model.pending.len());
        self.sbuf.extend(self.model.pending.drain(..n));
        let mut to_client = BytesMut::new();
        loop {
            let scan = self
                .sscanner
                .scan(
                    &self.sbuf,
                    &mut ServerSink {
                        base: self.sbuf.as_ptr() as usize,
                        st: &mut self.st,
                        to_client: &mut to_client,
                    },
                )
                .map_err(|e| e.to_string())?;
            self.st.notify_pids.clear();
            self.sbuf.drain(..scan.forward + scan.skip);
            match self.st.server_halt.take() {
                Some(Halt::Idle) => return self.release(false),
                Some(Halt::Probe) => self.probe(),
                // The session syncs settings; none are modelled here.
                Some(Halt::Restore) => self.st.defaults_reset = false,
                _ => {}
            }
            if !scan.stopped {
                return Ok(());
            }
        }
    }

    /// The session's probe at an idle point: it sees LISTEN, not what a
    /// DO block or a function left.
    fn probe(&mut self) {
        self.st.mentions = Default::default();
        if self.model.listening {
            self.st.pinned = true;
            self.st.stop_when_idle = false;
        } else {
            self.st.pinned = false;
            self.st.stop_when_idle = true;
        }
    }

    /// The lease ends (`gone`: the client left): the session's release
    /// decision, then the model must be fit for the next client.
    fn release(&mut self, gone: bool) -> Result<(), String> {
        let mut flow = Flow::new(1 << 20);
        flow.buf.put_slice(&self.sbuf);
        flow.scanner = self.sscanner.clone();
        // Settings are read back first at an idle point (none here).
        self.st.settings_changed &= gone;
        let outcome = match Recovery::plan(&self.st, &flow, self.st.pinned, "") {
            None => self
                .model
                .clean()
                .map_err(|e| format!("released as is: {e}")),
            Some(r) => self.model.recover(&r),
        };
        outcome?;
        // The next client's lease of the same connection.
        self.st.begin();
        self.st.stop_when_idle = true;
        self.sbuf.clear();
        self.sscanner = FrameScanner::new(1 << 20);
        self.cscanner = FrameScanner::new(1 << 20);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_connection_reaches_another_client_unless_clean(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        let mut h = Harness::new();
        for s in steps {
            let r = match s {
                Step::Client(m) => h.client(m),
                Step::Server(n) => h.server(n),
                Step::Terminate => h.release(true),
            };
            prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
        }
        // The client leaves at the end whatever state it is in.
        let r = h.release(true);
        prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
    }
}

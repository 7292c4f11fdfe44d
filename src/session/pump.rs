//! The byte pump between a client and its leased server connection.
//!
//! Both directions run inside one future, each independently: a direction
//! reads into its buffer, scans the frames in place (no per-message
//! allocation, no copy), writes the complete prefix to the peer in one
//! write, and reads again only once that write is done. So each side's
//! buffer stays bounded, a slow reader slows only its own direction
//! (back-pressure reaches the sender through TCP), and neither direction
//! can deadlock the other.
//!
//! While scanning, the sinks keep the transaction state the pooler needs:
//! how many ReadyForQuery messages the client still expects, whether it
//! sent extended-protocol messages without Sync, and the status byte of
//! the last ReadyForQuery. At a ReadyForQuery that leaves the connection
//! idle, the pump stops so the session can release the server.
//!
//! Cancel safety: all state lives in the structs passed in, so dropping
//! the future (e.g. when a shutdown branch of a `select!` wins) loses
//! nothing; polling again resumes where it stopped.

use crate::protocol::{FrameError, FrameScanner, FrameSink, HEADER_LEN, Step};
use bytes::{Buf, BytesMut};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Read-buffer growth step; also the most a single read takes in.
pub const READ_CHUNK: usize = 16 * 1024;

/// One direction's buffer and how much of it is scanned and ready to go.
#[derive(Debug)]
pub struct Flow {
    pub buf: BytesMut,
    /// Leading bytes of `buf` scanned and not yet written to the peer.
    pub ready: usize,
    /// The sink stopped the scan; reported once `ready` is written.
    stopped: bool,
    pub scanner: FrameScanner,
}

impl Flow {
    pub fn new(max_frame: usize) -> Flow {
        Flow {
            buf: BytesMut::with_capacity(READ_CHUNK),
            ready: 0,
            stopped: false,
            scanner: FrameScanner::new(max_frame),
        }
    }

    /// Nothing scanned-but-unwritten and not inside a frame.
    pub fn at_rest(&self) -> bool {
        self.ready == 0 && self.scanner.at_boundary()
    }

    /// Discards state for a new server connection (server direction only).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.ready = 0;
        self.stopped = false;
        let max = self.scanner.max_len();
        self.scanner = FrameScanner::new(max);
    }
}

/// Transaction state, kept by the sinks while frames go by.
#[derive(Debug, Clone)]
pub struct TxnState {
    /// ReadyForQuery messages the server still owes the client.
    pub expected_z: u32,
    /// The client sent extended-protocol messages not yet followed by Sync.
    pub unsynced: bool,
    /// Status byte of the last ReadyForQuery (`I`, `T` or `E`).
    pub status: u8,
    /// Stop the pump at the next point where the server is idle.
    pub stop_when_idle: bool,
    /// Updated by the pump before each server scan: the client direction
    /// has nothing in flight.
    client_at_rest: bool,
    /// ParameterStatus messages seen since the last drain.
    pub param_changes: Vec<(String, String)>,
}

impl Default for TxnState {
    fn default() -> Self {
        TxnState {
            expected_z: 0,
            unsynced: false,
            status: b'I',
            stop_when_idle: false,
            client_at_rest: true,
            param_changes: Vec::new(),
        }
    }
}

impl TxnState {
    pub fn new(stop_when_idle: bool) -> TxnState {
        TxnState {
            stop_when_idle,
            ..TxnState::default()
        }
    }

    /// The server connection could serve another client as it is.
    pub fn is_idle(&self) -> bool {
        self.expected_z == 0 && !self.unsynced && self.status == b'I'
    }

    /// Nothing is outstanding on the server, though a transaction may be
    /// open (status `T` or `E`): a ROLLBACK would make it idle.
    pub fn is_quiet(&self) -> bool {
        self.expected_z == 0 && !self.unsynced
    }
}

/// Client → server: counts what the server will answer with ReadyForQuery.
struct ClientSink<'a>(&'a mut TxnState);

impl FrameSink for ClientSink<'_> {
    fn wants_body(&self, _tag: u8) -> bool {
        false
    }

    fn on_frame(&mut self, tag: u8, _frame: &[u8]) -> Step {
        let st = &mut *self.0;
        match tag {
            // Query and FunctionCall each end with one ReadyForQuery.
            b'Q' | b'F' => st.expected_z += 1,
            b'S' => {
                st.expected_z += 1;
                st.unsynced = false;
            }
            // Parse, Bind, Describe, Execute, Close, Flush: state lives on
            // the server until the next Sync.
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => st.unsynced = true,
            // Terminate is the proxy's to handle, never the server's.
            b'X' => return Step::StopBefore,
            _ => {}
        }
        Step::Continue
    }
}

/// Server → client: watches ReadyForQuery and ParameterStatus.
struct ServerSink<'a>(&'a mut TxnState);

impl FrameSink for ServerSink<'_> {
    fn wants_body(&self, tag: u8) -> bool {
        tag == b'Z' || tag == b'S'
    }

    fn on_frame(&mut self, tag: u8, frame: &[u8]) -> Step {
        let st = &mut *self.0;
        match tag {
            b'Z' => {
                st.status = frame.get(HEADER_LEN).copied().unwrap_or(b'E');
                st.expected_z = st.expected_z.saturating_sub(1);
                if st.stop_when_idle && st.is_idle() && st.client_at_rest {
                    return Step::StopAfter;
                }
            }
            b'S' => {
                if let Some((name, value)) = parse_parameter_status(&frame[HEADER_LEN..]) {
                    st.param_changes.push((name.to_string(), value.to_string()));
                }
            }
            _ => {}
        }
        Step::Continue
    }
}

fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

/// Why the pump stopped.
#[derive(Debug)]
pub enum PumpExit {
    /// The server is idle at a transaction boundary (`stop_when_idle`).
    Idle,
    /// The client sent Terminate (left at the front of its buffer).
    ClientTerminate,
    ClientEof,
    ServerEof,
    ClientIo(io::Error),
    ServerIo(io::Error),
    /// The client broke framing (oversized or negative length).
    ClientProtocol(FrameError),
    ServerProtocol(FrameError),
}

enum Side {
    Client,
    Server,
}

type IoExit = fn(io::Error) -> PumpExit;

impl Side {
    /// (read error, write error, end of stream) for a direction whose
    /// source is this side.
    fn exits(&self) -> (IoExit, IoExit, PumpExit) {
        match self {
            Side::Client => (PumpExit::ClientIo, PumpExit::ServerIo, PumpExit::ClientEof),
            Side::Server => (PumpExit::ServerIo, PumpExit::ClientIo, PumpExit::ServerEof),
        }
    }
}

/// Runs both directions until one of them has something to report.
pub async fn pump(
    client: &mut TcpStream,
    client_flow: &mut Flow,
    server: &mut TcpStream,
    server_flow: &mut Flow,
    state: &mut TxnState,
) -> PumpExit {
    poll_fn(|cx| {
        if let Poll::Ready(exit) = poll_direction(
            cx,
            client,
            server,
            client_flow,
            &mut ClientSink(state),
            Side::Client,
        ) {
            return Poll::Ready(exit);
        }
        state.client_at_rest = client_flow.at_rest();
        poll_direction(
            cx,
            server,
            client,
            server_flow,
            &mut ServerSink(state),
            Side::Server,
        )
    })
    .await
}

/// Moves bytes from `src` to `dst` until a read or write would block
/// (Pending) or something must be reported (Ready).
fn poll_direction(
    cx: &mut Context<'_>,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    flow: &mut Flow,
    sink: &mut impl FrameSink,
    side: Side,
) -> Poll<PumpExit> {
    let (read_err, write_err, eof) = side.exits();
    loop {
        while flow.ready > 0 {
            match ready!(Pin::new(&mut *dst).poll_write(cx, &flow.buf[..flow.ready])) {
                Ok(0) => return Poll::Ready(write_err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    flow.buf.advance(n);
                    flow.ready -= n;
                }
                Err(e) => return Poll::Ready(write_err(e)),
            }
        }
        if flow.stopped {
            flow.stopped = false;
            return Poll::Ready(match side {
                Side::Client => PumpExit::ClientTerminate,
                Side::Server => PumpExit::Idle,
            });
        }
        // Bytes left from an earlier read (a partial header, or a frame
        // held back by StopBefore/StopAfter) are scanned before reading.
        if !flow.buf.is_empty() {
            match scan(flow, sink) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    return Poll::Ready(match side {
                        Side::Client => PumpExit::ClientProtocol(e),
                        Side::Server => PumpExit::ServerProtocol(e),
                    });
                }
            }
        }
        if flow.buf.capacity() - flow.buf.len() < HEADER_LEN + 1 {
            flow.buf.reserve(READ_CHUNK);
        }
        match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut *src),
            cx,
            &mut flow.buf
        )) {
            Ok(0) => return Poll::Ready(eof),
            Ok(_) => {}
            Err(e) => return Poll::Ready(read_err(e)),
        }
        if let Err(e) = scan(flow, sink) {
            return Poll::Ready(match side {
                Side::Client => PumpExit::ClientProtocol(e),
                Side::Server => PumpExit::ServerProtocol(e),
            });
        }
    }
}

/// Scans unscanned bytes; true if it made something ready or stopped.
fn scan(flow: &mut Flow, sink: &mut impl FrameSink) -> Result<bool, FrameError> {
    let s = flow.scanner.scan(&flow.buf[flow.ready..], sink)?;
    flow.ready += s.forward;
    flow.stopped |= s.stopped;
    Ok(s.forward > 0 || s.stopped)
}

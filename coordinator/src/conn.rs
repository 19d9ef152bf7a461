//! One client connection: framing, the handshake (or a four-letter word),
//! then requests in order until either side closes.
//!
//! Reading and writing are separate tasks. The reader decodes and carries
//! out each request (in memory, without awaiting anything), which queues the
//! reply; the writer drains the queue into the socket, coalescing whatever
//! is queued into one write so a pipelining client costs few syscalls.
//!
//! Bad input closes this connection and nothing else: a frame longer than
//! `jute.maxbuffer`, a handshake or a request header that does not decode.
//! A request body that does not match its opcode is answered with
//! MarshallingError, as ZooKeeper does, and the connection carries on.
//! Each is logged with the peer and the reason.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zk_wire::codec::Jute;
use zk_wire::frame::split_frame;
use zk_wire::records::{ConnectRequest, RequestHeader};
use zk_wire::Request;

use crate::clients::{Answer, Client, ConnShared, Frame, Outbound};
use crate::core::Core;
use crate::fourlw;
use crate::ops::{self, session::Handshake};
use crate::session::SessionId;

/// How long a connection may take to flush what is queued once the server
/// shuts down. Shutdown must finish whatever clients do (a supervisor
/// restarts a server that exits, not one that hangs), so a client that is
/// not reading loses the rest of its replies after this.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How much room a read makes in the buffer: a ping or a small request
/// fits many times over; a large frame takes several reads.
const READ_CHUNK: usize = 16 * 1024;

/// Serves one accepted connection until it closes.
pub async fn serve(core: Arc<Core>, stream: TcpStream, shutdown: CancellationToken) {
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let Some(conn) = core.conns.register(peer) else {
        tracing::warn!(%peer, limit = core.config.max_client_connections, "too many connections from this address; refusing");
        return;
    };
    // Attached to both halves' futures, so whatever they log carries it. A
    // guard from `span.enter()` covers only what runs before it drops, and
    // held across an await it would cover whatever else runs on the thread.
    let span = tracing::debug_span!("conn", id = conn.id, %peer);
    // Before the handshake no session timeout is known: the longest one a
    // client could negotiate bounds a write then.
    let writer = tokio::spawn(
        write_loop(core.clone(), wr, conn.clone(), core.durable(), core.config.max_session_timeout)
            .instrument(span.clone()),
    );
    let reason = read_loop(&core, &conn, rd, shutdown.clone()).instrument(span).await;
    let session = conn.session_id.load(Ordering::Relaxed);
    match &reason {
        Ended::Closed => {
            tracing::debug!(conn = conn.id, %peer, session = %SessionId(session), "connection closed")
        }
        why => {
            tracing::info!(conn = conn.id, %peer, session = %SessionId(session), "closing connection: {why}")
        }
    }
    core.unregister_conn(&conn);
    conn.close();
    // The writer flushes what is queued and closes the socket; its write
    // deadline bounds that. On shutdown it gets SHUTDOWN_GRACE at most, so
    // the server stops in bounded time whatever the clients do.
    let mut writer = writer;
    let done = tokio::select! {
        _ = &mut writer => true,
        _ = shutdown.cancelled() => false,
    };
    if !done && tokio::time::timeout(SHUTDOWN_GRACE, &mut writer).await.is_err() {
        writer.abort();
        let _ = writer.await;
    }
    // What was never written goes, and leaves the server's total.
    conn.discard_queue();
    let dropped = conn.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        tracing::info!(conn = conn.id, peer = %conn.peer, dropped, "frames dropped after the connection was condemned");
    }
    // Only now is the socket closed: the slot was the socket's, not the
    // reader's.
    core.conns.release(&conn);
}

/// Drains the outbound queue into the socket. A frame waits until the zxid
/// it reflects is durable; frames are queued in zxid order per connection,
/// so waiting for the last one of a batch covers them all. With group commit
/// one fsync releases every reply that was waiting on it.
///
/// A write that makes no progress for the session's timeout closes the
/// connection: a client that has not read for that long has already given
/// the connection up (its pings would have gone unanswered), and without a
/// deadline it would hold its socket, its queued replies and its per-IP
/// slot for as long as it liked.
async fn write_loop(
    core: Arc<Core>,
    mut wr: OwnedWriteHalf,
    conn: Arc<ConnShared>,
    mut durable: watch::Receiver<i64>,
    before_handshake: Duration,
) {
    // Taken when there is something to write and given back when the
    // queue is empty (see below).
    let mut buf: Vec<u8> = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    let mut closing = false;
    while !closing {
        let mut need = match conn.outbox.next().await {
            Outbound::Frame(Frame { bytes, durable_at, answer }) => {
                buf.extend_from_slice(&bytes);
                answers.extend(answer);
                durable_at
            }
            Outbound::Close => break,
        };
        // Coalesce whatever else is already queued (bounded, so one busy
        // connection cannot build an unbounded buffer here either).
        while buf.len() < 256 * 1024 {
            match conn.outbox.try_next() {
                Some(Outbound::Frame(Frame { bytes, durable_at, answer })) => {
                    buf.extend_from_slice(&bytes);
                    answers.extend(answer);
                    need = need.max(durable_at);
                }
                Some(Outbound::Close) => {
                    closing = true;
                    break;
                }
                None => break,
            }
        }
        // Copy the value out: a `borrow()` guard kept alive across the await
        // would hold the channel's lock and block the log thread's update.
        let on_disk = *durable.borrow();
        if on_disk < need {
            tokio::select! {
                r = durable.wait_for(|d| *d >= need) => if r.is_err() {
                    // The log failed: nothing more can be acknowledged.
                    return;
                },
                _ = conn.abandon.notified() => return,
            }
        }
        let n = buf.len();
        let deadline = match conn.timeout_ms.load(Ordering::Relaxed) {
            0 => before_handshake,
            ms => Duration::from_millis(ms),
        };
        if let Err(why) = write_by(&mut wr, &conn, &buf, deadline).await {
            if why == WriteFailed::Stalled {
                tracing::info!(conn = conn.id, peer = %conn.peer, ?deadline, "closing connection: the client has read nothing for its session timeout");
            }
            // The reader must stop too: nothing it answers can be sent.
            conn.close();
            return;
        }
        conn.written(n);
        // A connection with nothing more to send keeps no buffer: an idle
        // session should cost its socket and little else. A busy one keeps
        // it for the next batch.
        if conn.outbox.release_if_empty() {
            buf = Vec::new();
        } else {
            buf.clear();
        }
        // Answered: the latency runs from the read to the reply on the
        // socket, the fsync it waited for included.
        for a in answers.drain(..) {
            core.stats.record_request(a.kind, a.started.elapsed());
        }
        // A reader held back while the server is over its byte budget
        // may go on once its queue is empty.
        conn.drained.notify_one();
        // Idle again: the answers' list goes with the buffer.
        if buf.capacity() == 0 {
            answers.shrink_to_fit();
        }
    }
    let _ = wr.shutdown().await;
}

/// Why a write to the client failed.
#[derive(Debug, PartialEq, Eq)]
enum WriteFailed {
    /// A write made no progress within its deadline.
    Stalled,
    /// The socket failed, as it does when the client goes away.
    Broken,
    /// The server dropped the connection's queue (`ConnShared::drop_unread`).
    Abandoned,
}

/// Writes all of `buf`, failing when one write makes no progress within
/// `deadline` (a slow reader that keeps reading is fine; one that stopped
/// is not). While the socket takes nothing the connection is marked stuck,
/// which is how the server tells a client that is not reading.
async fn write_by(
    wr: &mut OwnedWriteHalf,
    conn: &ConnShared,
    buf: &[u8],
    deadline: Duration,
) -> Result<(), WriteFailed> {
    let mut at = 0;
    while at < buf.len() {
        conn.set_stuck(true);
        let wrote = tokio::select! {
            biased;
            _ = conn.abandon.notified() => return Err(WriteFailed::Abandoned),
            r = tokio::time::timeout(deadline, wr.write(&buf[at..])) => r,
        };
        match wrote {
            Err(_) => return Err(WriteFailed::Stalled),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(WriteFailed::Broken),
            Ok(Ok(n)) => at += n,
        }
    }
    conn.set_stuck(false);
    Ok(())
}

/// Why a connection's reader stopped.
#[derive(Debug)]
enum Ended {
    /// In the ordinary course: the client closed, or asked to (closeSession),
    /// or the server closed it (session moved or expired, a refused
    /// handshake, shutdown, a connection condemned).
    Closed,
    /// Bytes that are not the protocol (an oversized frame, a handshake or
    /// a request header that does not decode).
    BadInput(String),
    /// The client has seen a newer zxid than ours (it was served by a
    /// server ahead of this one): ZooKeeper drops it without a reply.
    AheadOfUs,
    /// The socket failed.
    Io(std::io::Error),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed => write!(f, "closed"),
            Ended::BadInput(why) => write!(f, "{why}"),
            Ended::AheadOfUs => write!(f, "client has seen a newer zxid"),
            Ended::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

async fn read_loop(core: &Arc<Core>, conn: &Arc<ConnShared>, rd: OwnedReadHalf, shutdown: CancellationToken) -> Ended {
    let max = core.config.max_buffer;
    let mut buf = BytesMut::new();
    let mut client: Option<Client> = None;
    loop {
        // Everything already buffered is handled before reading more, unless
        // the connection has been condemned meanwhile (its session closed,
        // expired or moved; shutdown): then what is still buffered is
        // dropped unread. The committer refuses such requests anyway (see
        // `Liveness::check`); stopping here saves the work and the replies
        // no one will read.
        loop {
            if conn.closed.is_cancelled() || shutdown.is_cancelled() {
                return Ended::Closed;
            }
            if client.is_some() && !wait_for_admission(core, conn, &shutdown).await {
                return Ended::Closed;
            }
            if client.is_none() && buf.len() >= 4 {
                let word = [buf[0], buf[1], buf[2], buf[3]];
                if let Some(cmd) = fourlw::parse(&word) {
                    let text = fourlw::run(core, cmd);
                    conn.send(bytes::Bytes::from(text), 0);
                    return Ended::Closed;
                }
            }
            let frame = match split_frame(&mut buf, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Ended::BadInput(e.to_string()),
            };
            conn.received.fetch_add(1, Ordering::Relaxed);
            core.stats.packets_received.fetch_add(1, Ordering::Relaxed);
            match &mut client {
                None => {
                    let req = match ConnectRequest::decode(&frame) {
                        Ok(r) => r,
                        Err(e) => return Ended::BadInput(format!("malformed handshake: {e}")),
                    };
                    match ops::session::handshake(core, conn, &req) {
                        Handshake::Accepted(c) => client = Some(c),
                        Handshake::Refused => return Ended::Closed,
                        Handshake::Dropped => return Ended::AheadOfUs,
                    }
                }
                Some(c) => {
                    // One atomic store: the session's deadline moves, no lock taken.
                    c.live.touch();
                    let mut body = &frame[..];
                    let hdr = match RequestHeader::read(&mut zk_wire::Reader::new(body)) {
                        Ok(h) => h,
                        Err(e) => return Ended::BadInput(format!("malformed request header: {e}")),
                    };
                    body.advance(8);
                    let req = match Request::decode(hdr.op, body) {
                        Ok(r) => r,
                        Err(zk_wire::DecodeError::UnknownOpCode(op)) => Request::Unsupported(unknown_op(op)),
                        Err(e) => {
                            tracing::info!(conn = conn.id, peer = %conn.peer, xid = hdr.xid, op = hdr.op, "malformed request: {e}");
                            ops::reject_malformed(core, c, hdr.xid);
                            continue;
                        }
                    };
                    if !ops::process(core, c, hdr.xid, req) {
                        return Ended::Closed;
                    }
                }
            }
        }
        // An idle connection holds no read buffer: it waits until the
        // socket is readable, and only then takes a buffer to read into.
        // Most sessions are idle between pings, and with ten thousand of
        // them a buffer kept per connection was a third of what each cost.
        if buf.is_empty() && buf.capacity() > 0 {
            buf = BytesMut::new();
        }
        // Biased: a condemned connection stops even while its client keeps
        // the socket readable.
        tokio::select! {
            biased;
            _ = conn.closed.cancelled() => return Ended::Closed,
            _ = shutdown.cancelled() => return Ended::Closed,
            r = rd.readable() => if let Err(e) = r {
                return Ended::Io(e);
            },
        }
        buf.reserve(READ_CHUNK);
        match rd.try_read_buf(&mut buf) {
            Ok(0) => return Ended::Closed,
            Ok(_) => {}
            // Readiness can be spurious: wait again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Ended::Io(e),
        }
    }
}

/// Admission control, as ZooKeeper's `globalOutstandingLimit` does it:
/// while more requests are outstanding across the server than the limit
/// (received and not yet processed, see `Core::outstanding_requests`), a
/// connection that still has a request of its own in progress (a reply
/// waiting for its txn to be durable) is not read. Its requests wait in its
/// socket and then in the client, which is where a client sending faster
/// than the server can log belongs; the server's memory stays bounded by
/// the limit, not by the offered load. A connection with nothing in
/// progress is always read, so every client keeps at least one request in
/// flight and none is starved.
///
/// A reply that is ready but unread is not work in progress, and does not
/// count (it did, and twenty clients that never read held every other
/// client to one request in flight). It is bounded by bytes instead: while
/// the server holds more unread bytes than `global_queued_bytes_limit`, a
/// connection with bytes of its own still queued is not read either, and
/// the ones that stopped reading are closed (`Registry::shed_unread`).
///
/// Returns false when the connection is condemned or the server stops
/// while waiting.
async fn wait_for_admission(core: &Core, conn: &ConnShared, shutdown: &CancellationToken) -> bool {
    let limit = core.config.global_outstanding_limit;
    let over = || {
        let busy = || conn.awaiting.load(Ordering::Relaxed) > core.durable_zxid();
        let too_much_work = limit > 0 && core.outstanding_requests() > limit as u64 && busy();
        too_much_work || (conn.queued() > 0 && core.conns.totals.over_budget())
    };
    if !over() {
        return true;
    }
    core.stats.throttled_waits.fetch_add(1, Ordering::Relaxed);
    while over() {
        // The connection's own writer signals each time it writes; the
        // timer covers the rest (the log's fsync, other connections
        // draining or being closed).
        tokio::select! {
            biased;
            _ = conn.closed.cancelled() => return false,
            _ = shutdown.cancelled() => return false,
            _ = conn.drained.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    true
}

/// An opcode the protocol does not define gets the same answer as one we
/// do not implement.
fn unknown_op(_op: i32) -> zk_wire::OpCode {
    zk_wire::OpCode::Error
}

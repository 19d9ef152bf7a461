//! A raw ZooKeeper client for tests (cargo feature `client`).
//!
//! Unlike a real client library it hides nothing: the test chooses every
//! xid, sees every reply and every watch notification in the order the
//! server sent them, decoded but not interpreted, and can write arbitrary
//! bytes to the socket. That is what a differential test needs (the same
//! bytes to two servers, and everything they answer compared) and what a
//! bad-input test needs (bytes no library would send).
//!
//! # Use
//!
//! - [`Client::connect`] does the handshake ([`ConnectOptions`] carries a
//!   session id and password to resume a session). An expired or refused
//!   session still returns a [`Client`]: its [`Client::handshake`] holds the
//!   `time_out: 0, session_id: 0` answer ZooKeeper gives, and the server
//!   then closes the socket.
//! - [`Client::call`] sends a request with the next xid and returns its
//!   reply; notifications that arrive first are queued for
//!   [`Client::next_event`]. [`Client::send`] and [`Client::recv`] are the
//!   unbuffered halves, for tests that pipeline or that need the exact
//!   interleaving of replies and notifications.
//! - Pings are the test's job ([`Client::ping`]): nothing runs in the
//!   background, so what the server sees is exactly what the test sent.
//!
//! Every read is bounded by the client's I/O timeout, so a server that goes
//! silent fails the test instead of hanging it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::codec::{DecodeError, Jute, Reader};
use crate::consts::{OpCode, NOTIFICATION_XID, PING_XID};
use crate::frame::{finish_frame, split_frame, start_frame, FrameError};
use crate::records::{ConnectRequest, ConnectResponse, ReplyHeader, RequestHeader, WatcherEvent};
use crate::request::Request;
use crate::response::Response;

/// Why a client call failed. Server-side errors are not here: they arrive
/// as the `err` of a [`Reply`], because comparing them is the point.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection")]
    Closed,
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    #[error("undecodable reply to xid {xid} ({op:?}): {err}")]
    Decode { xid: i32, op: Option<OpCode>, err: DecodeError },
    #[error("reply for xid {0} that no request is waiting for")]
    UnexpectedXid(i32),
}

/// What to send in the handshake.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub timeout_ms: i32,
    /// 0 for a new session.
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub last_zxid_seen: i64,
    /// `Some` appends the readOnly byte, as every client since 3.4 does.
    pub read_only: Option<bool>,
    /// How long any single read may wait.
    pub io_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout_ms: 10_000,
            session_id: 0,
            passwd: vec![0; 16],
            last_zxid_seen: 0,
            read_only: Some(false),
            io_timeout: Duration::from_secs(10),
        }
    }
}

/// One decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub xid: i32,
    pub zxid: i64,
    pub err: i32,
    /// The opcode of the request it answers (known from the xid).
    pub op: Option<OpCode>,
    /// `Empty` for an error reply without a body.
    pub body: Response,
}

/// A frame from the server, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Reply(Reply),
    /// A watch notification (xid -1).
    Event {
        zxid: i64,
        event: WatcherEvent,
    },
}

pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    handshake: ConnectResponse,
    /// Opcode of each request sent and not yet answered, by xid: the reply
    /// body's shape depends on it.
    pending: HashMap<i32, OpCode>,
    events: VecDeque<(i64, WatcherEvent)>,
    next_xid: i32,
    io_timeout: Duration,
    /// Largest frame accepted from the server (a reply can carry up to
    /// jute.maxbuffer of data plus its header).
    max_frame: usize,
}

impl Client {
    /// Connects and does the handshake.
    pub async fn connect(addr: impl ToSocketAddrs, opts: ConnectOptions) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(opts.io_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(opts.io_timeout))??;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            buf: BytesMut::with_capacity(8192),
            handshake: ConnectResponse::default(),
            pending: HashMap::new(),
            events: VecDeque::new(),
            next_xid: 1,
            io_timeout: opts.io_timeout,
            max_frame: 16 * 1024 * 1024,
        };
        let req = ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: opts.last_zxid_seen,
            time_out: opts.timeout_ms,
            session_id: opts.session_id,
            passwd: opts.passwd,
            read_only: opts.read_only,
        };
        let mut out = Vec::new();
        let at = start_frame(&mut out);
        req.write(&mut out);
        finish_frame(&mut out, at);
        c.send_raw(&out).await?;
        let body = c.read_frame().await?;
        c.handshake = ConnectResponse::decode(&body).map_err(|err| ClientError::Decode { xid: 0, op: None, err })?;
        Ok(c)
    }

    /// The server's handshake answer: negotiated timeout, session id and
    /// password. A `time_out` of 0 means the session was refused (expired).
    pub fn handshake(&self) -> &ConnectResponse {
        &self.handshake
    }

    pub fn session_id(&self) -> i64 {
        self.handshake.session_id
    }

    pub fn passwd(&self) -> &[u8] {
        &self.handshake.passwd
    }

    /// Options that resume this client's session on a new connection.
    pub fn resume_options(&self) -> ConnectOptions {
        ConnectOptions {
            session_id: self.handshake.session_id,
            passwd: self.handshake.passwd.clone(),
            timeout_ms: self.handshake.time_out,
            io_timeout: self.io_timeout,
            ..ConnectOptions::default()
        }
    }

    pub fn set_io_timeout(&mut self, t: Duration) {
        self.io_timeout = t;
    }

    /// The xid the next [`Client::call`] will use.
    pub fn next_xid(&self) -> i32 {
        self.next_xid
    }

    /// Sends `req` with the given xid, without waiting for the reply.
    pub async fn send(&mut self, xid: i32, req: &Request) -> Result<(), ClientError> {
        let mut out = Vec::new();
        let at = start_frame(&mut out);
        RequestHeader { xid, op: req.op_code().as_i32() }.write(&mut out);
        req.write_body(&mut out);
        finish_frame(&mut out, at);
        self.pending.insert(xid, req.op_code());
        self.send_raw(&out).await
    }

    /// Writes bytes as they are: for frames no well-behaved client sends.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        tokio::time::timeout(self.io_timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| ClientError::Timeout(self.io_timeout))??;
        Ok(())
    }

    /// Registers the opcode a raw-sent request's reply should be decoded as.
    pub fn expect_reply(&mut self, xid: i32, op: OpCode) {
        self.pending.insert(xid, op);
    }

    /// The next frame from the server, whatever it is (queued notifications
    /// from earlier [`Client::call`]s come first).
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        if let Some((zxid, event)) = self.events.pop_front() {
            return Ok(Message::Event { zxid, event });
        }
        self.recv_socket().await
    }

    async fn recv_socket(&mut self) -> Result<Message, ClientError> {
        let body = self.read_frame().await?;
        let mut r = Reader::new(&body);
        let hdr = ReplyHeader::read(&mut r).map_err(|err| ClientError::Decode { xid: 0, op: None, err })?;
        let rest = r.rest();
        if hdr.xid == NOTIFICATION_XID {
            let event = WatcherEvent::decode(rest).map_err(|err| ClientError::Decode {
                xid: hdr.xid,
                op: Some(OpCode::Notification),
                err,
            })?;
            return Ok(Message::Event { zxid: hdr.zxid, event });
        }
        let op = match hdr.xid {
            PING_XID => self.pending.remove(&hdr.xid).or(Some(OpCode::Ping)),
            xid => self.pending.remove(&xid),
        };
        // An error reply has no body, except a multi's (and addWatch's
        // ErrorResponse); decode whatever the server sent.
        let body = match op {
            Some(op) if hdr.err == 0 || !rest.is_empty() => {
                Response::decode(op, rest).map_err(|err| ClientError::Decode { xid: hdr.xid, op: Some(op), err })?
            }
            None if !rest.is_empty() => return Err(ClientError::UnexpectedXid(hdr.xid)),
            _ => Response::Empty,
        };
        Ok(Message::Reply(Reply { xid: hdr.xid, zxid: hdr.zxid, err: hdr.err, op, body }))
    }

    /// Sends `req` with the next xid and waits for its reply. Notifications
    /// that arrive before it are kept for [`Client::next_event`].
    pub async fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        let xid = self.next_xid;
        self.next_xid += 1;
        self.send(xid, req).await?;
        self.wait_reply(xid).await
    }

    /// Waits for the reply with `xid`, queueing notifications on the way.
    pub async fn wait_reply(&mut self, xid: i32) -> Result<Reply, ClientError> {
        loop {
            match self.recv_socket().await? {
                Message::Event { zxid, event } => self.events.push_back((zxid, event)),
                Message::Reply(r) if r.xid == xid => return Ok(r),
                Message::Reply(r) => return Err(ClientError::UnexpectedXid(r.xid)),
            }
        }
    }

    /// Sends a ping (xid -2) and waits for its answer.
    pub async fn ping(&mut self) -> Result<Reply, ClientError> {
        self.send(PING_XID, &Request::Ping).await?;
        self.wait_reply(PING_XID).await
    }

    /// The next watch notification: a queued one, or the next frame, which
    /// must then be a notification.
    pub async fn next_event(&mut self) -> Result<WatcherEvent, ClientError> {
        match self.recv().await? {
            Message::Event { event, .. } => Ok(event),
            Message::Reply(r) => Err(ClientError::UnexpectedXid(r.xid)),
        }
    }

    /// Notifications received so far and not yet taken, without reading the
    /// socket.
    pub fn take_queued_events(&mut self) -> Vec<WatcherEvent> {
        self.events.drain(..).map(|(_, e)| e).collect()
    }

    /// Waits up to `wait` for the server to close the socket; true if it did
    /// (bytes that arrive meanwhile are read and dropped).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Closes the TCP connection without a closeSession: the session lives on
    /// on the server until its timeout, as after a network failure.
    pub async fn disconnect(mut self) {
        let _ = self.stream.shutdown().await;
    }

    async fn read_frame(&mut self) -> Result<BytesMut, ClientError> {
        loop {
            if let Some(f) = split_frame(&mut self.buf, self.max_frame)? {
                return Ok(f);
            }
            let n = tokio::time::timeout(self.io_timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| ClientError::Timeout(self.io_timeout))??;
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

//! Lightweight sessions on zk-wire's raw client, for the scale figures:
//! ten thousand sessions from one process, each one tokio task that pings
//! at a third of its negotiated timeout (as the Java client does) and
//! sends what it is told, pipelined; and a pipelined write driver that keeps
//! a fixed number of requests in flight per connection, or paces them.
//!
//! zookeeper-async would cost a full client (threads of state, its own
//! reconnect logic) per session; here a session is a socket, an 8 KiB
//! buffer and one task.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zk_wire::client::{Client, ConnectOptions, Message, Reply};
use zk_wire::consts::{perms, CreateMode, OpCode, PING_XID};
use zk_wire::frame::{finish_frame, start_frame};
use zk_wire::records::{Acl, CreateTtlRequest, Id, RequestHeader, SetDataRequest};
use zk_wire::{Jute, Request};

use crate::ops::{histogram, record};

/// `world:anyone` with every permission.
pub fn open_acl() -> Vec<Acl> {
    vec![Acl { perms: perms::ALL, id: Id { scheme: "world".into(), id: "anyone".into() } }]
}

pub fn create(path: &str, data: &[u8], mode: CreateMode) -> Request {
    Request::Create(
        OpCode::Create,
        CreateTtlRequest {
            path: path.into(),
            data: Some(data.to_vec()),
            acl: open_acl(),
            flags: mode.as_i32(),
            ttl: 0,
        },
    )
}

pub fn set_data(path: &str, data: &[u8]) -> Request {
    Request::SetData(SetDataRequest { path: path.into(), data: Some(data.to_vec()), version: -1 })
}

/// A watch notification, stamped when the session's task read it.
#[derive(Debug)]
pub struct Event {
    pub path: String,
    pub event_type: i32,
    pub at: Instant,
}

/// Where a batch's replies go, all at once.
type Replies = oneshot::Sender<Result<Vec<Reply>>>;

enum Cmd {
    Batch(Vec<Request>, Replies),
    Close(oneshot::Sender<()>),
}

/// A session kept alive by its own task. Dropping it (or [`Session::kill`])
/// closes the socket without a closeSession: the session lives on in the
/// server until it expires.
pub struct Session {
    tx: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
    /// When the task last wrote to the socket: the server's session
    /// deadline is its timeout after it read that.
    last_sent: Arc<Mutex<Instant>>,
}

/// One frame per request, concatenated, so a batch costs one write.
fn encode(reqs: &[Request], first_xid: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(reqs.len() * 64);
    for (i, r) in reqs.iter().enumerate() {
        let at = start_frame(&mut out);
        RequestHeader { xid: first_xid + i as i32, op: r.op_code().as_i32() }.write(&mut out);
        r.write_body(&mut out);
        finish_frame(&mut out, at);
    }
    out
}

impl Session {
    /// Connects, asks for `timeout_ms`, and starts the session's task.
    /// Notifications go to `events`, if given.
    pub async fn open(addr: &str, timeout_ms: i32, events: Option<mpsc::UnboundedSender<Event>>) -> Result<Session> {
        let opts = ConnectOptions { timeout_ms, io_timeout: Duration::from_secs(60), ..ConnectOptions::default() };
        let mut client = Client::connect(addr, opts).await.map_err(|e| anyhow!("connect to {addr}: {e}"))?;
        let negotiated = client.handshake().time_out;
        if negotiated <= 0 {
            bail!("{addr} refused the session");
        }
        // Reads wait for pings' answers at most; a long bound so an idle
        // session's read is never the thing that times out.
        client.set_io_timeout(Duration::from_secs(3600));
        let (tx, rx) = mpsc::unbounded_channel();
        let period = Duration::from_millis(negotiated as u64 / 3);
        let last_sent = Arc::new(Mutex::new(Instant::now()));
        let task = tokio::spawn(run(client, rx, period, events, last_sent.clone()));
        Ok(Session { tx, task, last_sent })
    }

    /// Sends `reqs` pipelined in one write and waits for all their replies.
    pub async fn batch(&self, reqs: Vec<Request>) -> Result<Vec<Reply>> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Cmd::Batch(reqs, done)).map_err(|_| anyhow!("session task ended"))?;
        rx.await.map_err(|_| anyhow!("session task ended"))?
    }

    /// One request; its reply, which must be ZOK.
    pub async fn ok(&self, req: Request) -> Result<Reply> {
        let r = self.batch(vec![req]).await?.pop().context("no reply")?;
        if r.err != 0 {
            bail!("error {} from the server", r.err);
        }
        Ok(r)
    }

    /// closeSession, and waits for its answer (or the socket to close).
    pub async fn close(self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
        }
        self.task.abort();
    }

    /// Drops the socket at once, without closeSession; returns when the
    /// session last wrote to it.
    pub fn kill(self) -> Instant {
        self.task.abort();
        *self.last_sent.lock()
    }
}

async fn run(
    mut client: Client,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    period: Duration,
    events: Option<mpsc::UnboundedSender<Event>>,
    last_sent: Arc<Mutex<Instant>>,
) {
    let mut next_ping = Instant::now() + period;
    let mut xid = 1i32;
    // The batch being answered: replies so far, how many are due, who waits.
    let mut pending: Option<(Vec<Reply>, usize, Replies)> = None;
    let mut closing: Option<(i32, oneshot::Sender<()>)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_ping) => {
                next_ping += period;
                if client.send(PING_XID, &Request::Ping).await.is_err() {
                    break;
                }
                *last_sent.lock() = Instant::now();
            }
            cmd = rx.recv(), if pending.is_none() && closing.is_none() => match cmd {
                None => break,
                Some(Cmd::Batch(reqs, done)) => {
                    if reqs.is_empty() {
                        let _ = done.send(Ok(vec![]));
                        continue;
                    }
                    let bytes = encode(&reqs, xid);
                    for (i, r) in reqs.iter().enumerate() {
                        client.expect_reply(xid + i as i32, r.op_code());
                    }
                    xid += reqs.len() as i32;
                    if let Err(e) = client.send_raw(&bytes).await {
                        let _ = done.send(Err(anyhow!("send: {e}")));
                        break;
                    }
                    *last_sent.lock() = Instant::now();
                    pending = Some((Vec::with_capacity(reqs.len()), reqs.len(), done));
                }
                Some(Cmd::Close(done)) => {
                    if client.send(xid, &Request::CloseSession).await.is_err() {
                        let _ = done.send(());
                        break;
                    }
                    closing = Some((xid, done));
                }
            },
            msg = client.recv() => match msg {
                Ok(Message::Event { event, .. }) => {
                    if let Some(tx) = &events {
                        let _ = tx.send(Event { path: event.path, event_type: event.event_type, at: Instant::now() });
                    }
                }
                Ok(Message::Reply(r)) if r.xid == PING_XID => {}
                Ok(Message::Reply(r)) => {
                    if let Some((x, _)) = &closing {
                        if r.xid == *x {
                            if let Some((_, done)) = closing.take() {
                                let _ = done.send(());
                            }
                            break;
                        }
                    }
                    if let Some((replies, due, _)) = pending.as_mut() {
                        replies.push(r);
                        if replies.len() == *due {
                            if let Some((replies, _, done)) = pending.take() {
                                let _ = done.send(Ok(replies));
                            }
                        }
                    }
                }
                Err(e) => {
                    if let Some((_, _, done)) = pending.take() {
                        let _ = done.send(Err(anyhow!("recv: {e}")));
                    }
                    break;
                }
            },
        }
    }
}

/// What [`drive`] measured over all its connections.
pub struct Driven {
    pub ops: u64,
    pub errors: u64,
    /// Connections the server closed (or that failed) before the end.
    pub disconnected: u64,
    /// Requests sent and never answered.
    pub unanswered: u64,
    pub latency: Histogram<u64>,
    /// From the first send to the last reply (drain included).
    pub elapsed: Duration,
    /// Most requests in flight at once, over all connections (sum of each
    /// connection's peak).
    pub peak_in_flight: u64,
}

/// setData of `size` bytes on one node per connection (`{base}/c{i}`,
/// which must exist), `window` in flight per connection, for `secs`. With
/// `rate` (requests/s per connection) the sends are paced open-loop and
/// each latency counts from the moment its request was due, so a server
/// that falls behind shows it in the latency rather than in a slower
/// client; `window` then only caps what one connection will queue.
pub async fn drive(
    addr: &str,
    base: &str,
    conns: usize,
    window: usize,
    rate: Option<f64>,
    size: usize,
    secs: f64,
) -> Result<Driven> {
    let mut clients = Vec::new();
    for _ in 0..conns {
        let opts =
            ConnectOptions { timeout_ms: 30_000, io_timeout: Duration::from_secs(60), ..ConnectOptions::default() };
        clients.push(Client::connect(addr, opts).await.map_err(|e| anyhow!("connect: {e}"))?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let path = format!("{base}/c{i}");
        let data = vec![b'o'; size];
        tasks.push(tokio::spawn(async move {
            let req = set_data(&path, &data);
            let mut h = histogram();
            let (mut ops, mut errors, mut peak) = (0u64, 0u64, 0u64);
            let mut in_flight: VecDeque<(i32, Instant)> = VecDeque::new();
            let mut xid = 1i32;
            let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
            // Connections start spread over one interval, not in lockstep.
            let mut next_due = started + interval.map(|d| d.mul_f64(i as f64 / conns as f64)).unwrap_or_default();
            let mut disconnected = false;
            loop {
                let now = Instant::now();
                // Send what is due, up to the window, in one write.
                let mut burst = Vec::new();
                while now < deadline && in_flight.len() + burst.len() < window {
                    let due = match interval {
                        Some(d) if next_due <= now => {
                            let due = next_due;
                            next_due += d;
                            due
                        }
                        Some(_) => break,
                        None => now,
                    };
                    burst.push(due);
                }
                if !burst.is_empty() {
                    let reqs = vec![req.clone(); burst.len()];
                    let bytes = encode(&reqs, xid);
                    for (k, due) in burst.into_iter().enumerate() {
                        c.expect_reply(xid + k as i32, OpCode::SetData);
                        in_flight.push_back((xid + k as i32, due));
                    }
                    xid += reqs.len() as i32;
                    peak = peak.max(in_flight.len() as u64);
                    if c.send_raw(&bytes).await.is_err() {
                        disconnected = true;
                        break;
                    }
                }
                if in_flight.is_empty() && Instant::now() >= deadline {
                    break;
                }
                let wake = match interval {
                    Some(_) if Instant::now() < deadline && in_flight.len() < window => next_due,
                    _ => Instant::now() + Duration::from_secs(3600),
                };
                if in_flight.is_empty() {
                    tokio::time::sleep_until(wake).await;
                    continue;
                }
                tokio::select! {
                    m = c.recv() => match m {
                        Ok(Message::Reply(r)) => {
                            // Replies come back in request order on a connection.
                            match in_flight.pop_front() {
                                Some((x, due)) if x == r.xid => {
                                    if r.err == 0 {
                                        ops += 1;
                                        record(&mut h, due.elapsed());
                                    } else {
                                        errors += 1;
                                    }
                                }
                                _ => {
                                    disconnected = true;
                                    break;
                                }
                            }
                        }
                        Ok(Message::Event { .. }) => {}
                        Err(_) => {
                            disconnected = true;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(wake) => {}
                }
            }
            (ops, errors, disconnected, in_flight.len() as u64, peak, h)
        }));
    }
    let mut out = Driven {
        ops: 0,
        errors: 0,
        disconnected: 0,
        unanswered: 0,
        latency: histogram(),
        elapsed: Duration::ZERO,
        peak_in_flight: 0,
    };
    for t in tasks {
        let (ops, errors, disconnected, unanswered, peak, h) = t.await?;
        out.ops += ops;
        out.errors += errors;
        out.disconnected += u64::from(disconnected);
        out.unanswered += unanswered;
        out.peak_in_flight += peak;
        out.latency.add(h).map_err(|e| anyhow!("{e}"))?;
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// Sends `count` requests, `make(i)` for i in 0..count, over `conns`
/// connections (each a contiguous share) with `window` in flight on each;
/// every reply must be ZOK. Returns the time from the first send to the
/// last reply. Requests are made as they are sent, so millions of them
/// never sit in memory at once.
pub async fn pipelined<F>(addr: &str, conns: usize, window: usize, count: usize, make: F) -> Result<Duration>
where
    F: Fn(usize) -> Request + Send + Sync + 'static,
{
    let make = std::sync::Arc::new(make);
    let per = count.div_ceil(conns.max(1)).max(1);
    let mut clients = Vec::new();
    for _ in 0..count.div_ceil(per) {
        let opts =
            ConnectOptions { timeout_ms: 30_000, io_timeout: Duration::from_secs(120), ..ConnectOptions::default() };
        clients.push(Client::connect(addr, opts).await.map_err(|e| anyhow!("connect: {e}"))?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, mut c) in clients.into_iter().enumerate() {
        let (from, to) = (k * per, ((k + 1) * per).min(count));
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut answered, mut xid) = (from, from, 1i32);
            while answered < to {
                // Top the window up in one write once half of it is free.
                if sent < to && sent - answered <= window / 2 {
                    let upto = (answered + window).min(to);
                    let reqs: Vec<Request> = (sent..upto).map(|i| make(i)).collect();
                    let bytes = encode(&reqs, xid);
                    for r in &reqs {
                        c.expect_reply(xid, r.op_code());
                        xid += 1;
                    }
                    sent = upto;
                    c.send_raw(&bytes).await.map_err(|e| anyhow!("send: {e}"))?;
                }
                match c.recv().await.map_err(|e| anyhow!("recv: {e}"))? {
                    Message::Reply(r) if r.err != 0 => bail!("error {} on xid {}", r.err, r.xid),
                    Message::Reply(_) => answered += 1,
                    Message::Event { .. } => {}
                }
            }
            let _ = c.call(&Request::CloseSession).await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

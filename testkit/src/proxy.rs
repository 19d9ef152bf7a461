//! A TCP proxy between a ZooKeeper client and a server, for fault drills.
//!
//! It reads the handshake as it passes (the first frame each way) to learn
//! each connection's session id and password, which clients such as
//! zookeeper-async do not expose. With them it can:
//!
//! - [`ZkProxy::expire_session`]: expire a session *the ZooKeeper way*:
//!   cut the client off, open a second connection with the same session id
//!   and password, close the session from there, let the client back. The server ends the session (deleting
//!   its ephemerals, firing watches) exactly as on a timeout, and the
//!   original client learns it is expired when it next reconnects. This
//!   works against Apache ZooKeeper and the coordinator alike.
//! - [`ZkProxy::cut`]: drop every connection and refuse new ones (a network
//!   partition between the client and the server) until
//!   [`ZkProxy::restore`].
//! - [`ZkProxy::lose_next_reply`]: let the next request through but drop
//!   its reply with the connection: the server applied it, the client sees
//!   `ConnectionLoss` (what a leader's death does to a request in flight).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use zk_wire::client::{Client, ConnectOptions};
use zk_wire::records::ConnectResponse;
use zk_wire::{Jute, Request};

#[derive(Default)]
struct Shared {
    /// Sessions seen in handshakes, newest last: (id, password).
    sessions: Vec<(i64, Vec<u8>)>,
    /// Tasks piping live connections.
    pipes: Vec<JoinHandle<()>>,
    cut: bool,
    /// Drop the next reply (to a request, not a ping or a watch event).
    lose_next_reply: bool,
}

pub struct ZkProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    accept: JoinHandle<()>,
}

impl ZkProxy {
    /// Listens on a loopback port and forwards to `upstream`. Call from
    /// within a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> ZkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.lock().cut {
                    drop(client); // refused: the partition is in place
                    continue;
                }
                let s2 = s.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pipe(client, server, s2).await;
                    }
                });
                let mut g = s.lock();
                g.pipes.retain(|p| !p.is_finished());
                g.pipes.push(pipe);
            }
        });
        ZkProxy { addr, upstream, shared, accept }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// The most recent session seen through the proxy.
    pub fn last_session(&self) -> Option<i64> {
        self.shared.lock().sessions.last().map(|s| s.0)
    }

    /// Expires the most recent session seen through the proxy, as
    /// ZooKeeper's own test suites do. Panics (fails the test) if none was
    /// seen or the server refuses.
    pub async fn expire_session(&self) {
        let (id, passwd) = self.shared.lock().sessions.last().cloned().expect("no session went through the proxy");
        // Hold the client off while we do it: a session moves to whichever
        // connection handshakes last, and a client reconnecting at once
        // would take it back before our close arrives. (This is also how
        // expiry happens for real: the client cannot reach the server.)
        self.cut();
        let opts = ConnectOptions { session_id: id, passwd, timeout_ms: 30_000, ..ConnectOptions::default() };
        let mut c = Client::connect(self.upstream, opts).await.expect("second connection for the session");
        assert!(c.handshake().time_out > 0, "session {id:#x} is already expired");
        let _ = c.call(&Request::CloseSession).await;
        // The server has ended the session once it answered (or closed).
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.restore();
    }

    /// Drops every connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        let mut g = self.shared.lock();
        g.cut = true;
        for p in g.pipes.drain(..) {
            p.abort();
        }
    }

    pub fn restore(&self) {
        self.shared.lock().cut = false;
    }

    /// The next reply to a request is not forwarded: its connection is
    /// closed instead, after the server has applied the request.
    pub fn lose_next_reply(&self) {
        self.shared.lock().lose_next_reply = true;
    }
}

impl Drop for ZkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for p in self.shared.lock().pipes.drain(..) {
            p.abort();
        }
    }
}

/// Reads one length-prefixed frame, returning it with its prefix.
async fn frame(s: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let n = i32::from_be_bytes(len);
    if !(0..=16 * 1024 * 1024).contains(&n) {
        return None;
    }
    let mut out = len.to_vec();
    out.resize(4 + n as usize, 0);
    s.read_exact(&mut out[4..]).await.ok()?;
    Some(out)
}

async fn pipe(mut client: TcpStream, mut server: TcpStream, shared: Arc<Mutex<Shared>>) {
    // The handshake, one frame each way, read on its way through.
    let Some(req) = frame(&mut client).await else { return };
    if server.write_all(&req).await.is_err() {
        return;
    }
    let Some(resp) = frame(&mut server).await else { return };
    if let Ok(r) = ConnectResponse::read(&mut zk_wire::Reader::new(&resp[4..])) {
        if r.time_out > 0 {
            shared.lock().sessions.push((r.session_id, r.passwd));
        }
    }
    if client.write_all(&resp).await.is_err() {
        return;
    }
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = tokio::io::copy(&mut client_rx, &mut server_tx);
    // Replies frame by frame, so one can be lost on purpose.
    let down = async {
        while let Some(f) = frame(&mut server_rx).await {
            // xid > 0: a reply to a request (-1 is a watch event, -2 a ping).
            let xid = f.get(4..8).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
            if xid > 0 && std::mem::take(&mut shared.lock().lose_next_reply) {
                return;
            }
            if client_tx.write_all(&f).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

//! What happens to sessions: the handshake that opens or reattaches one,
//! and its end ([`close_session`], whether the client asked, the admin API
//! did, or [`expiry`](super::expiry) found it silent past its deadline).
//! [`crate::session`] keeps the table, the passwords and the deadlines
//! (ZooKeeper's `SessionTracker`); this is the session half of ZooKeeper's
//! `ZooKeeperServer`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use zk_wire::records::{ConnectRequest, ConnectResponse, Id};

use crate::clients::{Answer, Client, ConnShared};
use crate::committer::Proposal;
use crate::core::Core;
use crate::frames::{connect_frame, reply};
use crate::session::SessionId;
use crate::txn::Txn;

/// How a handshake ended.
pub(crate) enum Handshake {
    Accepted(Client),
    /// The session is unknown, expired, closing or the password is wrong:
    /// the refusal (timeout 0, session 0) was queued; close after it. Every
    /// `Refused` comes from [`refuse`], which queues it.
    Refused,
    /// The client has seen a newer zxid than ours; ZooKeeper drops such a
    /// connection without a reply, so the client tries another server.
    Dropped,
}

/// A connection's first request: opens a session, or reattaches the one
/// the client names if it is live and the password matches.
pub(crate) fn handshake(core: &Core, conn: &Arc<ConnShared>, req: &ConnectRequest) -> Handshake {
    let last_zxid = core.last_zxid();
    if req.last_zxid_seen > last_zxid {
        tracing::info!(
            peer = %conn.peer,
            client_zxid = format!("{:#x}", req.last_zxid_seen),
            our_zxid = format!("{last_zxid:#x}"),
            "refusing a client that has seen a newer zxid than ours"
        );
        return Handshake::Dropped;
    }
    // The config checks both bounds fit an i32 and are ordered; an
    // embedder's Config is held to it here too, without a panic.
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    let min = ms(core.config.min_session_timeout);
    let timeout_ms = req.time_out.clamp(min, ms(core.config.max_session_timeout).max(min));
    let timeout = Duration::from_millis(timeout_ms as u64);

    let session_id = if req.session_id == 0 {
        core.create_session(|| core.sessions.lock().open(timeout), timeout_ms)
    } else {
        let mut sessions = core.sessions.lock();
        let password = sessions.password(req.session_id);
        let valid =
            req.passwd.as_slice() == password.as_slice() && sessions.get(req.session_id).is_some_and(|s| !s.closing);
        if !valid {
            drop(sessions);
            tracing::info!(peer = %conn.peer, session = %SessionId(req.session_id), "refusing reconnect: session expired or wrong password");
            return refuse(conn, req);
        }
        let previous = sessions.get_mut(req.session_id).and_then(|s| {
            s.timeout = timeout;
            // From here on, requests the old connection already read
            // are refused by the committer (SessionMoved).
            s.live.attach(conn.id);
            s.conn.take()
        });
        drop(sessions);
        // A session is served by one connection at a time: the old one,
        // if the client left it half-open, is closed.
        if let Some(old) = previous.and_then(|id| core.conns.get(id)) {
            tracing::info!(session = %SessionId(req.session_id), old = %old.peer, new = %conn.peer, "session moved to a new connection");
            old.close();
        }
        req.session_id
    };
    attach(core, conn, req, session_id, timeout_ms)
}

/// Makes `conn` the one serving `session_id`, which was valid a moment ago,
/// and queues the handshake's reply.
fn attach(core: &Core, conn: &Arc<ConnShared>, req: &ConnectRequest, session_id: i64, timeout_ms: i32) -> Handshake {
    let mut sessions = core.sessions.lock();
    let password = sessions.password(session_id);
    let Some(session) = sessions.get_mut(session_id) else {
        // Closed since it was checked (it expired, or the admin API or
        // another connection closed it), so it is refused as if it had
        // been gone already, with the same reply.
        drop(sessions);
        tracing::info!(peer = %conn.peer, session = %SessionId(session_id), "refusing a session that closed during its handshake");
        return refuse(conn, req);
    };
    session.conn = Some(conn.id);
    session.live.attach(conn.id);
    let live = session.live.clone();
    live.touch();
    drop(sessions);
    conn.session_id.store(session_id, Ordering::Relaxed);
    conn.timeout_ms.store(timeout_ms as u64, Ordering::Relaxed);
    let reply = ConnectResponse {
        protocol_version: 0,
        time_out: timeout_ms,
        session_id,
        passwd: password.to_vec(),
        // Mirrors the client: a client that sent no readOnly byte gets none.
        read_only: req.read_only.map(|_| false),
    };
    // The session must be on disk before the client may rely on it.
    let zxid = core.last_zxid();
    conn.send(connect_frame(&reply), zxid);
    tracing::debug!(session = %SessionId(session_id), peer = %conn.peer, timeout_ms, "session established");
    let auth = vec![Id { scheme: "ip".into(), id: conn.peer.ip().to_string() }];
    core.watches.lock().set_auth(conn.id, &auth);
    let request = Answer { started: std::time::Instant::now(), kind: crate::stats::RequestKind::Read };
    Handshake::Accepted(Client { conn: conn.clone(), session_id, auth, live, request, in_process: false.into() })
}

/// Refuses a handshake as ZooKeeper does: a reply with timeout 0, session
/// 0 and a zeroed password, then the connection closes (the caller closes
/// it after `Refused`). The reply is what tells a client its session is
/// gone: ZooKeeper's clients raise SessionExpired on a timeout of 0, while
/// a connection closed without a reply looks like a network failure, and
/// they would retry the dead session on the next server.
///
/// ZooKeeper 3.8: `ZooKeeperServer.reopenSession` (wrong password) and
/// `revalidateSession` (unknown, expired or closing session) both end in
/// `finishSessionInit(cnxn, false)`, which sends this `ConnectResponse`
/// and then `closeConn`.
fn refuse(conn: &ConnShared, req: &ConnectRequest) -> Handshake {
    let reply = ConnectResponse {
        protocol_version: 0,
        time_out: 0,
        session_id: 0,
        passwd: vec![0; 16],
        // Mirrors the client, as an accepted handshake's reply does.
        read_only: req.read_only.map(|_| false),
    };
    conn.send(connect_frame(&reply), 0);
    Handshake::Refused
}

/// Ends a session: deletes its ephemerals (firing their watches), and
/// closes the connection serving it. `requester` is set when the client
/// asked (closeSession), and gets the reply.
pub fn close_session(core: &Core, session_id: i64, requester: Option<(&Client, i32)>) {
    let conn_id = {
        let mut sessions = core.sessions.lock();
        match sessions.get_mut(session_id) {
            Some(s) if !s.closing => {
                s.closing = true;
                // Before the closeSession txn is ordered: every txn
                // ordered after it sees the session ended.
                s.live.end();
                s.conn
            }
            _ => return,
        }
    };
    core.commit(
        Proposal::server(session_id, requester.map_or(0, |(_, x)| x)),
        |_, _| Txn::CloseSession,
        |zxid, _| {
            if let Some((client, xid)) = requester {
                client.reply(reply(xid, zxid, Ok(&zk_wire::Response::Empty)), zxid);
            }
        },
    );
    core.sessions.lock().remove(session_id);
    if let Some(c) = conn_id.and_then(|id| core.conns.get(id)) {
        c.close();
    }
}

#[cfg(test)]
mod tests {
    use zk_wire::codec::{Jute, Reader};

    use super::*;
    use crate::clients::Outbound;
    use crate::config::Config;

    /// The reply queued on `conn`, decoded.
    fn queued_reply(conn: &ConnShared) -> ConnectResponse {
        let Some(Outbound::Frame(frame)) = conn.outbox.try_next() else { panic!("no reply was queued") };
        // Past the 4-byte length prefix.
        ConnectResponse::read(&mut Reader::new(&frame.bytes[4..])).expect("a ConnectResponse")
    }

    fn setup() -> (Core, Arc<ConnShared>) {
        let core = Core::open(Config::for_tests()).expect("an in-memory core");
        let conn = core.conns.register("127.0.0.1:4000".parse().expect("an address")).expect("under the limit");
        (core, conn)
    }

    fn resume(session_id: i64) -> ConnectRequest {
        ConnectRequest {
            time_out: 30_000,
            session_id,
            passwd: vec![0; 16],
            read_only: Some(false),
            ..Default::default()
        }
    }

    /// ZooKeeper answers a reconnect to a session it does not know (or
    /// with a wrong password) with timeout 0 and session 0 before closing,
    /// which is how a client learns its session expired.
    #[test]
    fn a_refused_reconnect_is_answered() {
        let (core, conn) = setup();
        assert!(matches!(handshake(&core, &conn, &resume(0x7777)), Handshake::Refused));
        let reply = queued_reply(&conn);
        assert_eq!((reply.time_out, reply.session_id, reply.passwd), (0, 0, vec![0; 16]));
        assert_eq!(reply.read_only, Some(false), "mirrors the client's readOnly byte");
    }

    /// The session can close between the check and the attach (expiry,
    /// the admin API, another connection's closeSession). That refusal
    /// used to close the connection with no reply, unlike ZooKeeper and
    /// unlike `Handshake::Refused`'s promise: the client saw a network
    /// error instead of an expired session.
    #[test]
    fn a_session_that_closes_during_its_handshake_is_refused_with_a_reply() {
        let (core, conn) = setup();
        let gone = 0x7777; // not in the table, as after a close
        assert!(matches!(attach(&core, &conn, &resume(gone), gone, 30_000), Handshake::Refused));
        let reply = queued_reply(&conn);
        assert_eq!((reply.time_out, reply.session_id), (0, 0));
    }
}

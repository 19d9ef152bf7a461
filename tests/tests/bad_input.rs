//! Bad input on the client port: each abuse is sent on one connection, to
//! both servers, and the outcome (a reply and its error code, the
//! connection closed, or silence while the server waits for the rest of a
//! frame) must be the same as Apache ZooKeeper's. After every abuse a
//! second session, connected to the same server all along, must still read
//! and write: bad input costs the sender its connection, never anyone else.

#[path = "diff_harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use e2e_tests::requests::new_session_handshake;
use harness::{create, get_data, set_data, within};
use testkit::Server;
use tokio::io::AsyncWriteExt;
use zk_wire::client::{Client, ClientError, ConnectOptions, Message};
use zk_wire::consts::{CreateMode, OpCode, DEFAULT_MAX_BUFFER};
use zk_wire::records::{ConnectRequest, RequestHeader};
use zk_wire::Jute;

/// How long a server may take to answer or close before we call it silent.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Where in the connection's life the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// Instead of the handshake.
    BeforeHandshake,
    /// After a successful handshake.
    InSession,
}

struct Abuse {
    name: &'static str,
    when: When,
    bytes: Vec<u8>,
    /// The opcode to decode a reply with, if one comes.
    op: OpCode,
    /// The bytes read as an unknown opcode: the coordinator answers as
    /// ZooKeeper does but keeps the connection, where ZooKeeper closes it
    /// (the deliberate difference pinned in differential.rs).
    unknown_op: bool,
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn request(xid: i32, op: i32, body: &[u8]) -> Vec<u8> {
    let mut b = RequestHeader { xid, op }.to_bytes();
    b.extend_from_slice(body);
    frame(&b)
}

fn create_body(path: &str, data_len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    path.to_string().write(&mut b);
    Some(vec![b'x'; data_len]).write(&mut b);
    harness::open_acl().write(&mut b);
    0i32.write(&mut b);
    b
}

/// A create request whose frame body is exactly `len` bytes (the data fills it).
fn create_frame_of(len: usize) -> Vec<u8> {
    let path = format!("/{}", testkit::unique("bad-input-big"));
    let overhead = 8 + create_body(&path, 0).len();
    request(5, OpCode::Create.as_i32(), &create_body(&path, len - overhead))
}

fn abuses() -> Vec<Abuse> {
    let handshake = new_session_handshake().to_bytes();
    let good_create = create_body("/bad-input-never", 1);
    let mut abuses = vec![
        Abuse {
            name: "http request instead of a handshake",
            when: When::BeforeHandshake,
            bytes: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "negative length before handshake",
            when: When::BeforeHandshake,
            bytes: (-5i32).to_be_bytes().to_vec(),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "length over jute.maxbuffer before handshake",
            when: When::BeforeHandshake,
            bytes: ((DEFAULT_MAX_BUFFER + 1) as i32).to_be_bytes().to_vec(),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "truncated handshake",
            when: When::BeforeHandshake,
            bytes: frame(&handshake[..10]),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "handshake with a hostile password length",
            when: When::BeforeHandshake,
            bytes: frame(&{
                let mut h = handshake[..24].to_vec();
                h.extend_from_slice(&i32::MAX.to_be_bytes());
                h
            }),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            // ZooKeeper refuses a client that has seen a zxid it has not
            // (it must have talked to a server further ahead) by closing.
            name: "handshake from a client that has seen a newer zxid",
            when: When::BeforeHandshake,
            bytes: frame(&ConnectRequest { last_zxid_seen: i64::MAX / 2, ..new_session_handshake() }.to_bytes()),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "empty handshake frame",
            when: When::BeforeHandshake,
            bytes: frame(&[]),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "half a handshake, then silence",
            when: When::BeforeHandshake,
            bytes: frame(&handshake)[..20].to_vec(),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "negative length in session",
            when: When::InSession,
            bytes: (-1i32).to_be_bytes().to_vec(),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "length over jute.maxbuffer in session",
            when: When::InSession,
            bytes: (1i32 << 30).to_be_bytes().to_vec(),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "frame of exactly jute.maxbuffer",
            when: When::InSession,
            bytes: create_frame_of(DEFAULT_MAX_BUFFER),
            op: OpCode::Create,
            unknown_op: false,
        },
        Abuse {
            name: "frame one byte over jute.maxbuffer",
            when: When::InSession,
            bytes: create_frame_of(DEFAULT_MAX_BUFFER + 1),
            op: OpCode::Create,
            unknown_op: false,
        },
        Abuse {
            name: "empty request frame",
            when: When::InSession,
            bytes: frame(&[]),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "request header cut short",
            when: When::InSession,
            bytes: frame(&[0, 0, 0, 5, 0, 0]),
            op: OpCode::Error,
            unknown_op: false,
        },
        Abuse {
            name: "create body cut short",
            when: When::InSession,
            bytes: request(5, OpCode::Create.as_i32(), &good_create[..good_create.len() - 3]),
            op: OpCode::Create,
            unknown_op: false,
        },
        Abuse {
            name: "create with a hostile acl count",
            when: When::InSession,
            bytes: request(5, OpCode::Create.as_i32(), &{
                let mut b = Vec::new();
                "/bad-input-acl".to_string().write(&mut b);
                Some(vec![1u8]).write(&mut b);
                1_000_000_000i32.write(&mut b);
                b
            }),
            op: OpCode::Create,
            unknown_op: false,
        },
        Abuse {
            name: "getData with a string longer than the frame",
            when: When::InSession,
            bytes: request(5, OpCode::GetData.as_i32(), &{
                let mut b = 1000i32.to_be_bytes().to_vec();
                b.extend_from_slice(b"/short");
                b
            }),
            op: OpCode::GetData,
            unknown_op: false,
        },
        Abuse {
            name: "multi with a read inside",
            when: When::InSession,
            bytes: request(5, OpCode::Multi.as_i32(), &{
                let mut b = Vec::new();
                zk_wire::records::MultiHeader { op: OpCode::GetData.as_i32(), done: false, err: -1 }.write(&mut b);
                zk_wire::records::PathWatchRequest { path: "/".into(), watch: false }.write(&mut b);
                zk_wire::records::MultiHeader { op: -1, done: true, err: -1 }.write(&mut b);
                b
            }),
            op: OpCode::Multi,
            unknown_op: false,
        },
        Abuse {
            name: "multi without its end marker",
            when: When::InSession,
            bytes: request(5, OpCode::Multi.as_i32(), &{
                let mut b = Vec::new();
                zk_wire::records::MultiHeader { op: OpCode::Check.as_i32(), done: false, err: -1 }.write(&mut b);
                zk_wire::records::CheckVersionRequest { path: "/".into(), version: -1 }.write(&mut b);
                b
            }),
            op: OpCode::Multi,
            unknown_op: false,
        },
        Abuse {
            name: "half a request, then silence",
            when: When::InSession,
            bytes: request(5, OpCode::Create.as_i32(), &good_create)[..12].to_vec(),
            op: OpCode::Create,
            unknown_op: false,
        },
        Abuse {
            // Read as a request header: xid 0, opcode 0 (notification).
            name: "a second handshake in session",
            when: When::InSession,
            bytes: frame(&handshake),
            op: OpCode::Error,
            unknown_op: true,
        },
    ];
    // Trailing bytes after a complete record are tolerated (ZooKeeper reads
    // the record it expects and ignores the rest).
    let mut trailing = zk_wire::records::PathWatchRequest { path: "/".into(), watch: false }.to_bytes();
    trailing.extend_from_slice(b"junk");
    abuses.push(Abuse {
        name: "exists with trailing junk",
        when: When::InSession,
        bytes: request(5, OpCode::Exists.as_i32(), &trailing),
        op: OpCode::Exists,
        unknown_op: false,
    });
    abuses
}

/// What the server did with the abuse.
async fn outcome(addr: SocketAddr, abuse: &Abuse) -> String {
    let mut victim = match abuse.when {
        When::InSession => Some(Client::connect(addr, ConnectOptions::default()).await.expect("connect the victim")),
        When::BeforeHandshake => None,
    };
    let Some(c) = victim.as_mut() else {
        // Before the handshake there is no client yet: talk raw.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect raw");
        // The server may close before it has read everything (a bad
        // length is enough): a failed write is not the outcome, the read is.
        let _ = s.write_all(&abuse.bytes).await;
        return raw_outcome(&mut s).await;
    };
    c.expect_reply(5, abuse.op);
    let _ = c.send_raw(&abuse.bytes).await;
    c.set_io_timeout(ANSWER_WITHIN);
    match c.recv().await {
        Ok(Message::Reply(r)) => {
            let closed = c.closed_within(Duration::from_secs(1)).await;
            format!(
                "reply xid={} err={}{}",
                r.xid,
                harness::Norm::err(r.err),
                if closed { ", then closed" } else { "" }
            )
        }
        Ok(Message::Event { .. }) => "an unexpected watch event".into(),
        Err(ClientError::Closed) | Err(ClientError::Io(_)) => "closed".into(),
        Err(ClientError::Timeout(_)) => "silent (waits for more bytes)".into(),
        Err(e) => format!("undecodable answer: {e}"),
    }
}

async fn raw_outcome(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    match tokio::time::timeout(ANSWER_WITHIN, s.read_to_end(&mut buf)).await {
        Err(_) if buf.is_empty() => "silent (waits for more bytes)".into(),
        Err(_) => format!("answered {} bytes and kept the connection", buf.len()),
        Ok(_) if buf.is_empty() => "closed".into(),
        Ok(_) => format!("answered {} bytes, then closed", buf.len()),
    }
}

/// The bystander reads and writes its own node.
async fn bystander_works(c: &mut Client, path: &str, round: usize, server: Server, after: &str) {
    let data = format!("round-{round}");
    let r = c.call(&set_data(path, data.as_bytes(), -1)).await;
    assert!(matches!(&r, Ok(r) if r.err == 0), "{server:?}: bystander's write after `{after}`: {r:?}");
    let r = c
        .call(&get_data(path, false))
        .await
        .unwrap_or_else(|e| panic!("{server:?}: bystander's read after `{after}`: {e}"));
    match r.body {
        zk_wire::Response::GetData(d) => {
            assert_eq!(d.data.as_deref(), Some(data.as_bytes()), "{server:?} after `{after}`")
        }
        other => panic!("{server:?}: bystander read {other:?} after `{after}`"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_like_zookeeper_and_harms_no_one_else() {
    testkit::init_test_log();
    let mut table: Vec<(String, String, String)> = Vec::new();
    let abuses = abuses();
    let mut results: Vec<Vec<String>> = Vec::new();
    for server in Server::ALL {
        let running = server.start();
        let path = format!("/{}", testkit::unique("bystander"));
        let mut bystander =
            within("bystander connect", Client::connect(running.addr, ConnectOptions::default())).await.unwrap();
        let r = within("bystander create", bystander.call(&create(&path, b"", CreateMode::Ephemeral))).await.unwrap();
        assert_eq!(r.err, 0, "{server:?}: bystander's node");
        let mut outcomes = Vec::new();
        for (round, abuse) in abuses.iter().enumerate() {
            let o = within(abuse.name, outcome(running.addr, abuse)).await;
            within("bystander", bystander_works(&mut bystander, &path, round, server, abuse.name)).await;
            outcomes.push(o);
        }
        results.push(outcomes);
    }
    for (i, abuse) in abuses.iter().enumerate() {
        table.push((abuse.name.to_string(), results[0][i].clone(), results[1][i].clone()));
    }
    let differing: Vec<String> = table
        .iter()
        .zip(&abuses)
        .filter(|((_, ours, theirs), abuse)| {
            let expected = if abuse.unknown_op { theirs.trim_end_matches(", then closed") } else { theirs };
            ours != expected
        })
        .map(|(row, _)| row)
        .map(|(name, ours, theirs)| format!("{name}:\n    coordinator: {ours}\n    zookeeper:   {theirs}"))
        .collect();
    let all: Vec<String> = table.iter().map(|(n, o, _)| format!("{n}: {o}")).collect();
    assert!(
        differing.is_empty(),
        "bad input answered differently:\n{}\n\nall (coordinator):\n{}",
        differing.join("\n"),
        all.join("\n")
    );
}

/// Many abusive connections at once, while a session works: none of the
/// abuse reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_abuse_does_not_disturb_a_working_session() {
    for server in Server::ALL {
        let running = server.start();
        let addr = running.addr;
        within("concurrent abuse", async {
            let path = format!("/{}", testkit::unique("steady"));
            let mut worker = Client::connect(addr, ConnectOptions::default()).await.unwrap();
            assert_eq!(worker.call(&create(&path, b"", CreateMode::Ephemeral)).await.unwrap().err, 0);
            let abusers: Vec<_> =
                abuses().into_iter().map(|a| tokio::spawn(async move { outcome(addr, &a).await })).collect();
            for round in 0..20 {
                bystander_works(&mut worker, &path, round, server, "concurrent abuse").await;
            }
            for a in abusers {
                a.await.unwrap();
            }
            bystander_works(&mut worker, &path, 99, server, "all abuse").await;
        })
        .await;
    }
}

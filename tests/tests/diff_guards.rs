//! Differential tests of the guards a server keeps against clients that ask
//! for more than they may have: watch events on nodes the watcher may not
//! read, and TTL creates that ZooKeeper refuses. Same harness and rules as
//! `differential.rs`: both transcripts must match line for line.

#[path = "diff_harness.rs"]
mod harness;

use harness::*;
use zk_wire::client::{Client, ConnectOptions};
use zk_wire::consts::{perms, AddWatchMode, CreateMode, OpCode};
use zk_wire::records::*;
use zk_wire::{ErrorCode, Request};

fn acl(perms: i32, scheme: &str, id: &str) -> Acl {
    Acl { perms, id: Id { scheme: scheme.into(), id: id.into() } }
}

/// Open to its owner's identity alone (`auth`: whoever made it).
fn mine() -> Vec<Acl> {
    vec![acl(perms::ALL, "auth", "")]
}

/// Write-only for strangers: they may change the node but not read it.
fn write_only() -> Vec<Acl> {
    vec![acl(perms::WRITE, "world", "anyone"), acl(perms::ALL, "auth", "")]
}

/// Three sessions: the owner of the nodes, a stranger, and a friend
/// authenticated as the owner's identity (so `mine` lets it read).
async fn owner_stranger_friend(t: &mut Run) -> (Sess, Sess, Sess) {
    let mut owner = t.connect().await;
    let stranger = t.connect().await;
    let mut friend = t.connect().await;
    t.call(&mut owner, auth("digest", b"alice:secret")).await;
    t.call(&mut friend, auth("digest", b"alice:secret")).await;
    (owner, stranger, friend)
}

/// A watch is told of a change only when the watcher may READ the node the
/// event names, checked when the event is delivered (the fix of
/// CVE-2024-23944 in ZooKeeper 3.8.4, which Debian's 3.8 carries): a
/// recursive watch above a protected subtree must not leak the names and
/// changes of nodes whose getChildren/getData the watcher is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_only_what_the_watcher_may_read() {
    differential("watch-acl", async |t: &mut Run| {
        let (mut owner, mut stranger, mut friend) = owner_stranger_friend(t).await;
        t.call(&mut owner, create_acl(&t.p("secret"), b"", mine())).await;
        t.call(&mut owner, create_acl(&t.p("secret/closed"), b"", mine())).await;
        t.call(&mut owner, create(&t.p("secret/open"), b"", CreateMode::Persistent)).await;
        t.call(&mut owner, create_acl(&t.p("wo"), b"", write_only())).await;
        let add = |path: String, mode: AddWatchMode| Request::AddWatch(AddWatchRequest { path, mode: mode.as_i32() });
        for w in [&mut stranger, &mut friend] {
            t.call(w, add(t.p(""), AddWatchMode::PersistentRecursive)).await;
            t.call(w, add(t.p("secret"), AddWatchMode::Persistent)).await;
            t.call(w, add(t.p("wo"), AddWatchMode::Persistent)).await;
            t.call(w, get_children(&t.p("secret"), false)).await;
            // One-shot watches set by exists (which checks no ACL).
            t.call(w, exists(&t.p("secret/closed"), true)).await;
            t.call(w, exists(&t.p("secret/new"), true)).await;
        }
        t.call(&mut owner, set_data(&t.p("secret"), b"1", -1)).await;
        t.call(&mut owner, create_acl(&t.p("secret/new"), b"", mine())).await;
        t.call(&mut owner, create(&t.p("secret/pub"), b"", CreateMode::Persistent)).await;
        t.call(&mut owner, set_data(&t.p("secret/closed"), b"1", -1)).await;
        t.call(&mut owner, set_data(&t.p("secret/open"), b"1", -1)).await;
        t.call(&mut owner, delete(&t.p("secret/new"), -1)).await;
        t.call(&mut owner, delete(&t.p("secret/pub"), -1)).await;
        t.call(&mut stranger, set_data(&t.p("wo"), b"1", -1)).await;
        t.call(&mut owner, create_acl(&t.p("wo/c"), b"", mine())).await;
        t.events(&mut stranger).await;
        t.events(&mut friend).await;
        // The check is made when the event is delivered, with the ids the
        // connection holds then.
        t.call(&mut stranger, auth("digest", b"alice:secret")).await;
        t.call(&mut owner, set_data(&t.p("secret/closed"), b"2", -1)).await;
        t.call(&mut owner, delete(&t.p("secret/closed"), -1)).await;
        t.events(&mut stranger).await;
    })
    .await;
}

/// createTTL takes a TTL mode and a TTL in ZooKeeper's range (0 < ttl <=
/// 2^40 - 1 ms); anything else is refused before it can make a node whose
/// kind its mode does not say (an "ephemeral" that outlives its session as
/// a TTL node, or a TTL that wraps to zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ttl_validates_mode_and_range() {
    differential("ttl-args", async |t: &mut Run| {
        let mut s = t.connect().await;
        let max = (1i64 << 40) - 1;
        let cases: &[(OpCode, CreateMode, i64)] = &[
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, 1),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, max),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, max + 1),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, 1 << 48),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, i64::MAX),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, 0),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, -1),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, -(1 << 40)),
            (OpCode::CreateTtl, CreateMode::PersistentSequentialWithTtl, 100),
            (OpCode::CreateTtl, CreateMode::PersistentSequentialWithTtl, 0),
            // A non-TTL mode with a TTL (a negative one: see
            // `create_ttl_with_a_non_ttl_mode_is_refused`).
            (OpCode::CreateTtl, CreateMode::Persistent, 100),
            (OpCode::CreateTtl, CreateMode::Persistent, 0),
            (OpCode::CreateTtl, CreateMode::Ephemeral, 100),
            (OpCode::CreateTtl, CreateMode::EphemeralSequential, 1),
            (OpCode::CreateTtl, CreateMode::Container, 100),
            (OpCode::Create2, CreateMode::PersistentWithTtl, 0),
            (OpCode::CreateContainer, CreateMode::PersistentWithTtl, 0),
        ];
        for (i, &(op, mode, ttl)) in cases.iter().enumerate() {
            let path = t.p(&format!("n{i}"));
            let r = t.call(&mut s, create_req(op, &path, b"", mode, ttl)).await;
            if r.err == 0 {
                t.call(&mut s, exists(&path, false)).await;
            }
        }
        // The same inside a multi.
        let root = t.p("");
        let m = |i: usize, mode: CreateMode, ttl: i64| {
            zk_wire::request::MultiOp::Create(
                OpCode::CreateTtl,
                CreateTtlRequest {
                    path: format!("{root}/m{i}"),
                    data: None,
                    acl: open_acl(),
                    flags: mode.as_i32(),
                    ttl,
                },
            )
        };
        t.call(&mut s, Request::Multi(vec![m(1, CreateMode::PersistentWithTtl, 10)])).await;
        t.call(&mut s, Request::Multi(vec![m(2, CreateMode::Ephemeral, 5)])).await;
        t.call(&mut s, Request::Multi(vec![m(3, CreateMode::PersistentWithTtl, -1)])).await;
        t.call(&mut s, Request::Multi(vec![m(4, CreateMode::PersistentWithTtl, 1 << 40)])).await;
        // Inside a multi, createTTL with a non-TTL mode is read as a plain
        // create (or createContainer), its ttl ignored, even a negative one.
        t.call(&mut s, Request::Multi(vec![m(5, CreateMode::Persistent, -1)])).await;
        t.call(&mut s, Request::Multi(vec![m(6, CreateMode::Container, -(1 << 40))])).await;
        t.call(&mut s, Request::Multi(vec![m(7, CreateMode::EphemeralSequential, 7)])).await;
        for i in [2, 5, 6] {
            t.call(&mut s, exists(&t.p(&format!("m{i}")), false)).await;
        }
    })
    .await;
}

/// createTTL with a non-TTL mode and a negative TTL: ZooKeeper 3.8's
/// validation lets it through (a negative TTL is what a non-TTL create
/// carries) and applying the transaction then throws, which stops the whole
/// server (checked against Debian's 3.8: the process exits). The
/// coordinator refuses it with BadArguments, as ZooKeeper refuses the same
/// mode with a TTL >= 0, and makes no node: before, such a request made a
/// TTL node of an "ephemeral" (ttl -1 read as a 34-year TTL, outliving its
/// session) or a TTL of 0 (ttl -2^40). (Inside a multi the same op is a
/// plain create on both servers: see `create_ttl_validates_mode_and_range`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ttl_with_a_non_ttl_mode_is_refused() {
    let server = testkit::start_coordinator(testkit::CoordinatorConfig::for_tests());
    within("non-ttl createTTL", async {
        let mut c = Client::connect(server.addr, ConnectOptions::default()).await.unwrap();
        let root = format!("/{}", testkit::unique("ttl-mode"));
        assert_eq!(c.call(&create(&root, b"", CreateMode::Persistent)).await.unwrap().err, 0);
        for mode in
            [CreateMode::Persistent, CreateMode::Ephemeral, CreateMode::PersistentSequential, CreateMode::Container]
        {
            for ttl in [-1, -(1i64 << 40), i64::MIN] {
                let path = format!("{root}/n");
                let r = c.call(&create_req(OpCode::CreateTtl, &path, b"", mode, ttl)).await.unwrap();
                assert_eq!(r.err, ErrorCode::BadArguments.as_i32(), "{mode:?} ttl={ttl}");
            }
        }
        let r = c.call(&get_children(&root, false)).await.unwrap();
        assert!(matches!(&r.body, zk_wire::Response::Children(ch) if ch.children.is_empty()), "{r:?}");
    })
    .await;
}

/// With extended types off (`zookeeper.extendedTypesEnabled=false`), a TTL
/// mode is Unimplemented whatever the TTL, through create, createTTL or a
/// multi; createTTL with any other mode is BadArguments. These answers were
/// read from Debian's ZooKeeper 3.8 started with extended types off; the
/// shared oracle runs with them on, so this test holds the coordinator alone
/// to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ttl_is_refused_when_extended_types_are_off() {
    let config = testkit::CoordinatorConfig { extended_types: false, ..testkit::CoordinatorConfig::for_tests() };
    let server = testkit::start_coordinator(config);
    within("createTTL, extended types off", async {
        let mut c = Client::connect(server.addr, ConnectOptions::default()).await.unwrap();
        let path = format!("/{}", testkit::unique("ttl-off"));
        let cases: &[(OpCode, CreateMode, i64, ErrorCode)] = &[
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, 100, ErrorCode::Unimplemented),
            (OpCode::CreateTtl, CreateMode::PersistentSequentialWithTtl, 100, ErrorCode::Unimplemented),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, 0, ErrorCode::Unimplemented),
            (OpCode::CreateTtl, CreateMode::PersistentWithTtl, -1, ErrorCode::Unimplemented),
            (OpCode::Create2, CreateMode::PersistentWithTtl, 0, ErrorCode::Unimplemented),
            (OpCode::Create, CreateMode::PersistentWithTtl, 0, ErrorCode::Unimplemented),
            (OpCode::CreateTtl, CreateMode::Persistent, 100, ErrorCode::BadArguments),
            (OpCode::CreateTtl, CreateMode::Container, 100, ErrorCode::BadArguments),
            (OpCode::CreateTtl, CreateMode::Persistent, -1, ErrorCode::BadArguments),
            (OpCode::CreateTtl, CreateMode::Ephemeral, -1, ErrorCode::BadArguments),
        ];
        for &(op, mode, ttl, want) in cases {
            let r = c.call(&create_req(op, &path, b"", mode, ttl)).await.unwrap();
            assert_eq!(r.err, want.as_i32(), "{op:?} {mode:?} ttl={ttl}");
        }
        let r = c.call(&exists(&path, false)).await.unwrap();
        assert_eq!(r.err, ErrorCode::NoNode.as_i32(), "nothing was created");
    })
    .await;
}

/// setWatches after a reconnect fires at once for what changed while the
/// client was away (a node changed or deleted since the zxid the client
/// last saw, a watched absent node created). Unlike a live event, patched
/// ZooKeeper 3.8 checks no ACL for these: a client without READ is told
/// that a protected node changed, was created or lost a child, as it was
/// told by exists before; it learns no data, and names only the paths it
/// gave. The coordinator answers the same, so that a client that reconnects
/// never misses an event it would get from ZooKeeper. A watch re-armed on a
/// node that did not change fires later as a live event, READ checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_watches_replays_what_changed_as_zookeeper_does() {
    differential("setwatches-acl", async |t: &mut Run| {
        let (mut owner, mut stranger, mut friend) = owner_stranger_friend(t).await;
        t.call(&mut owner, create_acl(&t.p("secret"), b"", mine())).await;
        t.call(&mut owner, create_acl(&t.p("wo"), b"", write_only())).await;
        t.call(&mut owner, create(&t.p("open"), b"", CreateMode::Persistent)).await;
        t.call(&mut owner, create_acl(&t.p("gone"), b"", mine())).await;
        // Unchanged while the watchers were away: its watches are re-armed,
        // and what fires them later is a live event, filtered by READ.
        t.call(&mut owner, create_acl(&t.p("later"), b"", mine())).await;
        t.call(&mut owner, create(&t.p("later-open"), b"", CreateMode::Persistent)).await;
        // The last zxid the watchers saw before they went away.
        let before = t.call(&mut owner, set_data(&t.p("open"), b"0", -1)).await.zxid;
        t.call(&mut owner, set_data(&t.p("secret"), b"1", -1)).await;
        t.call(&mut owner, create_acl(&t.p("secret/c"), b"", mine())).await;
        t.call(&mut owner, set_data(&t.p("wo"), b"1", -1)).await;
        t.call(&mut owner, set_data(&t.p("open"), b"1", -1)).await;
        t.call(&mut owner, create_acl(&t.p("new"), b"", mine())).await;
        t.call(&mut owner, delete(&t.p("gone"), -1)).await;
        let nodes = ["secret", "wo", "open", "gone", "later", "later-open"].map(|n| t.p(n)).to_vec();
        let watches = |op: fn(SetWatches2) -> Request| {
            op(SetWatches2 {
                relative_zxid: before,
                data_watches: nodes.clone(),
                exist_watches: vec![t.p("new")],
                child_watches: nodes.clone(),
                persistent_watches: vec![],
                persistent_recursive_watches: vec![],
            })
        };
        let (old, new) = (watches(Request::SetWatches), watches(Request::SetWatches2));
        for w in [&mut stranger, &mut friend] {
            t.call(w, old.clone()).await;
            t.events(w).await;
            t.call(w, new.clone()).await;
            t.events(w).await;
        }
        for n in ["later", "later-open"] {
            t.call(&mut owner, set_data(&t.p(n), b"1", -1)).await;
            t.call(&mut owner, create(&t.p(&format!("{n}/c")), b"", CreateMode::Persistent)).await;
        }
        t.events(&mut stranger).await;
        t.events(&mut friend).await;
    })
    .await;
}

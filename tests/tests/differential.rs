//! Differential tests: every scenario runs against the coordinator and
//! against Apache ZooKeeper 3.8, and the normalised transcripts must match
//! line for line (see `diff_harness.rs` for what is normalised and why).
//!
//! A scenario reads like a session with zkCli: each request is written to
//! the transcript with its outcome (error code, data, stat, children, ACL,
//! multi results), and every watch event in the place it arrived relative
//! to the replies. Deliberate differences are not hidden in the harness:
//! they are separate tests at the end of this file that assert each
//! server's behaviour explicitly.

#[path = "diff_harness.rs"]
mod harness;

use std::time::Duration;

use harness::*;
use testkit::Server;
use zk_wire::client::{Client, ConnectOptions};
use zk_wire::consts::{perms, AddWatchMode, CreateMode, OpCode, WatcherType};
use zk_wire::records::*;
use zk_wire::request::MultiOp;
use zk_wire::{ErrorCode, Jute, Request};

fn acl(perms: i32, scheme: &str, id: &str) -> Acl {
    Acl { perms, id: Id { scheme: scheme.into(), id: id.into() } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_modes_and_their_stats() {
    differential("create-modes", async |t: &mut Run| {
        let mut s = t.connect().await;
        t.call(&mut s, create(&t.p("persistent"), b"p", CreateMode::Persistent)).await;
        t.call(&mut s, create2(&t.p("persistent2"), b"p2", CreateMode::Persistent)).await;
        t.call(&mut s, create2(&t.p("ephemeral"), b"e", CreateMode::Ephemeral)).await;
        t.call(&mut s, create(&t.p("seq-"), b"", CreateMode::PersistentSequential)).await;
        t.call(&mut s, create2(&t.p("seq-"), b"", CreateMode::PersistentSequential)).await;
        t.call(&mut s, create2(&t.p("eseq-"), b"", CreateMode::EphemeralSequential)).await;
        // A sequential name with an empty prefix: the node is the counter.
        t.call(&mut s, create(&format!("{}/", t.p("")), b"", CreateMode::PersistentSequential)).await;
        // Containers: only through createContainer; create with flags 4 too.
        t.call(&mut s, create_req(OpCode::CreateContainer, &t.p("container"), b"c", CreateMode::Container, 0)).await;
        t.call(&mut s, create_req(OpCode::Create2, &t.p("container2"), b"c", CreateMode::Container, 0)).await;
        t.call(&mut s, create_req(OpCode::CreateContainer, &t.p("not-a-container"), b"", CreateMode::Persistent, 0))
            .await;
        // TTL nodes (extended types are on in both servers). Their TTLs are
        // long: the coordinator's test config reaps expired ones every 0.5 s,
        // ZooKeeper every minute, and reaping is not what is compared here.
        t.call(&mut s, create_req(OpCode::CreateTtl, &t.p("ttl"), b"t", CreateMode::PersistentWithTtl, 60_000)).await;
        t.call(
            &mut s,
            create_req(OpCode::CreateTtl, &t.p("ttl-seq-"), b"t", CreateMode::PersistentSequentialWithTtl, 3_600_000),
        )
        .await;
        t.call(&mut s, create_req(OpCode::CreateTtl, &t.p("ttl-zero"), b"", CreateMode::PersistentWithTtl, 0)).await;
        t.call(&mut s, create_req(OpCode::CreateTtl, &t.p("ttl-neg"), b"", CreateMode::PersistentWithTtl, -1)).await;
        t.call(&mut s, create_req(OpCode::CreateTtl, &t.p("ttl-huge"), b"", CreateMode::PersistentWithTtl, 1 << 41))
            .await;
        t.call(&mut s, create_req(OpCode::CreateTtl, &t.p("ttl-eph"), b"", CreateMode::Ephemeral, 100)).await;
        t.call(&mut s, create_req(OpCode::Create, &t.p("ttl-plain"), b"", CreateMode::PersistentWithTtl, 0)).await;
        t.call(&mut s, create_req(OpCode::Create2, &t.p("bad-mode"), b"", CreateMode::Persistent, 0)).await;
        let bad_flags = Request::Create(
            OpCode::Create,
            CreateTtlRequest { path: t.p("bad-flags"), data: Some(vec![]), acl: open_acl(), flags: 99, ttl: 0 },
        );
        t.call(&mut s, bad_flags).await;
        // Null data reads back as null.
        let null = Request::Create(
            OpCode::Create2,
            CreateTtlRequest { path: t.p("null"), data: None, acl: open_acl(), flags: 0, ttl: 0 },
        );
        t.call(&mut s, null).await;
        t.call(&mut s, get_data(&t.p("null"), false)).await;
        for n in ["persistent", "ephemeral", "container", "ttl", "seq-0000000001"] {
            t.call(&mut s, get_data(&t.p(n), false)).await;
        }
        t.call(&mut s, get_children2(&t.p(""), false)).await;
        t.call(&mut s, exists(&t.p(""), false)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_delete_errors() {
    differential("create-errors", async |t: &mut Run| {
        let mut s = t.connect().await;
        t.call(&mut s, create(&t.p("a"), b"a", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("a"), b"again", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("missing/child"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("eph"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut s, create(&t.p("eph/child"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("eph/seq-"), b"", CreateMode::EphemeralSequential)).await;
        t.call(&mut s, create(&t.p("a/b"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, delete(&t.p("a"), -1)).await;
        t.call(&mut s, delete(&t.p("a/b"), 3)).await;
        t.call(&mut s, delete(&t.p("a/b"), 0)).await;
        t.call(&mut s, delete(&t.p("a/b"), -1)).await;
        t.call(&mut s, delete(&t.p("a"), -1)).await;
        t.call(&mut s, get_children2(&t.p(""), false)).await;
        // Paths ZooKeeper's PathUtils rejects, for create, delete and reads.
        let root = t.p("");
        let bad = [
            String::new(),
            "relative".into(),
            format!("{root}/"),
            format!("{root}//x"),
            format!("{root}/./x"),
            format!("{root}/../x"),
            format!("{root}/."),
            format!("{root}/x\u{0}y"),
            format!("{root}/x\u{1}y"),
            format!("{root}/x\u{f000}y"),
        ];
        for p in &bad {
            t.call(&mut s, create(p, b"", CreateMode::Persistent)).await;
            t.call(&mut s, delete(p, -1)).await;
            t.call(&mut s, set_data(p, b"", -1)).await;
            // Reads of "" would read the root, shared with other tests.
            if !p.is_empty() {
                t.call(&mut s, exists(p, false)).await;
                t.call(&mut s, get_data(p, false)).await;
                t.call(&mut s, get_children(p, false)).await;
            }
        }
        // The root and the system subtree.
        t.call(&mut s, delete("/", -1)).await;
        t.call(&mut s, create("/", b"", CreateMode::Persistent)).await;
        t.call(&mut s, exists("/zookeeper/quota", false)).await;
        t.call(&mut s, delete(&t.p("never"), -1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_stats_follow_every_write() {
    differential("versions", async |t: &mut Run| {
        let mut s = t.connect().await;
        t.call(&mut s, create(&t.p("n"), b"v0", CreateMode::Persistent)).await;
        t.call(&mut s, set_data(&t.p("n"), b"v1", 0)).await;
        t.call(&mut s, set_data(&t.p("n"), b"stale", 0)).await;
        t.call(&mut s, set_data(&t.p("n"), b"v2", -1)).await;
        t.call(&mut s, set_data(&t.p("n"), b"big", 7)).await;
        t.call(&mut s, set_data(&t.p("missing"), b"", -1)).await;
        t.call(&mut s, set_data(&t.p("missing"), b"", 3)).await;
        t.call(&mut s, get_data(&t.p("n"), false)).await;
        t.call(&mut s, exists(&t.p("n"), false)).await;
        t.call(&mut s, exists(&t.p("missing"), false)).await;
        t.call(&mut s, get_data(&t.p("missing"), false)).await;
        let nulled = Request::SetData(SetDataRequest { path: t.p("n"), data: None, version: 2 });
        t.call(&mut s, nulled).await;
        t.call(&mut s, get_data(&t.p("n"), false)).await;
        // Children move the parent's cversion and pzxid, not its version.
        t.call(&mut s, create(&t.p("n/c1"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("n/c2"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut s, delete(&t.p("n/c1"), -1)).await;
        t.call(&mut s, get_children2(&t.p("n"), false)).await;
        t.call(&mut s, get_children(&t.p("n"), false)).await;
        t.call(&mut s, get_children(&t.p("missing"), false)).await;
        t.call(&mut s, get_children2(&t.p("missing"), false)).await;
        t.call(&mut s, delete(&t.p("n"), 3)).await;
        t.call(&mut s, delete(&t.p("n/c2"), 0)).await;
        t.call(&mut s, delete(&t.p("n"), 3)).await;
        t.call(&mut s, exists(&t.p("n"), false)).await;
        // The largest data a frame can carry, and one byte more than ZooKeeper allows.
        let near = vec![b'x'; 1024 * 1000];
        t.call(&mut s, create(&t.p("big"), &near, CreateMode::Persistent)).await;
        t.call(&mut s, exists(&t.p("big"), false)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_results_per_op() {
    differential("multi", async |t: &mut Run| {
        let mut s = t.connect().await;
        let ok = Request::Multi(vec![
            m_create(&t.p("m"), b"m", CreateMode::Persistent),
            m_create(&t.p("m/seq-"), b"", CreateMode::PersistentSequential),
            MultiOp::Create(
                OpCode::Create2,
                CreateTtlRequest { path: t.p("m/two"), data: Some(b"2".to_vec()), acl: open_acl(), flags: 0, ttl: 0 },
            ),
            m_set(&t.p("m"), b"m1", 0),
            m_check(&t.p("m"), 1),
            m_delete(&t.p("m/two"), 0),
        ]);
        t.call(&mut s, ok).await;
        // The other create flavours inside a multi.
        let flavours = Request::Multi(vec![
            MultiOp::Create(
                OpCode::CreateContainer,
                CreateTtlRequest { path: t.p("m/ctr"), data: None, acl: open_acl(), flags: 4, ttl: 0 },
            ),
            MultiOp::Create(
                OpCode::CreateTtl,
                CreateTtlRequest { path: t.p("m/ttl"), data: None, acl: open_acl(), flags: 5, ttl: 3_600_000 },
            ),
            MultiOp::Create(
                OpCode::Create2,
                CreateTtlRequest { path: t.p("m/eph"), data: None, acl: open_acl(), flags: 1, ttl: 0 },
            ),
        ]);
        t.call(&mut s, flavours).await;
        // A failure in the middle: earlier ops read Ok, the failing one its
        // error, later ones RuntimeInconsistency, and nothing is applied.
        let failing = Request::Multi(vec![
            m_create(&t.p("m/x"), b"", CreateMode::Persistent),
            m_set(&t.p("m"), b"", 0),
            m_delete(&t.p("m"), -1),
            m_create(&t.p("m/y"), b"", CreateMode::Persistent),
        ]);
        t.call(&mut s, failing).await;
        t.call(&mut s, exists(&t.p("m/x"), false)).await;
        for (i, failing_op) in [
            m_check(&t.p("m"), 7),
            m_check(&t.p("nope"), -1),
            m_create(&t.p("m"), b"", CreateMode::Persistent),
            m_delete(&t.p("m"), -1),
            m_create(&t.p("m/bad/"), b"", CreateMode::Persistent),
            m_create("", b"", CreateMode::Persistent),
        ]
        .into_iter()
        .enumerate()
        {
            let req = Request::Multi(vec![m_create(&t.p(&format!("pre{i}")), b"", CreateMode::Persistent), failing_op]);
            t.call(&mut s, req).await;
        }
        // Ops that depend on earlier ops of the same multi.
        let chain = Request::Multi(vec![
            m_create(&t.p("c"), b"", CreateMode::Persistent),
            m_create(&t.p("c/d"), b"", CreateMode::Ephemeral),
            m_set(&t.p("c/d"), b"x", 0),
            m_check(&t.p("c/d"), 1),
            m_delete(&t.p("c/d"), 1),
            m_delete(&t.p("c"), 0),
        ]);
        t.call(&mut s, chain).await;
        t.call(&mut s, Request::Multi(vec![])).await;
        t.call(&mut s, get_children(&t.p(""), false)).await;
        // multiRead: a missing node is an error result, not a failed call.
        let read = Request::MultiRead(vec![
            MultiOp::GetData(PathWatchRequest { path: t.p("m"), watch: false }),
            MultiOp::GetChildren(PathWatchRequest { path: t.p("m"), watch: false }),
            MultiOp::GetData(PathWatchRequest { path: t.p("gone"), watch: false }),
            MultiOp::GetChildren(PathWatchRequest { path: t.p("gone"), watch: false }),
            MultiOp::GetData(PathWatchRequest { path: t.p("m"), watch: false }),
        ]);
        t.call(&mut s, read).await;
        t.call(&mut s, Request::MultiRead(vec![])).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_counts_and_ephemerals() {
    differential("sync-counts", async |t: &mut Run| {
        let mut s1 = t.connect().await;
        let mut s2 = t.connect().await;
        t.call(&mut s1, Request::Sync(PathRequest { path: t.p("") })).await;
        t.call(&mut s1, Request::Sync(PathRequest { path: t.p("missing") })).await;
        t.call(&mut s1, create(&t.p("a"), b"", CreateMode::Persistent)).await;
        t.call(&mut s1, create(&t.p("a/e1"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut s1, create(&t.p("a/p"), b"", CreateMode::Persistent)).await;
        t.call(&mut s1, create(&t.p("a/p/e2"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut s2, create(&t.p("a/p/other"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut s1, create(&t.p("b"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut s1, path_req(OpCode::GetEphemerals, &t.p(""))).await;
        t.call(&mut s1, path_req(OpCode::GetEphemerals, &t.p("a/p"))).await;
        t.call(&mut s1, path_req(OpCode::GetEphemerals, &t.p("zzz"))).await;
        t.call(&mut s2, path_req(OpCode::GetEphemerals, &t.p(""))).await;
        t.call(&mut s1, path_req(OpCode::GetAllChildrenNumber, &t.p(""))).await;
        t.call(&mut s1, path_req(OpCode::GetAllChildrenNumber, &t.p("a/p"))).await;
        t.call(&mut s1, path_req(OpCode::GetAllChildrenNumber, &t.p("a/p/e2"))).await;
        t.call(&mut s1, path_req(OpCode::GetAllChildrenNumber, &t.p("missing"))).await;
        t.call(&mut s1, Request::WhoAmI).await;
        // Each session's ephemerals are its own: s2 closing takes only its node.
        t.close(s2).await;
        t.call(&mut s1, get_children(&t.p("a/p"), false)).await;
        t.call(&mut s1, get_data(&t.p("a/p/e2"), false)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_auth_and_refusals() {
    differential("acl", async |t: &mut Run| {
        let mut owner = t.connect().await;
        let mut stranger = t.connect().await;
        t.call(&mut owner, create(&t.p("open"), b"o", CreateMode::Persistent)).await;
        t.call(&mut owner, path_req(OpCode::GetAcl, &t.p("open"))).await;
        t.call(&mut owner, path_req(OpCode::GetAcl, &t.p("missing"))).await;
        // setACL checks aversion like setData checks version.
        let read_only = vec![acl(perms::READ, "world", "anyone")];
        t.call(&mut owner, set_acl(&t.p("open"), read_only.clone(), 5)).await;
        t.call(&mut owner, set_acl(&t.p("open"), read_only.clone(), 0)).await;
        t.call(&mut owner, set_acl(&t.p("open"), read_only, 0)).await;
        t.call(&mut owner, path_req(OpCode::GetAcl, &t.p("open"))).await;
        t.call(&mut stranger, set_data(&t.p("open"), b"x", -1)).await;
        t.call(&mut stranger, create(&t.p("open/c"), b"", CreateMode::Persistent)).await;
        t.call(&mut stranger, get_data(&t.p("open"), false)).await;
        // digest through the `auth` scheme: the ACL takes the session's ids.
        t.call(&mut owner, create_acl(&t.p("auth-none"), b"", vec![acl(perms::ALL, "auth", "")])).await;
        t.call(&mut owner, auth("digest", b"alice:secret")).await;
        t.call(&mut owner, Request::WhoAmI).await;
        t.call(&mut owner, create_acl(&t.p("mine"), b"m", vec![acl(perms::ALL, "auth", "")])).await;
        t.call(&mut owner, path_req(OpCode::GetAcl, &t.p("mine"))).await;
        t.call(&mut owner, get_data(&t.p("mine"), false)).await;
        t.call(&mut stranger, get_data(&t.p("mine"), false)).await;
        t.call(&mut stranger, set_data(&t.p("mine"), b"", -1)).await;
        t.call(&mut stranger, path_req(OpCode::GetAcl, &t.p("mine"))).await;
        t.call(&mut stranger, exists(&t.p("mine"), false)).await;
        t.call(&mut stranger, auth("digest", b"alice:wrong")).await;
        t.call(&mut stranger, get_data(&t.p("mine"), false)).await;
        t.call(&mut stranger, auth("digest", b"alice:secret")).await;
        t.call(&mut stranger, get_data(&t.p("mine"), false)).await;
        t.call(&mut stranger, Request::WhoAmI).await;
        // Admin is needed to change an ACL; delete needs DELETE on the parent.
        let no_admin = vec![acl(perms::ALL & !perms::ADMIN, "world", "anyone")];
        t.call(&mut owner, create_acl(&t.p("noadmin"), b"", no_admin)).await;
        t.call(&mut owner, set_acl(&t.p("noadmin"), open_acl(), -1)).await;
        let no_delete = vec![acl(perms::ALL & !perms::DELETE, "world", "anyone")];
        t.call(&mut owner, create_acl(&t.p("nodel"), b"", no_delete)).await;
        t.call(&mut owner, create(&t.p("nodel/c"), b"", CreateMode::Persistent)).await;
        t.call(&mut owner, delete(&t.p("nodel/c"), -1)).await;
        t.call(&mut owner, set_acl(&t.p("nodel"), open_acl(), 0)).await;
        t.call(&mut owner, delete(&t.p("nodel/c"), -1)).await;
        // ip scheme: loopback matches, another address does not.
        t.call(&mut owner, create_acl(&t.p("ip-local"), b"l", vec![acl(perms::ALL, "ip", "127.0.0.1")])).await;
        t.call(&mut owner, create_acl(&t.p("ip-net"), b"n", vec![acl(perms::ALL, "ip", "127.0.0.0/8")])).await;
        t.call(&mut owner, create_acl(&t.p("ip-far"), b"f", vec![acl(perms::ALL, "ip", "10.1.2.3")])).await;
        t.call(&mut owner, get_data(&t.p("ip-local"), false)).await;
        t.call(&mut owner, get_data(&t.p("ip-net"), false)).await;
        t.call(&mut owner, get_data(&t.p("ip-far"), false)).await;
        // Invalid ACLs.
        t.call(&mut owner, create_acl(&t.p("empty-acl"), b"", vec![])).await;
        t.call(&mut owner, create_acl(&t.p("bad-scheme"), b"", vec![acl(perms::ALL, "nope", "x")])).await;
        t.call(&mut owner, create_acl(&t.p("bad-ip"), b"", vec![acl(perms::ALL, "ip", "not-an-ip")])).await;
        t.call(&mut owner, create_acl(&t.p("bad-digest"), b"", vec![acl(perms::ALL, "digest", "nocolon")])).await;
        t.call(&mut owner, create_acl(&t.p("world-other"), b"", vec![acl(perms::ALL, "world", "someone")])).await;
        t.call(&mut owner, set_acl(&t.p("open"), vec![], -1)).await;
        t.call(&mut stranger, set_acl(&t.p("missing"), open_acl(), -1)).await;
        // An unknown auth scheme fails the session's auth.
        let mut odd = t.connect().await;
        t.call_or_closed(&mut odd, auth("nosuchscheme", b"x")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_watches_and_event_order() {
    differential("watches", async |t: &mut Run| {
        let mut w = t.connect().await;
        let mut s = t.connect().await;
        t.call(&mut s, create(&t.p("n"), b"0", CreateMode::Persistent)).await;
        t.call(&mut w, get_data(&t.p("n"), true)).await;
        t.call(&mut w, exists(&t.p("n"), true)).await;
        t.call(&mut w, get_children(&t.p("n"), true)).await;
        t.call(&mut w, exists(&t.p("later"), true)).await;
        t.call(&mut w, get_children(&t.p(""), true)).await;
        // One change fires the data watch once (getData and exists share it).
        t.call(&mut s, set_data(&t.p("n"), b"1", -1)).await;
        // The event comes before the reply of a read that sees the change.
        t.call(&mut w, get_data(&t.p("n"), false)).await;
        t.call(&mut s, set_data(&t.p("n"), b"2", -1)).await;
        t.events(&mut w).await;
        t.call(&mut s, create(&t.p("later"), b"", CreateMode::Persistent)).await;
        t.events(&mut w).await;
        t.call(&mut s, create(&t.p("n/c"), b"", CreateMode::Persistent)).await;
        t.events(&mut w).await;
        // Re-arm everything, then delete: data, child and parent child watches fire.
        t.call(&mut w, get_data(&t.p("n/c"), true)).await;
        t.call(&mut w, get_children(&t.p("n"), true)).await;
        t.call(&mut w, get_data(&t.p("n"), true)).await;
        t.call(&mut w, get_children(&t.p(""), true)).await;
        t.call(&mut s, delete(&t.p("n/c"), -1)).await;
        t.events(&mut w).await;
        t.call(&mut s, delete(&t.p("n"), -1)).await;
        t.events(&mut w).await;
        // A watch set by a failed read: exists sets one, getData does not.
        t.call(&mut w, get_data(&t.p("ghost"), true)).await;
        t.call(&mut w, exists(&t.p("ghost2"), true)).await;
        t.call(&mut s, create(&t.p("ghost"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("ghost2"), b"", CreateMode::Persistent)).await;
        t.events(&mut w).await;
        // The writer's own watch fires before the writer's reply.
        t.call(&mut s, get_data(&t.p("ghost"), true)).await;
        t.call(&mut s, set_data(&t.p("ghost"), b"own", -1)).await;
        // A multi fires each watch once, after all of its ops applied.
        t.call(&mut w, get_data(&t.p("ghost"), true)).await;
        t.call(&mut w, get_children(&t.p(""), true)).await;
        let multi = Request::Multi(vec![
            m_set(&t.p("ghost"), b"a", -1),
            m_set(&t.p("ghost"), b"b", -1),
            m_create(&t.p("m1"), b"", CreateMode::Persistent),
            m_create(&t.p("m2"), b"", CreateMode::Persistent),
        ]);
        t.call(&mut s, multi).await;
        t.events(&mut w).await;
        // Watches of a failed multi do not fire.
        t.call(&mut w, get_data(&t.p("ghost"), true)).await;
        let failing = Request::Multi(vec![m_set(&t.p("ghost"), b"c", -1), m_check(&t.p("ghost"), 100)]);
        t.call(&mut s, failing).await;
        t.events(&mut w).await;
        t.call(&mut s, set_data(&t.p("ghost"), b"d", -1)).await;
        t.events(&mut w).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_and_recursive_watches() {
    differential("persistent-watches", async |t: &mut Run| {
        let mut w = t.connect().await;
        let mut s = t.connect().await;
        let add = |path: String, mode: i32| Request::AddWatch(AddWatchRequest { path, mode });
        t.call(&mut w, add(t.p("p"), AddWatchMode::Persistent.as_i32())).await;
        t.call(&mut w, add(t.p(""), AddWatchMode::PersistentRecursive.as_i32())).await;
        t.call(&mut w, add(t.p("bad/"), AddWatchMode::Persistent.as_i32())).await;
        // A mode ZooKeeper does not define.
        t.call_or_closed(&mut w, add(t.p("x"), 7)).await;
        t.call(&mut s, create(&t.p("p"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, set_data(&t.p("p"), b"1", -1)).await;
        t.call(&mut s, set_data(&t.p("p"), b"2", -1)).await;
        t.call(&mut s, create(&t.p("p/c"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("p/c/d"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, set_data(&t.p("p/c/d"), b"", -1)).await;
        t.call(&mut s, delete(&t.p("p/c/d"), -1)).await;
        t.events(&mut w).await;
        // A persistent watch and a one-shot watch on the same node.
        t.call(&mut w, get_data(&t.p("p"), true)).await;
        t.call(&mut s, set_data(&t.p("p"), b"3", -1)).await;
        t.events(&mut w).await;
        // checkWatches / removeWatches, by type.
        let wt = |path: String, ty: WatcherType| WatchTypeRequest { path, watcher_type: ty.as_i32() };
        t.call(&mut w, Request::CheckWatches(wt(t.p("p"), WatcherType::Any))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("p"), WatcherType::Data))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("p"), WatcherType::Children))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("nowatch"), WatcherType::Any))).await;
        t.call(&mut w, get_children(&t.p("p/c"), true)).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p("p/c"), WatcherType::Data))).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p("p/c"), WatcherType::Children))).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p("p/c"), WatcherType::Children))).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p("p"), WatcherType::Any))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("p"), WatcherType::Any))).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p(""), WatcherType::Any))).await;
        t.call(&mut s, set_data(&t.p("p"), b"4", -1)).await;
        t.call(&mut s, create(&t.p("p/c/e"), b"", CreateMode::Persistent)).await;
        t.events(&mut w).await;
        // Another session's watches are not ours to remove. (checkWatches
        // from another session is a deliberate difference: see
        // `check_watches_sees_only_the_callers_watches`.)
        t.call(&mut w, get_data(&t.p("p"), true)).await;
        t.call(&mut s, Request::RemoveWatches(wt(t.p("p"), WatcherType::Data))).await;
        t.call(&mut s, set_data(&t.p("p"), b"5", -1)).await;
        t.events(&mut w).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_watches_after_reconnect_replays_missed_changes() {
    differential("setwatches", async |t: &mut Run| {
        let mut w = t.connect().await;
        let mut s = t.connect().await;
        t.call(&mut s, create(&t.p("a"), b"0", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("d"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("same"), b"", CreateMode::Persistent)).await;
        let last = t.call(&mut w, exists(&t.p("same"), false)).await.zxid;
        let (id, pw) = (w.c.session_id(), w.c.passwd().to_vec());
        let label = w.label.clone();
        w.c.disconnect().await;
        // While w is away: a data change, a creation, a deletion, a child.
        t.call(&mut s, set_data(&t.p("a"), b"1", -1)).await;
        t.call(&mut s, create(&t.p("b"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, delete(&t.p("d"), -1)).await;
        t.call(&mut s, create(&t.p("a/kid"), b"", CreateMode::Persistent)).await;
        let mut w = t.resume(&label, id, pw, last).await;
        let watches = SetWatches2 {
            relative_zxid: last,
            data_watches: vec![t.p("a"), t.p("d"), t.p("same")],
            exist_watches: vec![t.p("b"), t.p("nothere")],
            child_watches: vec![t.p("a"), t.p("same")],
            persistent_watches: vec![],
            persistent_recursive_watches: vec![],
        };
        t.call(&mut w, Request::SetWatches(watches.clone())).await;
        t.events(&mut w).await;
        // The watches that did not fire are armed again.
        t.call(&mut s, set_data(&t.p("same"), b"x", -1)).await;
        t.call(&mut s, create(&t.p("nothere"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, create(&t.p("same/k"), b"", CreateMode::Persistent)).await;
        t.events(&mut w).await;
        // setWatches2 with persistent watches.
        let mut w2 = t.connect().await;
        let last = t.call(&mut w2, exists(&t.p(""), false)).await.zxid;
        let sw2 = SetWatches2 {
            relative_zxid: last,
            persistent_watches: vec![t.p("a")],
            persistent_recursive_watches: vec![t.p("b")],
            ..SetWatches2::default()
        };
        t.call(&mut w2, Request::SetWatches2(sw2)).await;
        t.call(&mut s, set_data(&t.p("a"), b"2", -1)).await;
        t.call(&mut s, create(&t.p("b/deep"), b"", CreateMode::Persistent)).await;
        t.call(&mut s, set_data(&t.p("a"), b"3", -1)).await;
        t.events(&mut w2).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_ephemerals_and_fires_watches() {
    differential("expiry", async |t: &mut Run| {
        let mut victim = t.connect().await;
        let mut watcher = t.connect().await;
        t.call(&mut victim, create(&t.p("e1"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut victim, create(&t.p("q-"), b"", CreateMode::EphemeralSequential)).await;
        t.call(&mut victim, create(&t.p("keep"), b"", CreateMode::Persistent)).await;
        t.call(&mut watcher, create(&t.p("w-eph"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut watcher, get_data(&t.p("e1"), true)).await;
        t.call(&mut watcher, get_children(&t.p(""), true)).await;
        t.call(&mut victim, get_data(&t.p("keep"), true)).await;
        t.expire(&victim).await;
        t.events(&mut watcher).await;
        let closed = victim.c.closed_within(Duration::from_secs(5)).await;
        t.note(format!("victim's own connection closed by the server: {closed}"));
        t.call(&mut watcher, get_children(&t.p(""), false)).await;
        // Resuming an expired session: the handshake says so (timeout 0,
        // session 0) and the server closes the socket.
        let (id, pw) = (victim.c.session_id(), victim.c.passwd().to_vec());
        let mut again = t.resume("victim-again", id, pw, 0).await;
        let closed = again.c.closed_within(Duration::from_secs(5)).await;
        t.note(format!("expired reconnect closed: {closed}"));
        // (A wrong password for a live session: see
        // `wrong_password_reconnect_leaves_the_live_connection_alone`.)
        t.call(&mut watcher, exists(&t.p("w-eph"), false)).await;
        // An unknown session id too.
        let mut stranger = t.resume("unknown", 0x7777_0000_0000_0001, vec![0; 16], 0).await;
        let closed = stranger.c.closed_within(Duration::from_secs(5)).await;
        t.note(format!("unknown-session reconnect closed: {closed}"));
        // Resuming a live session with the right password keeps its ephemerals.
        let (id, pw) = (watcher.c.session_id(), watcher.c.passwd().to_vec());
        let mut moved = t.resume("watcher-moved", id, pw, 0).await;
        t.call(&mut moved, exists(&t.p("w-eph"), false)).await;
        t.close(moved).await;
        let mut reader = t.connect().await;
        t.call(&mut reader, get_children(&t.p(""), false)).await;
    })
    .await;
}

/// A session closes with many ephemerals, some in nested parents: the
/// watchers hear of each deletion in the order ZooKeeper deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_with_many_ephemerals() {
    differential("many-ephemerals", async |t: &mut Run| {
        let mut owner = t.connect().await;
        let mut watcher = t.connect().await;
        for dir in ["x", "y"] {
            t.call(&mut owner, create(&t.p(dir), b"", CreateMode::Persistent)).await;
            t.call(&mut watcher, get_children(&t.p(dir), true)).await;
        }
        for i in 0..20 {
            let path = t.p(&format!("{}/e{i}", if i % 3 == 0 { "y" } else { "x" }));
            t.call(&mut owner, create(&path, b"", CreateMode::Ephemeral)).await;
            t.call(&mut watcher, exists(&path, true)).await;
        }
        t.call(&mut owner, create(&t.p("x/q-"), b"", CreateMode::EphemeralSequential)).await;
        t.call(&mut owner, delete(&t.p("x/e4"), -1)).await;
        t.events(&mut watcher).await;
        t.call(&mut watcher, get_children(&t.p("x"), true)).await;
        t.close(owner).await;
        t.events(&mut watcher).await;
    })
    .await;
}

/// A session whose client goes silent expires by itself: its ephemerals go
/// and the watchers hear of it. The session asks for 4 s, the least Apache
/// ZooKeeper's test config (tickTime 2 s) grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_session_expires_by_timeout() {
    differential("timeout", async |t: &mut Run| {
        let opts = ConnectOptions { timeout_ms: 4_000, ..ConnectOptions::default() };
        let mut quiet = t.connect_with(opts).await;
        let mut watcher = t.connect().await;
        t.call(&mut quiet, create(&t.p("e"), b"", CreateMode::Ephemeral)).await;
        t.call(&mut watcher, exists(&t.p("e"), true)).await;
        let (id, pw) = (quiet.c.session_id(), quiet.c.passwd().to_vec());
        quiet.c.disconnect().await;
        // Keep the watcher alive while waiting (pings are the test's job).
        let mut heard = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            watcher.c.ping().await.unwrap();
            if !watcher.c.take_queued_events().is_empty() {
                heard = true;
                break;
            }
        }
        assert!(heard, "{:?}: the session did not expire within 20 s", t.kind);
        t.call(&mut watcher, exists(&t.p("e"), false)).await;
        let mut back = t.resume("quiet-again", id, pw, 0).await;
        let closed = back.c.closed_within(Duration::from_secs(5)).await;
        t.note(format!("expired reconnect closed: {closed}"));
    })
    .await;
}

/// Clients older than 3.4 send no readOnly byte; the answer then has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_without_the_read_only_byte() {
    differential("old-client", async |t: &mut Run| {
        let opts = ConnectOptions { timeout_ms: SESSION_TIMEOUT_MS, read_only: None, ..ConnectOptions::default() };
        let mut old = t.connect_with(opts).await;
        t.call(&mut old, create(&t.p("x"), b"old", CreateMode::Ephemeral)).await;
        t.call(&mut old, get_data(&t.p("x"), false)).await;
        let opts =
            ConnectOptions { timeout_ms: SESSION_TIMEOUT_MS, read_only: Some(true), ..ConnectOptions::default() };
        let mut ro = t.connect_with(opts).await;
        t.call(&mut ro, get_data(&t.p("x"), false)).await;
        t.call(&mut ro, create(&t.p("y"), b"", CreateMode::Persistent)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_session_then_requests() {
    differential("close", async |t: &mut Run| {
        let mut s = t.connect().await;
        t.call(&mut s, create(&t.p("e"), b"", CreateMode::Ephemeral)).await;
        t.close(s).await;
        let mut r = t.connect().await;
        t.call(&mut r, exists(&t.p("e"), false)).await;
        t.call(&mut r, get_children(&t.p(""), false)).await;
    })
    .await;
}

// ---- deliberate differences and non-transcript comparisons -------------------

/// ZooKeeper 3.8 answers an unknown or unimplemented opcode with
/// ZUNIMPLEMENTED and then closes the connection. The coordinator answers
/// the same error and keeps the connection: one odd request should not cost
/// a client its session's connection. This test pins both behaviours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_opcode_is_unimplemented_and_only_zookeeper_disconnects() {
    for server in Server::ALL {
        let running = server.start();
        within("unknown opcode", async {
            let mut c = Client::connect(running.addr, ConnectOptions::default()).await.unwrap();
            for op in [555i32, OpCode::Sasl.as_i32()] {
                let mut frame = Vec::new();
                let at = zk_wire::frame::start_frame(&mut frame);
                RequestHeader { xid: 7, op }.write(&mut frame);
                zk_wire::frame::finish_frame(&mut frame, at);
                c.send_raw(&frame).await.unwrap();
                c.expect_reply(7, OpCode::Error);
                match server {
                    Server::Coordinator => {
                        let r = c.wait_reply(7).await.unwrap();
                        assert_eq!(r.err, ErrorCode::Unimplemented.as_i32(), "{server:?} op {op}");
                        let ok = c.call(&exists("/", false)).await.unwrap();
                        assert_eq!(ok.err, 0, "the connection still serves requests");
                    }
                    Server::ZooKeeper => {
                        let r = c.wait_reply(7).await;
                        match r {
                            Ok(r) => assert_eq!(r.err, ErrorCode::Unimplemented.as_i32()),
                            Err(e) => assert!(matches!(e, zk_wire::client::ClientError::Closed), "{e}"),
                        }
                        assert!(c.closed_within(Duration::from_secs(5)).await, "ZooKeeper closes the connection");
                        break;
                    }
                }
            }
        })
        .await;
    }
}

/// The four-letter words answer in ZooKeeper's format on both servers: the
/// same lines and keys (values differ: versions, counters, paths), so tools
/// that parse them (monitoring, zkCli's own `stat`) read either server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_letter_words_have_zookeepers_shapes() {
    let coordinator = Server::Coordinator.start();
    let zookeeper = Server::ZooKeeper.start();
    for running in [&coordinator, &zookeeper] {
        // A live session with an ephemeral and a watch, so cons, wchc, wchp
        // and dump have something to list.
        let mut c = within("connect", Client::connect(running.addr, ConnectOptions::default())).await.unwrap();
        let path = format!("/{}", testkit::unique("fourlw"));
        within("create", c.call(&create(&path, b"", CreateMode::Ephemeral))).await.unwrap();
        within("watch", c.call(&get_data(&path, true))).await.unwrap();
        for word in ["ruok", "srvr", "stat", "mntr", "conf", "cons", "envi", "wchs", "wchc", "wchp", "dump", "isro"] {
            let text = within(word, four_letter_word(running.addr, word)).await;
            if let Err(why) = check_shape(word, &text, &path) {
                panic!("{:?} answered {word} in a shape ZooKeeper does not use: {why}\n{text}", running.kind);
            }
        }
    }
}

async fn four_letter_word(addr: std::net::SocketAddr, word: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect for a four-letter word");
    s.write_all(word.as_bytes()).await.expect("send the word");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read the answer");
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks one answer against ZooKeeper 3.8's format for that word. `path` is
/// an ephemeral node, watched by its own session, that must be listed.
fn check_shape(word: &str, text: &str, path: &str) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let keys = |sep: char| -> Vec<&str> { lines.iter().filter_map(|l| l.split(sep).next()).collect() };
    let need = |have: Vec<&str>, want: &[&str]| -> Result<(), String> {
        match want.iter().find(|k| !have.contains(k)) {
            Some(k) => Err(format!("no {k:?}")),
            None => Ok(()),
        }
    };
    let session_line = |l: &&str| l.starts_with("0x") && i64::from_str_radix(&l[2..], 16).is_ok();
    match word {
        "ruok" if text == "imok" => Ok(()),
        "isro" if text == "rw" => Ok(()),
        "ruok" | "isro" => Err("wrong answer".into()),
        "srvr" | "stat" => {
            let headers: Vec<&str> = lines
                .iter()
                .filter(|l| !l.starts_with(' ') && !l.is_empty())
                .filter_map(|l| l.split(':').next())
                .collect();
            let mut want = vec!["Zookeeper version"];
            if word == "stat" {
                want.push("Clients");
            }
            want.extend([
                "Latency min/avg/max",
                "Received",
                "Sent",
                "Connections",
                "Outstanding",
                "Zxid",
                "Mode",
                "Node count",
            ]);
            if headers == want {
                Ok(())
            } else {
                Err(format!("headers {headers:?}, want {want:?}"))
            }
        }
        "mntr" => need(
            keys('\t'),
            &[
                "zk_version",
                "zk_server_state",
                "zk_avg_latency",
                "zk_max_latency",
                "zk_min_latency",
                "zk_packets_received",
                "zk_packets_sent",
                "zk_num_alive_connections",
                "zk_outstanding_requests",
                "zk_znode_count",
                "zk_watch_count",
                "zk_ephemerals_count",
                "zk_approximate_data_size",
                "zk_open_file_descriptor_count",
                "zk_max_file_descriptor_count",
            ],
        ),
        "conf" => need(
            keys('='),
            &[
                "clientPort",
                "dataDir",
                "tickTime",
                "maxClientCnxns",
                "minSessionTimeout",
                "maxSessionTimeout",
                "serverId",
            ],
        ),
        "envi" if lines.first() != Some(&"Environment:") => Err("no Environment: header".into()),
        // Clients parse the leading release digits (kazoo's server_version).
        "envi" if !lines.iter().any(|l| l.starts_with("zookeeper.version=3.8.")) => {
            Err("zookeeper.version must start with the 3.8 release it speaks".into())
        }
        "envi" => need(keys('='), &["zookeeper.version", "host.name", "os.name", "os.arch", "user.name", "user.dir"]),
        "cons" => {
            let ok = lines.iter().filter(|l| !l.is_empty()).all(|l| l.starts_with(" /") && l.contains("](queued="));
            if ok && !lines.is_empty() {
                Ok(())
            } else {
                Err("each line must be ` /ip:port[n](queued=...,recved=...,sent=...)`".into())
            }
        }
        "wchs" => {
            let first = lines.first().copied().unwrap_or("");
            let ok = first.contains(" connections watching ")
                && first.ends_with(" paths")
                && lines.get(1).is_some_and(|l| l.starts_with("Total watches:"));
            if ok {
                Ok(())
            } else {
                Err("want `N connections watching M paths` / `Total watches:N`".into())
            }
        }
        // Sessions, each followed by its watched paths indented by a tab.
        "wchc"
            if lines.iter().filter(|l| !l.is_empty()).all(|l| session_line(l) || l.starts_with("\t/"))
                && lines.contains(&format!("\t{path}").as_str()) =>
        {
            Ok(())
        }
        // Paths, each followed by its watching sessions.
        "wchp"
            if lines.iter().filter(|l| !l.is_empty()).all(|l| l.starts_with('/') || l.starts_with("\t0x"))
                && lines.contains(&path) =>
        {
            Ok(())
        }
        "wchc" | "wchp" => Err(format!("want a session/path listing that includes {path}")),
        "dump" => {
            let ok = lines.first() == Some(&"SessionTracker dump:")
                && lines.contains(&"ephemeral nodes dump:")
                && lines.contains(&format!("\t{path}").as_str());
            if ok {
                Ok(())
            } else {
                Err(format!("want `SessionTracker dump:` ... `ephemeral nodes dump:` listing {path}"))
            }
        }
        other => Err(format!("no shape known for {other}")),
    }
}

/// checkWatches from a session that set no watch on the path: the
/// coordinator answers NoWatcher. Apache ZooKeeper 3.8.0 answers Ok when
/// *any* connection watches the path (its `WatchManager.containsWatcher`
/// looks the path up without checking the watcher), which contradicts its
/// own removeWatches answer for the same request; we follow removeWatches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_watches_sees_only_the_callers_watches() {
    for server in Server::ALL {
        let running = server.start();
        within("checkWatches", async {
            let mut a = Client::connect(running.addr, ConnectOptions::default()).await.unwrap();
            let mut b = Client::connect(running.addr, ConnectOptions::default()).await.unwrap();
            let path = format!("/{}", testkit::unique("checkw"));
            assert_eq!(a.call(&create(&path, b"", CreateMode::Ephemeral)).await.unwrap().err, 0);
            assert_eq!(a.call(&get_data(&path, true)).await.unwrap().err, 0);
            let wt = WatchTypeRequest { path: path.clone(), watcher_type: WatcherType::Data.as_i32() };
            let own = a.call(&Request::CheckWatches(wt.clone())).await.unwrap();
            assert_eq!(own.err, 0, "{server:?}: the watcher's own check");
            let removed = b.call(&Request::RemoveWatches(wt.clone())).await.unwrap();
            assert_eq!(removed.err, ErrorCode::NoWatcher.as_i32(), "{server:?}: removeWatches from another session");
            let other = b.call(&Request::CheckWatches(wt)).await.unwrap();
            let expected = match server {
                Server::Coordinator => ErrorCode::NoWatcher.as_i32(),
                Server::ZooKeeper => 0,
            };
            assert_eq!(other.err, expected, "{server:?}: checkWatches from another session");
        })
        .await;
    }
}

/// A reconnect to a live session with the wrong password is refused on both
/// servers with the expired handshake, and the session lives on. Apache
/// ZooKeeper also closes the session's current connection before it checks
/// the password (`processConnectRequest` closes the old connection first),
/// so anyone who knows a session id can disconnect its client; the
/// coordinator checks the password first and leaves the live connection alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_reconnect_leaves_the_live_connection_alone() {
    for server in Server::ALL {
        let running = server.start();
        within("wrong password", async {
            let mut owner = Client::connect(running.addr, ConnectOptions::default()).await.unwrap();
            let mut opts = owner.resume_options();
            opts.passwd[0] ^= 0xff;
            let mut liar = Client::connect(running.addr, opts).await.unwrap();
            assert_eq!(liar.handshake().time_out, 0, "{server:?}: refused handshake");
            assert_eq!(liar.handshake().session_id, 0, "{server:?}: refused handshake");
            assert!(liar.closed_within(Duration::from_secs(5)).await, "{server:?}: refused socket closed");
            let still = owner.call(&exists("/", false)).await;
            match server {
                Server::Coordinator => assert!(matches!(still, Ok(ref r) if r.err == 0), "{still:?}"),
                Server::ZooKeeper => assert!(still.is_err(), "ZooKeeper closed the live connection: {still:?}"),
            }
            // Either way the session itself is intact: resuming it works.
            let mut back = Client::connect(running.addr, owner.resume_options()).await.unwrap();
            assert_eq!(back.session_id(), owner.session_id(), "{server:?}: session resumed");
            assert_eq!(back.call(&exists("/", false)).await.unwrap().err, 0);
            let _ = back.call(&Request::CloseSession).await;
        })
        .await;
    }
}

/// A reconnect to a session that is gone is refused with a reply, then
/// closed: ZooKeeper's `finishSessionInit(cnxn, false)` answers timeout 0,
/// session 0 and a zeroed password (mirroring the readOnly byte) before it
/// closes the socket, and that reply is how a client learns its session
/// expired rather than that the network failed. (The coordinator's refusal
/// of a session that closes *during* its handshake, which no wire test can
/// time, is pinned in `ops::session`'s tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reconnect_is_answered_then_closed() {
    differential("refused-reconnect", async |t: &mut Run| {
        let s = t.connect().await;
        let (id, pw) = (s.c.session_id(), s.c.passwd().to_vec());
        t.close(s).await;
        for (label, id, pw) in [("closed", id, pw), ("unknown", 0x7777_0000_0000_0002, vec![7; 16])] {
            let mut again = t.resume(label, id, pw, 0).await;
            let hs = again.c.handshake().clone();
            t.note(format!("{label}: passwd zeroed {}, readOnly {:?}", hs.passwd == [0; 16], hs.read_only));
            let closed = again.c.closed_within(Duration::from_secs(5)).await;
            t.note(format!("{label}: closed after the refusal: {closed}"));
        }
    })
    .await;
}

/// Session timeouts are clamped to [2, 20] ticks. The coordinator runs here
/// with the oracle's tickTime (2 s) so the same requests negotiate the same
/// timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_timeouts_are_negotiated_alike() {
    let config = testkit::CoordinatorConfig {
        tick_time: Duration::from_secs(2),
        min_session_timeout: Duration::from_secs(4),
        max_session_timeout: Duration::from_secs(40),
        ..testkit::CoordinatorConfig::for_tests()
    };
    let coordinator = testkit::start_coordinator(config);
    let oracle = testkit::zookeeper_addr();
    for asked in [0, 1, 3_999, 4_000, 10_000, 40_000, 40_001, i32::MAX, -5] {
        let mut granted = Vec::new();
        for addr in [coordinator.addr, oracle] {
            let opts = ConnectOptions { timeout_ms: asked, ..ConnectOptions::default() };
            let mut c = within("connect", Client::connect(addr, opts)).await.unwrap();
            granted.push(c.handshake().time_out);
            let _ = within("close", c.call(&Request::CloseSession)).await;
        }
        assert_eq!(
            granted[0], granted[1],
            "asked {asked} ms: coordinator granted {}, ZooKeeper {}",
            granted[0], granted[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_packets_of_every_kind() {
    differential("auth-kinds", async |t: &mut Run| {
        let mut s = t.connect().await;
        // Two identities on one session, and the same one twice.
        t.call(&mut s, auth("digest", b"bob:one")).await;
        t.call(&mut s, auth("digest", b"carol:two")).await;
        t.call(&mut s, auth("digest", b"bob:one")).await;
        t.call(&mut s, Request::WhoAmI).await;
        t.call(&mut s, create_acl(&t.p("both"), b"", vec![acl(perms::ALL, "auth", "")])).await;
        t.call(&mut s, path_req(OpCode::GetAcl, &t.p("both"))).await;
        // An `auth` ACL entry with an id is still "every identity I have".
        t.call(&mut s, create_acl(&t.p("named"), b"", vec![acl(perms::READ, "auth", "whoever")])).await;
        t.call(&mut s, path_req(OpCode::GetAcl, &t.p("named"))).await;
        // Explicit digest ids in an ACL need no auth to set.
        let hashed = acl(perms::ALL, "digest", "bob:AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        t.call(&mut s, create_acl(&t.p("explicit"), b"", vec![hashed])).await;
        t.call(&mut s, get_data(&t.p("explicit"), false)).await;
        // ip as an auth scheme: ZooKeeper refuses it as an auth packet.
        let mut ip = t.connect().await;
        t.call_or_closed(&mut ip, auth("ip", b"127.0.0.1")).await;
        // A digest auth without a colon.
        let mut bad = t.connect().await;
        t.call_or_closed(&mut bad, auth("digest", b"nocolon")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_removal_by_type_and_mode() {
    differential("watch-removal", async |t: &mut Run| {
        let mut w = t.connect().await;
        let mut s = t.connect().await;
        let wt = |path: String, ty: WatcherType| WatchTypeRequest { path, watcher_type: ty.as_i32() };
        let add = |path: String, mode: AddWatchMode| Request::AddWatch(AddWatchRequest { path, mode: mode.as_i32() });
        t.call(&mut s, create(&t.p("n"), b"", CreateMode::Persistent)).await;
        // Persistent watches answer to both types.
        t.call(&mut w, add(t.p("n"), AddWatchMode::Persistent)).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("n"), WatcherType::Data))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("n"), WatcherType::Children))).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p("n"), WatcherType::Data))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("n"), WatcherType::Children))).await;
        t.call(&mut s, set_data(&t.p("n"), b"1", -1)).await;
        t.call(&mut s, create(&t.p("n/c"), b"", CreateMode::Persistent)).await;
        t.events(&mut w).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p("n"), WatcherType::Children))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("n"), WatcherType::Any))).await;
        // A recursive watch on the parent: is the child "watched"?
        t.call(&mut w, add(t.p(""), AddWatchMode::PersistentRecursive)).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p(""), WatcherType::Data))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("n/c"), WatcherType::Data))).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p("n/c"), WatcherType::Any))).await;
        // Removing one-shot data and child watches together, then separately.
        t.call(&mut w, get_data(&t.p("n/c"), true)).await;
        t.call(&mut w, exists(&t.p("n/c"), true)).await;
        t.call(&mut w, get_children(&t.p("n/c"), true)).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p("n/c"), WatcherType::Data))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("n/c"), WatcherType::Data))).await;
        t.call(&mut w, Request::CheckWatches(wt(t.p("n/c"), WatcherType::Children))).await;
        t.call(&mut s, create(&t.p("n/c/d"), b"", CreateMode::Persistent)).await;
        t.events(&mut w).await;
        t.call(&mut w, Request::RemoveWatches(wt(t.p(""), WatcherType::Any))).await;
        t.call(&mut s, set_data(&t.p("n/c"), b"2", -1)).await;
        t.events(&mut w).await;
        // Watch removal on a bad path and with an undefined type.
        t.call(&mut w, Request::RemoveWatches(wt(t.p("bad/"), WatcherType::Any))).await;
        t.call_or_closed(&mut w, Request::CheckWatches(WatchTypeRequest { path: t.p("n"), watcher_type: 9 })).await;
    })
    .await;
}

/// The system subtree every ZooKeeper has: /zookeeper, its quota and config
/// nodes, their stats and ACLs, and what a client may do to them. Nothing
/// here writes: the oracle is shared, and a child created under /zookeeper
/// would move its cversion and pzxid for every later run. (/zookeeper's own
/// stat is therefore not compared: cversion -2 on a fresh server, as the
/// coordinator has it, but any client may have moved it on the oracle.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_nodes() {
    differential("system", async |t: &mut Run| {
        let mut s = t.connect().await;
        t.call(&mut s, get_children("/zookeeper", false)).await;
        for p in ["/zookeeper/quota", "/zookeeper/config"] {
            t.call(&mut s, get_data(p, false)).await;
            t.call(&mut s, get_children2(p, false)).await;
            t.call(&mut s, path_req(OpCode::GetAcl, p)).await;
        }
        t.call(&mut s, set_data("/zookeeper/config", b"x", -1)).await;
        t.call(&mut s, delete("/zookeeper/config", -1)).await;
        t.call(&mut s, delete("/zookeeper", -1)).await;
        t.call(&mut s, delete("/zookeeper/quota", 5)).await;
    })
    .await;
}

/// `check` (opcode 13) on its own, outside a multi: no ZooKeeper client
/// sends it, and Apache ZooKeeper 3.8.0 never answers it (its final request
/// processor has no case for it), leaving the client waiting. The coordinator
/// answers it as the version check it is, so a client that sends it learns
/// something instead of timing out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_check_is_answered_only_by_the_coordinator() {
    for server in Server::ALL {
        let running = server.start();
        within("lone check", async {
            let mut c = Client::connect(running.addr, ConnectOptions::default()).await.unwrap();
            let path = format!("/{}", testkit::unique("check"));
            assert_eq!(c.call(&create(&path, b"", CreateMode::Ephemeral)).await.unwrap().err, 0);
            c.set_io_timeout(Duration::from_secs(3));
            let ok = c.call(&Request::Check(CheckVersionRequest { path: path.clone(), version: 0 })).await;
            match server {
                Server::Coordinator => {
                    assert_eq!(ok.unwrap().err, 0, "right version");
                    let bad = c.call(&Request::Check(CheckVersionRequest { path, version: 5 })).await.unwrap();
                    assert_eq!(bad.err, ErrorCode::BadVersion.as_i32(), "wrong version");
                }
                Server::ZooKeeper => {
                    assert!(matches!(ok, Err(zk_wire::client::ClientError::Timeout(_))), "ZooKeeper answered: {ok:?}");
                }
            }
        })
        .await;
    }
}

/// reconfig on a single server with reconfiguration disabled, as both are:
/// refused with ReconfigDisabled, and the connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfig_is_disabled_on_both() {
    for server in Server::ALL {
        let running = server.start();
        within("reconfig", async {
            let mut c = Client::connect(running.addr, ConnectOptions::default()).await.unwrap();
            // ReconfigRequest: joiningServers, leavingServers, newMembers, curConfigId.
            let mut body = RequestHeader { xid: 9, op: OpCode::Reconfig.as_i32() }.to_bytes();
            Some(b"server.2=127.0.0.1:2888:3888".to_vec()).write(&mut body);
            Option::<Vec<u8>>::None.write(&mut body);
            Option::<Vec<u8>>::None.write(&mut body);
            (-1i64).write(&mut body);
            let mut frame = (body.len() as i32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            c.send_raw(&frame).await.unwrap();
            c.expect_reply(9, OpCode::Reconfig);
            let r = c.wait_reply(9).await.unwrap();
            assert_eq!(r.err, ErrorCode::ReconfigDisabled.as_i32(), "{server:?}");
            assert_eq!(c.call(&exists("/", false)).await.unwrap().err, 0, "{server:?}: connection still serves");
        })
        .await;
    }
}

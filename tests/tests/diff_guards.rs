//! Differential tests of the guards a server keeps against clients that ask
//! for more than they may have: watch events on nodes the watcher may not
//! read, and TTL creates that ZooKeeper refuses. Same harness and rules as
//! `differential.rs`: both transcripts must match line for line.

#[path = "diff_harness.rs"]
mod harness;

use harness::*;
use zk_wire::consts::{perms, AddWatchMode, CreateMode, OpCode};
use zk_wire::records::*;
use zk_wire::Request;

fn acl(perms: i32, scheme: &str, id: &str) -> Acl {
    Acl { perms, id: Id { scheme: scheme.into(), id: id.into() } }
}

/// A watch is told of a change only when the watcher may READ the node the
/// event names, checked when the event is delivered (the fix of
/// CVE-2024-23944 in ZooKeeper 3.8.4, which Debian's 3.8 carries): a
/// recursive watch above a protected subtree must not leak the names and
/// changes of nodes whose getChildren/getData the watcher is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_only_what_the_watcher_may_read() {
    differential("watch-acl", async |t: &mut Run| {
        let mut owner = t.connect().await;
        let mut stranger = t.connect().await;
        let mut friend = t.connect().await;
        t.call(&mut owner, auth("digest", b"alice:secret")).await;
        t.call(&mut friend, auth("digest", b"alice:secret")).await;
        let mine = || vec![acl(perms::ALL, "auth", "")];
        t.call(&mut owner, create_acl(&t.p("secret"), b"", mine())).await;
        t.call(&mut owner, create_acl(&t.p("secret/closed"), b"", mine())).await;
        t.call(&mut owner, create(&t.p("secret/open"), b"", CreateMode::Persistent)).await;
        // Write-only for strangers: they may change it but not read it.
        let write_only = vec![acl(perms::WRITE, "world", "anyone"), acl(perms::ALL, "auth", "")];
        t.call(&mut owner, create_acl(&t.p("wo"), b"", write_only)).await;
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

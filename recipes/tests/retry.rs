//! The retries' hard case against both servers: a request the server
//! applied whose reply is lost with the connection (what a leader's death
//! does to a request in flight). A blind retry then meets its own work;
//! `create_owned` and `set_data_versioned` recognise it.

mod common;

use std::time::Duration;

use common::for_both;
use testkit::proxy::ZkProxy;
use testkit::unique;
use tokio::time::Instant;
use zk_recipes::retry::{create_owned, set_data_versioned};
use zk_recipes::session::Client;
use zk_recipes::ZkError;
use zookeeper_async::{Acl, CreateMode};

async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("not done within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_whose_reply_was_lost_is_recognised_as_ours() {
    for_both(|addr| async move {
        let proxy = ZkProxy::start(addr.parse().expect("addr")).await;
        let c = Client::connect(&proxy.connect_string(), Duration::from_secs(10), Duration::from_secs(10))
            .await
            .expect("connect");
        let root = format!("/{}", unique("retry"));
        within(Duration::from_secs(10), c.zk.create(&root, vec![], Acl::open_unsafe().clone(), CreateMode::Persistent))
            .await
            .expect("root");

        // Without the check: the create is applied, its reply lost, and
        // the retry is told NodeExists about our own node.
        let blind = format!("{root}/blind");
        proxy.lose_next_reply();
        let first = within(
            Duration::from_secs(10),
            c.zk.create(&blind, b"mine".to_vec(), Acl::open_unsafe().clone(), CreateMode::Persistent),
        )
        .await;
        assert_eq!(first, Err(ZkError::ConnectionLoss));
        assert!(c.wait_live(Duration::from_secs(10)).await);
        let again = within(
            Duration::from_secs(10),
            c.zk.create(&blind, b"mine".to_vec(), Acl::open_unsafe().clone(), CreateMode::Persistent),
        )
        .await;
        assert_eq!(again, Err(ZkError::NodeExists), "the lost create was not applied: the drill proves nothing");

        // create_owned: the same loss, recognised.
        let task = format!("{root}/task");
        proxy.lose_next_reply();
        let made = within(
            Duration::from_secs(15),
            create_owned(&c.zk, &task, b"mine", Acl::open_unsafe(), Instant::now() + Duration::from_secs(10)),
        )
        .await;
        assert_eq!(made, Ok(task.clone()));

        // Someone else's node under the name is a real NodeExists.
        let taken = format!("{root}/taken");
        within(
            Duration::from_secs(10),
            c.zk.create(&taken, b"theirs".to_vec(), Acl::open_unsafe().clone(), CreateMode::Persistent),
        )
        .await
        .expect("create");
        let clash = within(
            Duration::from_secs(15),
            create_owned(&c.zk, &taken, b"mine", Acl::open_unsafe(), Instant::now() + Duration::from_secs(10)),
        )
        .await;
        assert_eq!(clash, Err(ZkError::NodeExists));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_versioned_set_whose_reply_was_lost_is_recognised_as_ours() {
    for_both(|addr| async move {
        let proxy = ZkProxy::start(addr.parse().expect("addr")).await;
        let c = Client::connect(&proxy.connect_string(), Duration::from_secs(10), Duration::from_secs(10))
            .await
            .expect("connect");
        let path = format!("/{}", unique("retry-set"));
        within(
            Duration::from_secs(10),
            c.zk.create(&path, b"v0".to_vec(), Acl::open_unsafe().clone(), CreateMode::Persistent),
        )
        .await
        .expect("create");

        proxy.lose_next_reply();
        let set = within(
            Duration::from_secs(15),
            set_data_versioned(&c.zk, &path, b"v1", 0, Instant::now() + Duration::from_secs(10)),
        )
        .await
        .expect("our own write, recognised");
        assert_eq!(set.version, 1);

        // A write by someone else in between is a real conflict.
        within(Duration::from_secs(10), c.zk.set_data(&path, b"other".to_vec(), None)).await.expect("set");
        let conflict = within(
            Duration::from_secs(15),
            set_data_versioned(&c.zk, &path, b"v2", 1, Instant::now() + Duration::from_secs(10)),
        )
        .await;
        assert_eq!(conflict.map(|s| s.version), Err(ZkError::BadVersion));
    })
    .await;
}

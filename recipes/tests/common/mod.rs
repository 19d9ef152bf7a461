//! What the recipe suites share.

use testkit::Server;

/// Runs `f` against each server in turn (this workspace's coordinator and
/// Apache ZooKeeper), given its connect string: a recipe must behave the
/// same on both.
pub async fn for_both<F, Fut>(f: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for server in Server::ALL {
        let running = server.start();
        println!("-- {server:?}");
        f(running.connect_string()).await;
    }
}

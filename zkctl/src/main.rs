//! Operator CLI over the ZooKeeper protocol.

fn main() {}

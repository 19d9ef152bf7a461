//! ZooKeeper recipes on zookeeper-async: lock, leader election, config watch, registry, task status.

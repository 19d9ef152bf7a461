//! Scenario 1 front service: accepts tasks over gRPC and learns results through znode watches.

fn main() {}

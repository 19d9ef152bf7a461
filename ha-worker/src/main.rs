//! Scenario 4: active/standby worker under leader election, fenced by term.

fn main() {}

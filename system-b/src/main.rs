//! Scenario 1+2 back service: consumes tasks from RabbitMQ and applies them under a fenced lock.

fn main() {}

//! Shared plumbing for the demo services: telemetry, config, live config, registry, RabbitMQ.

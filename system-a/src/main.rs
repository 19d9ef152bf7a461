//! `system-a`: the task front end (scenario 1). This file only reads the
//! command line; the service is the library (see `lib.rs` for its map).
//!
//! `system-a` serves; `system-a submit ...` is a small client for the
//! shell. Stdout: `system-a listening on <addr>`, then `system-a connected
//! to RabbitMQ` each time the publishing channel is (re)established.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use servicekit::CommonArgs;
use system_a::edge::WatchLimits;
use system_a::proto::SubmitRequest;
use system_a::server::{self, Config};

#[derive(Parser, Debug)]
#[command(
    name = "system-a",
    version,
    about = "Task front end: gRPC in, RabbitMQ out, result back through a znode watch"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    q: servicekit::QueueArgs,
    /// gRPC listen address.
    #[arg(long, env = "SYSTEM_A_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Finished task nodes older than this are deleted, and a request id
    /// is forgotten with its task.
    #[arg(long, env = "TASK_RETENTION_SECS", default_value_t = 600)]
    task_retention_secs: u64,
    /// Watch streams served at once; one more is RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_WATCH_STREAMS", default_value_t = 4096)]
    max_watch_streams: usize,
    /// Watch streams served at once to one caller address.
    #[arg(long, env = "MAX_WATCH_STREAMS_PER_PEER", default_value_t = 256)]
    max_watch_streams_per_peer: usize,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Submit one task to a running system-a and print the result.
    Submit {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        #[arg(long)]
        entity: String,
        #[arg(long, default_value_t = 1)]
        amount: i64,
        #[arg(long, default_value = "add")]
        op: String,
        /// The idempotency key: run the command again with the same one
        /// (printed either way) and it is the same task, never a second.
        #[arg(long)]
        request_id: Option<String>,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    servicekit::telemetry::init(env!("CARGO_BIN_NAME"), args.common.log_json);
    let result = match args.cmd {
        Some(Cmd::Submit { server, entity, amount, op, request_id }) => {
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            system_a::client::submit(&server, SubmitRequest { entity, op, amount, request_id }).await
        }
        None => serve(args).await,
    };
    servicekit::telemetry::shutdown(Duration::from_secs(1));
    if let Err(e) = result {
        eprintln!("system-a: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("--listen {}", args.listen))?;
    let config = Config {
        common: args.common,
        queue: args.q,
        task_retention: Duration::from_secs(args.task_retention_secs),
        watch_limits: WatchLimits { total: args.max_watch_streams, per_peer: args.max_watch_streams_per_peer },
    };
    let stop = servicekit::shutdown_token();
    // A stop is bounded whatever the servers do: in-flight Submits are
    // accepted tasks (the outbox has them), so ending them costs no task.
    servicekit::exit_after(&stop, Duration::from_millis(1500));
    server::run(config, listener, stop.cancelled_owned()).await
}

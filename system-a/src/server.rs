//! system-a as a server: [`run`] connects, registers, starts the background
//! tasks (the publishing channel, the outbox drain, the reaper), serves
//! metrics on `--metrics-listen` if set, and serves
//! gRPC on a listener the caller bound (port 0 in tests), until `shutdown`.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use futures::Stream;
use opentelemetry::propagation::Extractor;
use servicekit::{CommonArgs, QueueArgs};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::edge::{WatchLimits, MAX_REQUEST_BYTES};
use crate::proto::tasks_server::{Tasks, TasksServer};
use crate::proto::{SubmitReply, SubmitRequest, WatchRequest};
use crate::submit::Submitter;
use crate::watch::{UpdateStream, Watches};
use crate::{outbox, publisher, reaper};

/// Everything `run` needs besides the listener.
pub struct Config {
    pub common: CommonArgs,
    pub queue: QueueArgs,
    /// Finished task nodes (and their request ids) older than this are
    /// deleted.
    pub task_retention: Duration,
    pub watch_limits: WatchLimits,
}

/// The gRPC service: each call goes to the flow that does it.
struct Service {
    submitter: Submitter,
    watches: Watches,
}

#[tonic::async_trait]
impl Tasks for Service {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.submitter.submit(request, &CallerMetadata(metadata)).await.map(Response::new)
    }

    type WatchStream = UpdateStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<UpdateStream>, Status> {
        let peer = request.remote_addr();
        self.watches.watch(request.into_inner().task_id, peer).await.map(Response::new)
    }
}

/// A caller's gRPC metadata as a W3C trace context carrier: its
/// `traceparent` and `tracestate`, if it sent them (the Submit continues
/// its trace). Binary entries are no trace context.
struct CallerMetadata(tonic::metadata::MetadataMap);

impl Extractor for CallerMetadata {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        let ascii = |k| match k {
            tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
            tonic::metadata::KeyRef::Binary(_) => None,
        };
        self.0.keys().filter_map(ascii).collect()
    }
}

/// Serves system-a on `listener` until `shutdown` completes. Prints
/// `system-a listening on <addr>` once it serves.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Config { common, queue, task_retention, watch_limits } = config;
    let stop = CancellationToken::new();
    // Background tasks stop with the server, however `run` returns.
    let _stop_all = stop.clone().drop_guard();
    let mut metrics = servicekit::metrics::Metrics::new();
    let own = crate::metrics::Metrics::register(metrics.registry());
    let common_metrics = metrics.common.clone();
    let client = common.connect_zk().await?;
    metrics.serve(common.metrics_listen, &client, stop.clone()).await?;
    let layout = common.layout();
    let addr = listener.local_addr()?;
    let status =
        servicekit::status::Status::new(serde_json::json!({"pid": std::process::id(), "grpc": addr.to_string()}));
    let settings =
        servicekit::live_config(&client, &layout.config(servicekit::auth::SYSTEM_A), &status, &common_metrics);
    let registration = common.register(&client, servicekit::auth::SYSTEM_A, &common.instance_id(), &status).await?;

    let (tasks, outbox_dir) = (layout.tasks(), layout.outbox());
    let channel = publisher::ChannelSlot::default();
    tokio::spawn(publisher::keep_channel(queue.broker()?, queue.queue.clone(), channel.clone(), stop.clone()));
    tokio::spawn(outbox::drain(
        client.clone(),
        outbox_dir.clone(),
        tasks.clone(),
        channel.clone(),
        queue.queue.clone(),
        own.clone(),
        stop.clone(),
    ));
    tokio::spawn(reaper::run(client.clone(), tasks.clone(), outbox_dir.clone(), task_retention, stop.clone()));

    let service = Service {
        submitter: Submitter {
            client: client.clone(),
            tasks: tasks.clone(),
            outbox: outbox_dir,
            policy: common.policy(),
            queue: queue.queue,
            channel,
            settings,
            metrics: own,
        },
        watches: Watches::new(client, tasks, watch_limits),
    };
    // A request larger than any valid one is refused by the transport
    // (RESOURCE_EXHAUSTED) before it is decoded.
    let grpc = TasksServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);
    println!("system-a listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(grpc)
        .serve_with_incoming_shutdown(connections(listener), shutdown)
        .await
        .context("serving gRPC")?;
    registration.deregister().await;
    Ok(())
}

/// The bound listener as the stream of connections tonic serves (each
/// knows its peer's address: the Watch limit counts by it).
fn connections(listener: TcpListener) -> impl Stream<Item = Result<TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

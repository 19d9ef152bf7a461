//! A task traced across services: system-a's Submit, the AMQP message and
//! system-b's work on it are one W3C trace, exported over OTLP/gRPC to a
//! real receiver (the collector's `TraceService` from opentelemetry-proto,
//! served by tonic in this test), and off, with no cost and no connection,
//! when no endpoint is configured.
//!
//! On the coordinator only: the trace context travels in gRPC metadata,
//! AMQP headers and the outbox entry's data, never through anything a
//! ZooKeeper server does differently (the scenarios suite runs the task
//! path on both servers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::{
    start_coordinator, start_system_a_on, start_system_b_with_env, start_unpublishing_system_a, Place, Proc, TempDir,
};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use zk_recipes::session::Client;
use zookeeper_async::{Acl, CreateMode};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    /// The resource's `service.name`.
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    trace_state: String,
    attributes: HashMap<String, String>,
}

impl Got {
    fn task_id(&self) -> Option<&str> {
        self.attributes.get("task_id").map(String::as_str)
    }
}

/// An OTLP/gRPC trace receiver: the collector's service, keeping every
/// span, and counting the connections made to it.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
    connections: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Got {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    trace_state: span.trace_state,
                    attributes: attributes(&span.attributes),
                });
            }
        }
        self.spans.lock().expect("spans").extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on `listener` until the test ends.
    fn serve(&self, listener: tokio::net::TcpListener) {
        let connections = self.connections.clone();
        let incoming = futures::stream::unfold(listener, move |l| {
            let connections = connections.clone();
            async move {
                let accepted = l.accept().await.map(|(s, _)| s);
                connections.fetch_add(1, Ordering::SeqCst);
                Some((accepted, l))
            }
        });
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().expect("spans").clone()
    }

    /// Waits until `found` finds what it looks for among the spans so far.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Got]) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if let Some(t) = found(&spans) {
                return t;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no {what} within 20 s; spans received: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    let shown = |kv: &KeyValue| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    };
    kvs.iter().filter_map(|kv| Some((kv.key.clone(), shown(kv)?))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of the task `id`'s trace: those named by its id (the Submit,
/// system-b's task, an outbox publish) fix the trace id; then every span of
/// that trace.
fn trace_of(spans: &[Got], id: &str) -> Vec<Got> {
    let Some(trace) = spans.iter().find(|s| s.task_id() == Some(id)).map(|s| s.trace_id.clone()) else {
        return Vec::new();
    };
    spans.iter().filter(|s| s.trace_id == trace).cloned().collect()
}

/// The ancestors of `span` in `spans`, nearest first, as far as the chain
/// goes (a parent never exported, or a root, ends it).
fn ancestors<'a>(spans: &'a [Got], span: &Got) -> Vec<&'a Got> {
    let mut chain = Vec::new();
    let mut parent = span.parent.clone();
    while let Some(p) = spans.iter().find(|s| !parent.is_empty() && s.span_id == parent) {
        chain.push(p);
        parent = p.parent.clone();
        assert!(chain.len() < 64, "a cycle in the parent chain of {span:?}");
    }
    chain
}

/// The task's node is final (`done` expected).
async fn done(c: &Client, root: &str, id: &str) -> serde_json::Value {
    let (node, _) = e2e_tests::final_task_node(c, &format!("{root}/tasks/{id}"), Duration::from_secs(20)).await;
    assert_eq!(node["status"], "done", "task {id}: {node}");
    node
}

/// The environment of a traced service: the receiver's address, a short
/// batch delay so spans arrive within a test's patience.
fn traced(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()), ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string())]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Whether the process runs the trace exporter's batch thread (its name,
/// as the kernel keeps it, cut to 15 bytes).
fn runs_exporter_thread(p: &Proc) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", p.pid())).expect("the process's threads");
    tasks.filter_map(Result::ok).any(|t| {
        std::fs::read_to_string(t.path().join("comm")).is_ok_and(|name| name.trim().starts_with("OpenTelemetry"))
    })
}

async fn submit(grpc: &mut TasksClient<tonic::transport::Channel>, entity: &str, parent: Option<&str>) -> String {
    let mut request =
        tonic::Request::new(SubmitRequest { entity: entity.into(), op: "add".into(), amount: 1, ..Default::default() });
    if let Some(parent) = parent {
        request.metadata_mut().insert("traceparent", parent.parse().expect("ascii"));
        request.metadata_mut().insert("tracestate", "client=1".parse().expect("ascii"));
    }
    let reply = tokio::time::timeout(Duration::from_secs(20), grpc.submit(request)).await.expect("in time");
    let reply = reply.expect("submit").into_inner();
    assert_eq!(reply.status, "done", "{reply:?}");
    reply.task_id
}

/// Publishes a message for task `id` to `queue` by hand, with `headers`, as
/// whoever may publish there (a forger, or a system-a of another build).
async fn publish_with_headers(ch: &lapin::Channel, queue: &str, id: &str, headers: FieldTable) {
    let body = task_contract::TaskMessage::new(id).encode();
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let sent = async {
        ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, props)
            .await
            .expect("publish")
            .await
            .expect("confirm")
    };
    tokio::time::timeout(Duration::from_secs(10), sent).await.expect("published in time");
}

/// A pending task `id` created by hand (the tree is open: no identities).
async fn plant_task(c: &Client, root: &str, id: &str, entity: &str) {
    let node = task_contract::TaskNode::pending(entity, task_contract::Op::Add, 1).encode();
    let path = format!("{root}/tasks/{id}");
    let created = c.zk.create(&path, node, Acl::open_unsafe().clone(), CreateMode::Persistent);
    tokio::time::timeout(Duration::from_secs(10), created).await.expect("in time").expect("task node");
}

fn string_header(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_is_one_trace_from_system_a_through_rabbitmq_into_system_b() {
    let dir = TempDir::new("tracing");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let receiver = Receiver::default();
    receiver.serve(listener);

    let (_server, zk) = start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("traced"));
    let queue = testkit::broker::queue_name("tasks");
    let env = traced(&endpoint);
    let b =
        start_system_b_with_env(&zk, &root, &queue, &dir.path().join("store"), "b1", 4000, &env_refs(&env), dir.path());
    // system-a logs JSON: the trace id must be in both formats.
    let (a, addr) =
        start_system_a_on(&Place::Loopback, &zk, &root, &queue, &["--log-json"], &env_refs(&env), dir.path());
    assert!(runs_exporter_thread(&a) && runs_exporter_thread(&b), "the exporter is not running with an endpoint set");
    let mut grpc = TasksClient::connect(format!("http://{addr}")).await.expect("gRPC");
    let c = Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");

    // 1. One task: A's Submit and B's work are one trace, B's spans under
    //    A's Submit, each service under its own name.
    let started = Instant::now();
    let id = submit(&mut grpc, "acct", None).await;
    let names = ["submit", "publish", "task", "lock_wait", "store_apply", "result_write", "ack"];
    let trace = receiver
        .wait_for("span of each step of the task", |spans| {
            let trace = trace_of(spans, &id);
            names.iter().all(|n| trace.iter().any(|s| s.name == *n)).then_some(trace)
        })
        .await;
    println!("one task's {} spans arrived {:?} after its Submit", trace.len(), started.elapsed());
    let submit_span = trace.iter().find(|s| s.name == "submit").expect("the Submit's span");
    assert_eq!(submit_span.service, "system-a");
    assert!(submit_span.parent.is_empty(), "a Submit without a caller's context starts the trace: {submit_span:?}");
    assert_eq!(submit_span.task_id(), Some(id.as_str()));
    for name in ["task", "lock_wait", "store_apply", "result_write", "ack"] {
        let span = trace.iter().find(|s| s.name == name).expect("span");
        assert_eq!(span.service, "system-b", "{span:?}");
        let chain = ancestors(&trace, span);
        assert!(
            chain.iter().any(|s| s.span_id == submit_span.span_id),
            "system-b's {name} span does not lead to system-a's Submit: {chain:#?}"
        );
    }
    let task_span = trace.iter().find(|s| s.name == "task").expect("task span");
    let parent = ancestors(&trace, task_span)[0];
    assert_eq!((parent.name.as_str(), parent.service.as_str()), ("publish", "system-a"), "B's task under A's publish");
    for name in ["lock_wait", "store_apply", "result_write", "ack"] {
        let span = trace.iter().find(|s| s.name == name).expect("span");
        assert_eq!(ancestors(&trace, span)[0].span_id, task_span.span_id, "{name} is not a child of B's task span");
    }
    // The logs carry it: system-b's line for the applied task (text), and
    // system-a's answer (JSON).
    let tagged = format!("trace_id={}", submit_span.trace_id);
    let b_line = b.log_text().lines().find(|l| l.contains("applied") && l.contains(&id)).map(str::to_string);
    assert!(b_line.as_deref().is_some_and(|l| l.contains(&tagged)), "system-b's log line lacks {tagged}: {b_line:?}");
    let tagged = format!(r#""trace_id":"{}""#, submit_span.trace_id);
    let a_line = a.log_text().lines().find(|l| l.contains("task answered") && l.contains(&id)).map(str::to_string);
    assert!(
        a_line.as_deref().is_some_and(|l| l.contains(&tagged)),
        "system-a's JSON log line lacks {tagged}: {a_line:?}"
    );

    // 2. A caller's traceparent: the Submit continues that trace, and
    //    system-b's work with it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let id = submit(&mut grpc, "acct", Some(&format!("00-{caller_trace}-{caller_span}-01"))).await;
    let trace = receiver
        .wait_for("trace continuing the caller's", |spans| {
            let trace = trace_of(spans, &id);
            (trace.iter().any(|s| s.name == "submit") && trace.iter().any(|s| s.name == "ack")).then_some(trace)
        })
        .await;
    let submit_span = trace.iter().find(|s| s.name == "submit").expect("the Submit's span");
    assert_eq!(submit_span.trace_id, caller_trace, "the Submit did not continue the caller's trace");
    assert_eq!(submit_span.parent, caller_span, "the Submit's parent is not the caller's span");
    assert_eq!(submit_span.trace_state, "client=1", "the caller's tracestate was not kept");
    assert!(trace.iter().any(|s| s.service == "system-b" && s.name == "task"), "system-b's task is not in the trace");

    // 2b. `system-a submit`, the shell's client, roots the trace itself
    //     and prints its id.
    let out = std::process::Command::new(e2e_tests::binary("system-a"))
        .args(["submit", "--server", &format!("http://{addr}"), "--entity", "acct"])
        .envs(env_refs(&env))
        .output()
        .expect("run system-a submit");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "system-a submit failed: {printed}{}", String::from_utf8_lossy(&out.stderr));
    let shell_trace = printed.lines().find_map(|l| l.strip_prefix("trace ")).expect("the trace id printed").to_string();
    let (call, submit_span) = receiver
        .wait_for("the shell client's span and the Submit under it", |spans| {
            let call = spans.iter().find(|s| s.name == "submit_call" && s.trace_id == shell_trace)?;
            let submit = spans.iter().find(|s| s.name == "submit" && s.trace_id == shell_trace)?;
            Some((call.clone(), submit.clone()))
        })
        .await;
    assert!(call.parent.is_empty(), "the shell's call is not the trace's root: {call:?}");
    assert_eq!(submit_span.parent, call.span_id, "the Submit is not the child of the shell's call");

    // 3. A context system-b cannot trust: a malformed traceparent, a
    //    traceparent of another type, an oversized one, are each ignored
    //    (the task's span starts its own trace) and the task is done; a
    //    valid traceparent with an oversized tracestate is continued
    //    without the state.
    let amqp = e2e_tests::rabbitmq().await;
    let ch = amqp.create_channel().await.expect("channel");
    ch.confirm_select(Default::default()).await.expect("confirms");
    let valid = format!("00-{caller_trace}-{caller_span}-01");
    let long_state = (0..20).map(|i| format!("vendor{i}={}", "v".repeat(30))).collect::<Vec<_>>().join(",");
    let untrusted: Vec<(&str, Vec<(&str, AMQPValue)>)> = vec![
        ("malformed", vec![("traceparent", string_header("00-not-a-trace-context-01"))]),
        ("all-zero", vec![("traceparent", string_header(&format!("00-{}-{caller_span}-01", "0".repeat(32))))]),
        ("number", vec![("traceparent", AMQPValue::LongLongInt(42))]),
        // A later version may have more fields, so the propagator alone
        // would take this one: only the bound refuses it.
        (
            "oversized",
            vec![("traceparent", string_header(&format!("01-{caller_trace}-{caller_span}-01-{}", "f".repeat(600))))],
        ),
        // 20 valid members, which the propagator alone would keep.
        ("state-oversized", vec![("traceparent", string_header(&valid)), ("tracestate", string_header(&long_state))]),
    ];
    for (case, headers) in &untrusted {
        let id = testkit::unique(case);
        plant_task(&c, &root, &id, "forged").await;
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        publish_with_headers(&ch, &queue, &id, table).await;
        done(&c, &root, &id).await;
        let task_span = receiver
            .wait_for("system-b task span", |spans| {
                spans.iter().find(|s| s.name == "task" && s.task_id() == Some(id.as_str())).cloned()
            })
            .await;
        if *case == "state-oversized" {
            assert_eq!(task_span.trace_id, caller_trace, "a valid traceparent was dropped with its oversized state");
            assert_eq!(task_span.trace_state, "", "an oversized tracestate was passed on");
        } else {
            assert!(task_span.parent.is_empty(), "{case}: the task continued an untrusted context: {task_span:?}");
            assert_ne!(task_span.trace_id, caller_trace, "{case}");
            assert_eq!(task_span.trace_id.len(), 32, "{case}: {task_span:?}");
        }
    }

    // 4. The outbox: a task accepted by a system-a that cannot reach the
    //    broker is published by another system-a's drain, and still joins
    //    its Submit's trace.
    let (_dark, dark_addr) = start_unpublishing_system_a(&zk, &root, &queue, &env_refs(&env), dir.path());
    let mut dark_grpc = TasksClient::connect(format!("http://{dark_addr}")).await.expect("gRPC");
    let dark_trace = "0af7651916cd43dd8448eb211c80319c";
    let id = submit(&mut dark_grpc, "acct", Some(&format!("00-{dark_trace}-b7ad6b7169203331-01"))).await;
    let trace = receiver
        .wait_for("trace of the task published from the outbox", |spans| {
            let trace = trace_of(spans, &id);
            // The outbox's publish comes from the other system-a, in a
            // batch of its own: wait for it too, not only for the ends.
            let published =
                trace.iter().any(|s| s.name == "publish" && s.attributes.get("from").is_some_and(|f| f == "outbox"));
            (trace.iter().any(|s| s.name == "submit") && trace.iter().any(|s| s.name == "ack") && published)
                .then_some(trace)
        })
        .await;
    let submit_span = trace.iter().find(|s| s.name == "submit").expect("the Submit's span");
    assert_eq!(submit_span.trace_id, dark_trace);
    let task_span = trace.iter().find(|s| s.name == "task").expect("system-b's task span");
    let chain = ancestors(&trace, task_span);
    let publisher = chain.first().expect("the task's parent");
    assert_eq!(
        (publisher.name.as_str(), publisher.attributes.get("from").map(String::as_str)),
        ("publish", Some("outbox")),
        "the task was not published from the outbox: {chain:#?}"
    );
    assert!(
        chain.iter().any(|s| s.span_id == submit_span.span_id),
        "the outbox publish does not lead to the Submit that accepted the task: {chain:#?}"
    );
    assert!(receiver.connections.load(Ordering::SeqCst) > 0, "the checker below counts no connection ever");
    let _ = amqp.close(0, "bye".into()).await;
}

/// With no endpoint, nothing is exported, nothing connects (the receiver
/// listens where an exporter with no endpoint would go, OTLP/gRPC's default
/// 127.0.0.1:4317), no exporter thread runs, logs carry no trace id, and
/// tasks are done as ever; with an endpoint where no collector answers,
/// tasks are done as fast as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_endpoint_nothing_connects_and_with_no_collector_tasks_still_run() {
    let dir = TempDir::new("untraced");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:4317").await.unwrap_or_else(|e| {
        panic!("127.0.0.1:4317 (OTLP/gRPC's default port) is taken ({e}): this test listens there to see that nothing connects")
    });
    let receiver = Receiver::default();
    receiver.serve(listener);

    let (_server, zk) = start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("untraced"));
    let queue = testkit::broker::queue_name("tasks");
    // Set but empty, whatever this test's own environment holds.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let b = start_system_b_with_env(&zk, &root, &queue, &dir.path().join("store"), "b1", 4000, &env, dir.path());
    let (a, addr) = start_system_a_on(&Place::Loopback, &zk, &root, &queue, &[], &env, dir.path());
    let mut grpc = TasksClient::connect(format!("http://{addr}")).await.expect("gRPC");
    let c = Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    let mut ids = Vec::new();
    for parent in [None, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")] {
        ids.push(submit(&mut grpc, "acct", parent).await);
    }
    for id in &ids {
        done(&c, &root, id).await;
    }
    // Ten batch delays: an exporter would have sent by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.connections.load(Ordering::SeqCst), 0, "a service connected with no endpoint set");
    assert!(receiver.spans().is_empty(), "spans were exported with no endpoint set");
    assert!(!runs_exporter_thread(&a) && !runs_exporter_thread(&b), "an exporter thread runs with no endpoint set");
    for p in [&a, &b] {
        assert!(!p.log_text().contains("trace_id="), "{} logs a trace id with traces off", p.name);
        assert!(
            p.log_text().contains(&ids[0]),
            "{}'s log does not show the task: the check above proves nothing",
            p.name
        );
    }

    // A collector that is away costs the spans, never a task: a system-a
    // exporting to a port nothing listens on answers as fast as ever, and
    // says why its spans are lost.
    let away = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let endpoint = format!("http://{}", away.local_addr().expect("addr"));
    drop(away);
    let env = traced(&endpoint);
    let (away, addr) = start_system_a_on(&Place::Loopback, &zk, &root, &queue, &[], &env_refs(&env), dir.path());
    let mut grpc = TasksClient::connect(format!("http://{addr}")).await.expect("gRPC");
    for _ in 0..3 {
        let started = Instant::now();
        let id = submit(&mut grpc, "acct", None).await;
        done(&c, &root, &id).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a task took {:?} with the collector away",
            started.elapsed()
        );
    }
    let started = Instant::now();
    while !away.log_text().contains("ExportError") {
        assert!(started.elapsed() < Duration::from_secs(10), "no word of the lost spans:\n{}", away.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

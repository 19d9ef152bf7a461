//! `zkctl`: look at and change a coordination server from the shell.
//!
//! It speaks the ZooKeeper protocol through zookeeper-async, so it works the
//! same against the coordinator and against an Apache ZooKeeper ensemble.
//! Every command is one short session, except `watch`, which keeps one open
//! and prints each change until interrupted.
//!
//! It acts as the identity of `--zk-credentials-file` (or `ZK_CREDENTIALS_FILE`,
//! or `ZK_AUTH`): the operator's to lay out the tree (`init`) and change
//! config. There is deliberately no `--auth user:password`: a password in a
//! command line is readable by every local user through `ps`. A refusal is
//! one line naming the identity needed (docs/security.md).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use servicekit::layout::Layout;
use zk_wire::path::join;
use zookeeper_async::{CreateMode, WatchedEventType, ZkError, ZooKeeper};

mod identities;

const EXAMPLES: &str = "\
Examples:
  zkctl tree /                         the whole tree, drawn
  zkctl set /config/system-b '{\"work_ms\":50}' --create
                                       change B's simulated work time, live
  zkctl get /tasks/0b6e…               one task's status
  zkctl watch /config/system-a         print every change until Ctrl-C
  zkctl services                       who is alive, with their metadata
  zkctl --json ls /locks/acct-1        the lock queue, as JSON
  ZK_CREDENTIALS_FILE=.run/identities/operator.cred zkctl init
                                       lay out the tree with least-privilege ACLs";

#[derive(Parser)]
#[command(name = "zkctl", version, about = "Inspect and change a ZooKeeper-protocol server", after_help = EXAMPLES)]
struct Cli {
    /// Connect string (host:port[,host:port...]).
    #[arg(long, env = "ZK_CONNECT", default_value = "127.0.0.1:2181", global = true)]
    zk: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The identity to act as (`operator` to change config): a credentials
    /// file, never a password on the command line, where `ps` would show it.
    #[command(flatten)]
    auth: servicekit::auth::AuthArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a znode's data (and, with --json, its stat).
    Get { path: String },
    /// Set a znode's data.
    Set {
        path: String,
        value: String,
        /// Create the znode (and missing parents) if it does not exist.
        #[arg(long)]
        create: bool,
    },
    /// Create a znode.
    Create {
        path: String,
        #[arg(default_value = "")]
        value: String,
        #[arg(long)]
        ephemeral: bool,
        #[arg(long)]
        sequential: bool,
    },
    /// Delete a znode; -r deletes its subtree first.
    Rm {
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
    /// List a znode's children, sorted.
    Ls { path: String },
    /// Draw the subtree under a path.
    Tree {
        #[arg(default_value = "/")]
        path: String,
    },
    /// Print the data of a znode each time it changes, until Ctrl-C.
    Watch { path: String },
    /// Print a znode's ACL.
    Getacl { path: String },
    /// Lay out the system's tree with least-privilege ACLs (run as the
    /// operator; again after rotating credentials, to re-grant every node).
    Init {
        /// The system's root prefix ("" = /, which then gets an ACL too).
        #[arg(long, env = "ZK_ROOT", default_value = "")]
        root: String,
        /// A second identity to hold while re-granting (its `auth` line
        /// only): the previous operator's file when rotating, or a `super`
        /// file as a break-glass. See docs/security.md.
        #[arg(long, value_name = "PATH")]
        extra_auth_file: Option<std::path::PathBuf>,
    },
    /// Write a fresh set of credentials files, one per role (mode 0600),
    /// into a directory.
    GenCredentials {
        /// Where to write `<role>.cred`.
        dir: std::path::PathBuf,
    },
    /// Write fresh RabbitMQ users for system-a and system-b on one task
    /// queue: `broker-<service>.cred` each (mode 0600) and
    /// `broker-definitions.json` (users with salted hashes, permissions,
    /// the queue's topology) to load with `rabbitmqctl import_definitions`
    /// or RabbitMQ's `load_definitions`. See docs/security.md, "Broker
    /// identities".
    GenBrokerCredentials {
        /// Where to write the files.
        dir: std::path::PathBuf,
        /// The task queue the services use (`--queue` / TASK_QUEUE).
        #[arg(long, default_value = "tasks")]
        queue: String,
        /// Prefix of the user names (`<prefix>system-a`), for several
        /// deployments on one broker; empty for one.
        #[arg(long, default_value = "")]
        user_prefix: String,
    },
    /// Make one deployment's identities, a directory per consumer (what
    /// docker-compose.yml's `identities` service runs on every `up`): the
    /// ZooKeeper credentials of each role, the broker users of system-a and
    /// system-b with the broker's definitions, the admin token, and the
    /// Erlang cookie a RabbitMQ cluster's nodes share. Does nothing when
    /// the set is complete.
    GenIdentities {
        /// Where the consumers' directories are (operator/, system-b/, ...).
        dir: std::path::PathBuf,
        /// Replace a complete set; the operator's old credentials are kept
        /// as operator/previous-operator.cred for the re-grant
        /// (docs/security.md, "Rotating credentials").
        #[arg(long)]
        rotate: bool,
        /// Give every file to UID[:GID], the user the services run as
        /// (needs root); by default the files stay the caller's.
        #[arg(long, value_name = "UID[:GID]", value_parser = identities::parse_owner)]
        owner: Option<(u32, u32)>,
        /// Give the broker's Erlang cookie (rabbitmq/erlang.cookie, 0400,
        /// shared by a RabbitMQ cluster's nodes) to UID[:GID], the broker
        /// image's user (999:999 in the official image); by default
        /// --owner's. Made once and kept, --rotate included.
        #[arg(long, value_name = "UID[:GID]", value_parser = identities::parse_owner)]
        broker_owner: Option<(u32, u32)>,
        /// The task queue the services use (`--queue` / TASK_QUEUE).
        #[arg(long, default_value = "tasks")]
        queue: String,
    },
    /// List registered service instances (under /services) with their metadata.
    Services {
        /// Only this service.
        service: Option<String>,
        /// The registry directory (`<root>/services` of a system under a
        /// root prefix).
        #[arg(long, default_value_t = Layout::new("").services())]
        root: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("zkctl: {e:#}");
        std::process::exit(1);
    }
}

async fn connect(addr: &str, auth: &servicekit::auth::ZkAuth) -> Result<ZooKeeper> {
    let zk = tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(addr, Duration::from_secs(10), |_| {}))
        .await
        .with_context(|| format!("no ZooKeeper server answered at {addr} within 10 s"))?
        .with_context(|| format!("cannot connect to {addr}"))?;
    for (scheme, credentials) in auth.auth_packets() {
        zk.add_auth(scheme, credentials).await.map_err(|e| anyhow::anyhow!("authentication failed: {e:?}"))?;
    }
    Ok(zk)
}

/// A refused or failed operation on a znode, in the line a user sees: it
/// names the znode (and for a refusal, the identity needed) instead of a
/// bare `NoNode`.
#[derive(Debug, thiserror::Error)]
enum ZnodeError {
    #[error("no such znode: {0}")]
    NoNode(String),
    #[error("znode already exists: {0}")]
    Exists(String),
    #[error("{0} has children (use -r)")]
    NotEmpty(String),
    #[error("{}", servicekit::auth::not_allowed(.0))]
    NotAllowed(String),
    #[error("{path}: {error:?}")]
    Other { path: String, error: ZkError },
}

/// The [`ZnodeError`] of `path`, for `map_err`.
fn on(path: &str) -> impl FnOnce(ZkError) -> anyhow::Error + '_ {
    move |e| {
        let path = path.to_string();
        match e {
            ZkError::NoNode => ZnodeError::NoNode(path),
            ZkError::NodeExists => ZnodeError::Exists(path),
            ZkError::NotEmpty => ZnodeError::NotEmpty(path),
            ZkError::NoAuth => ZnodeError::NotAllowed(path),
            error => ZnodeError::Other { path, error },
        }
        .into()
    }
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Data as JSON: parsed when it is JSON (config, task status), else a string.
fn data_json(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or_else(|_| Value::String(text(data)))
}

async fn run(cli: Cli) -> Result<()> {
    if let Cmd::GenCredentials { dir } = &cli.cmd {
        return gen_credentials(dir);
    }
    if let Cmd::GenBrokerCredentials { dir, queue, user_prefix } = &cli.cmd {
        return gen_broker_credentials(dir, queue, user_prefix);
    }
    if let Cmd::GenIdentities { dir, rotate, owner, broker_owner, queue } = &cli.cmd {
        let owners = identities::Owners { services: *owner, broker: *broker_owner };
        return identities::run(dir, *rotate, owners, queue);
    }
    let auth = cli.auth.load()?;
    let policy = auth.policy();
    let zk = connect(&cli.zk, &auth).await?;
    match cli.cmd {
        Cmd::GenCredentials { .. } | Cmd::GenBrokerCredentials { .. } | Cmd::GenIdentities { .. } => {}
        Cmd::Getacl { path } => {
            let (acl, _) = zk.get_acl(&path).await.map_err(on(&path))?;
            for a in acl {
                println!("{}:{}:{}", a.scheme, a.id, a.perms);
            }
        }
        Cmd::Init { root, extra_auth_file } => {
            if policy.is_open() {
                bail!("init needs the operator identity (--zk-credentials-file / ZK_CREDENTIALS_FILE)");
            }
            if let Some(path) = extra_auth_file {
                let (scheme, credentials) =
                    servicekit::auth::ZkAuth::credentials_from_file(&path).context("--extra-auth-file")?.auth_packet();
                zk.add_auth(scheme, credentials).await.map_err(|e| anyhow::anyhow!("authentication failed: {e:?}"))?;
            }
            // Refuses, naming them, nodes planted before the tree had ACLs.
            let report = servicekit::auth::init(&zk, &Layout::new(&root), &policy).await?;
            println!("created {} node(s), ACL set on {} existing node(s)", report.created.len(), report.acl_set.len());
        }
        Cmd::Get { path } => {
            let (data, stat) = zk.get_data(&path, false).await.map_err(on(&path))?;
            if cli.json {
                let out = json!({"path": path, "data": data_json(&data), "version": stat.version,
                    "mzxid": stat.mzxid, "ephemeral_owner": stat.ephemeral_owner, "children": stat.num_children});
                println!("{out}");
            } else {
                println!("{}", text(&data));
            }
        }
        Cmd::Set { path, value, create } => match zk.set_data(&path, value.clone().into_bytes(), None).await {
            Err(ZkError::NoNode) if create => {
                ensure_parents(&zk, &path, &policy).await?;
                zk.create(&path, value.into_bytes(), policy.operator_created(&path), CreateMode::Persistent)
                    .await
                    .map_err(on(&path))?;
            }
            r => {
                r.map_err(on(&path))?;
            }
        },
        Cmd::Create { path, value, ephemeral, sequential } => {
            let mode = match (ephemeral, sequential) {
                (false, false) => CreateMode::Persistent,
                (false, true) => CreateMode::PersistentSequential,
                (true, false) => CreateMode::Ephemeral,
                (true, true) => CreateMode::EphemeralSequential,
            };
            let created =
                zk.create(&path, value.into_bytes(), policy.operator_created(&path), mode).await.map_err(on(&path))?;
            println!("{created}");
        }
        Cmd::Rm { path, recursive } => {
            if recursive {
                delete_tree(&zk, &path).await?;
            } else {
                zk.delete(&path, None).await.map_err(on(&path))?;
            }
        }
        Cmd::Ls { path } => {
            let mut children = zk.get_children(&path, false).await.map_err(on(&path))?;
            children.sort();
            if cli.json {
                println!("{}", json!(children));
            } else {
                for c in children {
                    println!("{c}");
                }
            }
        }
        Cmd::Tree { path } => {
            let tree = load_tree(&zk, &path).await?;
            if cli.json {
                println!("{tree}");
            } else {
                println!("{path}");
                draw(&tree, "");
            }
        }
        Cmd::Watch { path } => watch(&zk, &path, cli.json).await?,
        Cmd::Services { service, root } => {
            let services = match service {
                Some(s) => vec![s],
                None => {
                    let mut s = zk.get_children(&root, false).await.map_err(on(&root))?;
                    s.sort();
                    s
                }
            };
            let mut all = serde_json::Map::new();
            for svc in services {
                let dir = join(&root, &svc);
                let mut instances = zk.get_children(&dir, false).await.map_err(on(&dir))?;
                instances.sort();
                let mut members = serde_json::Map::new();
                for i in instances {
                    // A member may leave between the listing and the read.
                    if let Ok((data, _)) = zk.get_data(&join(&dir, &i), false).await {
                        members.insert(i, data_json(&data));
                    }
                }
                all.insert(svc, Value::Object(members));
            }
            if cli.json {
                println!("{}", Value::Object(all));
            } else {
                for (svc, members) in all {
                    let members = members.as_object().cloned().unwrap_or_default();
                    println!("{svc} ({} alive)", members.len());
                    for (i, meta) in members {
                        println!("  {i}  {meta}");
                    }
                }
            }
        }
    }
    let _ = zk.close().await;
    Ok(())
}

/// Writes `<role>.cred` for every role into `dir`, readable by the owner
/// only; refuses to overwrite, so a running deployment's set is not lost
/// by a slip.
fn gen_credentials(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (role, text) in servicekit::auth::ZkAuth::generate() {
        write_secret(&dir.join(format!("{role}.cred")), &text)?;
    }
    println!("wrote {} credentials files to {}", servicekit::auth::ROLES.len(), dir.display());
    Ok(())
}

/// Writes each service's broker credentials and the broker definitions
/// into `dir`, all mode 0600 (the definitions hold only salted hashes of
/// 256-bit passwords, but nobody else needs them); refuses to overwrite,
/// as `gen-credentials` does.
fn gen_broker_credentials(dir: &std::path::Path, queue: &str, user_prefix: &str) -> Result<()> {
    if queue.is_empty() {
        bail!("--queue must name the task queue");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let generated = servicekit::broker::generate(queue, user_prefix);
    for (name, text) in &generated.credentials {
        write_secret(&dir.join(name), text)?;
    }
    let definitions = dir.join(servicekit::broker::DEFINITIONS_FILE);
    write_secret(&definitions, &generated.definitions)?;
    println!(
        "wrote {} broker credentials files and {} to {}; load it with `scripts/rabbitmq.sh import {}`",
        generated.credentials.len(),
        servicekit::broker::DEFINITIONS_FILE,
        dir.display(),
        definitions.display()
    );
    Ok(())
}

/// Creates `path` readable by the owner only and writes `text`, synced.
fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (remove the old set first to replace it)", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

async fn ensure_parents(zk: &ZooKeeper, path: &str, policy: &servicekit::auth::Policy) -> Result<()> {
    let mut at = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push('/');
        at.push_str(part);
        if zk.exists(&at, false).await.map_err(on(&at))?.is_some() {
            continue;
        }
        match zk.create(&at, vec![], policy.operator_created(&at), CreateMode::Persistent).await {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(on(&at)(e)),
        }
    }
    Ok(())
}

async fn delete_tree(zk: &ZooKeeper, path: &str) -> Result<()> {
    // Depth first, iteratively: a deep tree must not overflow the stack.
    let mut order = vec![path.to_string()];
    let mut i = 0;
    while i < order.len() {
        let p = order[i].clone();
        match zk.get_children(&p, false).await {
            Ok(children) => order.extend(children.iter().map(|c| join(&p, c))),
            Err(ZkError::NoNode) => {}
            Err(e) => return Err(on(&p)(e)),
        }
        i += 1;
    }
    for p in order.iter().rev() {
        if p == "/" || p == "/zookeeper" || p.starts_with("/zookeeper/") {
            continue;
        }
        match zk.delete(p, None).await {
            Ok(()) | Err(ZkError::NoNode) => {}
            Err(e) => return Err(on(p)(e)),
        }
    }
    Ok(())
}

/// The subtree as nested JSON: `{"name": .., "data": .., "children": [..]}`.
async fn load_tree(zk: &ZooKeeper, path: &str) -> Result<Value> {
    // A node this identity may not read is drawn as such: the operator
    // sees the tree's shape, not the services' task data.
    let data = match zk.get_data(path, false).await {
        Ok((data, _)) => data_json(&data),
        Err(ZkError::NoAuth) => Value::String("(not allowed)".into()),
        Err(e) => return Err(on(path)(e)),
    };
    let mut children = match zk.get_children(path, false).await {
        Ok(c) => c,
        Err(ZkError::NoAuth) => vec![],
        Err(e) => return Err(on(path)(e)),
    };
    children.sort();
    let mut out = Vec::new();
    for c in children {
        let p = join(path, &c);
        // A child deleted while we walk is simply not drawn.
        match Box::pin(load_tree(zk, &p)).await {
            Ok(v) => out.push(v),
            Err(e) if matches!(e.downcast_ref(), Some(ZnodeError::NoNode(_))) => {}
            Err(e) => return Err(e),
        }
    }
    let name = path.rsplit('/').next().unwrap_or("").to_string();
    Ok(json!({"name": if name.is_empty() { "/".to_string() } else { name }, "path": path,
        "data": data, "children": out}))
}

fn draw(node: &Value, prefix: &str) {
    let children = node["children"].as_array().cloned().unwrap_or_default();
    let n = children.len();
    for (i, c) in children.iter().enumerate() {
        let last = i + 1 == n;
        let data = match &c["data"] {
            Value::String(s) if s.is_empty() => String::new(),
            Value::String(s) => format!(" = {s}"),
            other => format!(" = {other}"),
        };
        println!("{prefix}{}{}{data}", if last { "└── " } else { "├── " }, c["name"].as_str().unwrap_or(""));
        draw(c, &format!("{prefix}{}", if last { "    " } else { "│   " }));
    }
}

/// Prints the current value, then each new one. A watch fires once and a
/// change can land between the event and the re-arm, so every event is
/// followed by a fresh read that re-arms the watch: the printed sequence
/// always ends at the latest value, though intermediate values that were
/// overwritten quickly may be skipped (ZooKeeper promises the latest, not
/// every one).
///
/// zookeeper-async does not re-register watches after a reconnect, so a
/// reconnect also counts as "something may have changed": re-read.
async fn watch(zk: &ZooKeeper, path: &str, json_out: bool) -> Result<()> {
    let (reconnected_tx, mut reconnected) = tokio::sync::mpsc::unbounded_channel();
    zk.add_listener(move |s| {
        if s == zookeeper_async::ZkState::Connected {
            let _ = reconnected_tx.send(());
        }
    });
    let mut last_mzxid = None;
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let notify = move |e: zookeeper_async::WatchedEvent| {
            if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(e.event_type);
            }
        };
        match zk.get_data_w(path, notify).await {
            Ok((data, stat)) => {
                if last_mzxid != Some(stat.mzxid) {
                    last_mzxid = Some(stat.mzxid);
                    if json_out {
                        println!("{}", json!({"path": path, "data": data_json(&data), "version": stat.version}));
                    } else {
                        println!("{}", text(&data));
                    }
                }
            }
            Err(ZkError::NoNode) => {
                // Absent: wait for it to be created (exists sets the watch).
                let (tx2, rx2) = tokio::sync::oneshot::channel();
                let tx2 = std::sync::Mutex::new(Some(tx2));
                let present = zk
                    .exists_w(path, move |e: zookeeper_async::WatchedEvent| {
                        if let Some(tx) = tx2.lock().ok().and_then(|mut t| t.take()) {
                            let _ = tx.send(e.event_type);
                        }
                    })
                    .await
                    .map_err(on(path))?;
                if last_mzxid.is_some() || present.is_none() {
                    if last_mzxid.take().is_some() {
                        println!(
                            "{}",
                            if json_out {
                                json!({"path": path, "deleted": true}).to_string()
                            } else {
                                "(deleted)".into()
                            }
                        );
                    }
                    if present.is_none() {
                        wait_event(rx2, &mut reconnected).await?;
                    }
                }
                continue;
            }
            Err(e) => bail!(on(path)(e)),
        }
        wait_event(rx, &mut reconnected).await?;
    }
}

async fn wait_event(
    rx: tokio::sync::oneshot::Receiver<WatchedEventType>,
    reconnected: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> Result<()> {
    tokio::select! {
        r = rx => { r.context("the connection's watch was dropped")?; Ok(()) }
        _ = reconnected.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => std::process::exit(0),
    }
}

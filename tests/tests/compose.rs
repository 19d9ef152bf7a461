//! docker-compose.yml cannot be run here (no Docker engine), so it is
//! checked offline against the binaries it starts: every command must parse
//! with the real binary's flags, every environment variable must be one a
//! binary reads, every published port must be one a service listens on,
//! every healthy-dependency must have a healthcheck, every volume must be
//! declared. A flag renamed in code and not in the compose file fails here.
//! scripts/compose-smoke.sh runs the same files in a real engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::binary;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn load(name: &str) -> Yaml {
    let text = std::fs::read_to_string(repo().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    // docker-compose v1 cannot parse Compose v2's merge tags, and v2 reads
    // them only from 2.24: the files must work on both.
    for tag in ["!override", "!reset"] {
        assert!(!text.contains(&format!(": {tag}")), "{name} uses {tag}, which docker-compose v1 cannot read");
    }
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
    merge_keys(docs.remove(0))
}

/// Resolves YAML merge keys (`<<: *anchor`), which compose relies on and
/// which YAML 1.2 loaders leave as ordinary keys. Explicit keys win.
fn merge_keys(y: Yaml) -> Yaml {
    match y {
        Yaml::Hash(h) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            let mut merged = Vec::new();
            for (k, v) in h {
                if k.as_str() == Some("<<") {
                    merged.push(merge_keys(v));
                } else {
                    out.insert(k, merge_keys(v));
                }
            }
            for m in merged {
                if let Yaml::Hash(mh) = m {
                    for (k, v) in mh {
                        out.entry(k).or_insert(v);
                    }
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(a) => Yaml::Array(a.into_iter().map(merge_keys).collect()),
        other => other,
    }
}

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec().map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn services(doc: &Yaml) -> BTreeMap<String, Yaml> {
    doc["services"]
        .as_hash()
        .expect("a services: section")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v.clone()))
        .collect()
}

fn help(bin: &str, args: &[String]) -> String {
    let out = Command::new(binary(bin)).args(args).arg("--help").output().expect("run the binary");
    assert!(
        out.status.success(),
        "`{bin} {}` is rejected by the real binary: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The project's image runs the workspace's binaries; the other services
/// (broker, Prometheus, Grafana, ZooKeeper) run images of their own.
const IMAGE: &str = "coordination-demo:latest";

/// What a service runs: its `entrypoint` followed by its `command`.
fn argv(svc: &Yaml) -> Vec<String> {
    let mut out = strs(&svc["entrypoint"]);
    out.extend(strs(&svc["command"]));
    out
}

fn help_of(bin: &str) -> String {
    help(bin, &[])
}

#[test]
fn every_compose_service_runs_a_real_command_with_real_flags() {
    let doc = load("docker-compose.yml");
    let svcs = services(&doc);
    let volumes: BTreeSet<String> =
        doc["volumes"].as_hash().expect("volumes:").keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    let mut host_ports = BTreeSet::new();
    for (name, svc) in &svcs {
        if svc["image"].as_str() == Some(IMAGE) {
            let command = argv(svc);
            let (bin, args) = command.split_first().unwrap_or_else(|| panic!("{name}: empty command"));
            let help = help(bin, args);
            // A subcommand's --help leaves out the binary's own flags.
            let top = help_of(bin);
            if let Some(env) = svc["environment"].as_hash() {
                for key in env.keys().filter_map(|k| k.as_str()) {
                    if key == "RUST_LOG" {
                        continue; // read by tracing's filter, not by a flag
                    }
                    let reads = |h: &str| h.contains(&format!("[env: {key}"));
                    assert!(reads(&help) || reads(&top), "{name}: {bin} does not read ${key}");
                }
            }
            // A published container port is one the command listens on.
            for port in strs(&svc["ports"]) {
                let inner = port.rsplit(':').next().expect("a port");
                assert!(
                    args.iter().any(|a| a.ends_with(&format!(":{inner}"))),
                    "{name} publishes {inner} but its command listens elsewhere: {args:?}"
                );
            }
        }
        for port in strs(&svc["ports"]) {
            // "[ip:]host:container": the host port is the one before last.
            let host = port.rsplit(':').nth(1).expect("host:container").to_string();
            assert!(host_ports.insert(host.clone()), "host port {host} is published twice");
        }
        for v in strs(&svc["volumes"]) {
            let source = v.split(':').next().expect("a volume");
            if let Some(file) = source.strip_prefix("./") {
                // A file or directory of the repository, bind-mounted read-only.
                assert!(repo().join(file).exists(), "{name} mounts {source}, which the repository lacks");
                assert!(v.ends_with(":ro"), "{name} mounts {source} writable");
                continue;
            }
            assert!(volumes.contains(source), "{name} mounts undeclared volume {source}");
        }
        if let Some(deps) = svc["depends_on"].as_hash() {
            for (dep, cond) in deps {
                let dep = dep.as_str().expect("a service name");
                let target = svcs.get(dep).unwrap_or_else(|| panic!("{name} depends on unknown service {dep}"));
                if cond["condition"].as_str() == Some("service_healthy") {
                    assert!(
                        !target["healthcheck"].is_badvalue(),
                        "{name} waits for {dep} to be healthy, but it has no healthcheck"
                    );
                }
            }
        }
    }
    for needed in [
        "identities",
        "coordinator",
        "rabbitmq",
        "system-a",
        "system-b-1",
        "system-b-2",
        "system-b-3",
        "ha-worker-1",
        "ha-worker-2",
        "prometheus",
    ] {
        assert!(svcs.contains_key(needed), "docker-compose.yml lacks {needed}");
    }
}

/// The scale-out profile's file, on top of the base file.
const SCALE_OUT: &str = "docker-compose.scale-out.yml";

/// The broker cluster's nodes on the scale-out profile.
const BROKER_NODES: [&str; 3] = ["rabbitmq", "rabbitmq-2", "rabbitmq-3"];

#[test]
fn the_scale_out_override_points_every_service_at_the_ensemble() {
    let base = services(&load("docker-compose.yml"));
    let over = services(&load(SCALE_OUT));
    let ensemble: BTreeSet<&str> = over.keys().filter(|k| k.starts_with("zk")).map(String::as_str).collect();
    assert_eq!(ensemble.len(), 3, "the override must run a 3-node ensemble");
    for (name, svc) in &base {
        if svc["environment"]["ZK_CONNECT"].is_badvalue() {
            continue;
        }
        let o = over.get(name).unwrap_or_else(|| panic!("{name} talks to ZooKeeper but the override leaves it alone"));
        let connect = o["environment"]["ZK_CONNECT"].as_str().expect("ZK_CONNECT in the override");
        for host in connect.split(',') {
            let host = host.split(':').next().expect("host");
            assert!(ensemble.contains(host), "{name}: {host} is not an ensemble member");
        }
        // The override's depends_on is merged into the base file's: it must
        // add every ensemble member, healthy.
        let deps = o["depends_on"].as_hash().expect("depends_on");
        for member in &ensemble {
            let cond = &deps[&Yaml::String(member.to_string())]["condition"];
            assert_eq!(cond.as_str(), Some("service_healthy"), "{name} does not wait for {member} to be healthy");
        }
    }
}

/// Every service that uses the task queue is given the cluster's three
/// nodes (servicekit moves to the next when its node fails), and starts
/// once the three are healthy and `rabbitmq-cluster` has put the quorum
/// queues on all of them; the nodes are direct dependencies, so that
/// `stop` stops these services before any node.
#[test]
fn the_scale_out_override_gives_every_broker_client_all_three_nodes() {
    let base = services(&load("docker-compose.yml"));
    let over = services(&load(SCALE_OUT));
    let mut clients = 0;
    for (name, svc) in &base {
        if svc["environment"]["AMQP_URL"].is_badvalue() {
            continue;
        }
        clients += 1;
        let o = over.get(name).unwrap_or_else(|| panic!("{name} uses the broker but the override leaves it alone"));
        let urls = o["environment"]["AMQP_URL"].as_str().unwrap_or_else(|| panic!("{name}: no AMQP_URL"));
        let hosts: Vec<&str> = urls
            .split(',')
            .map(|u| {
                assert!(u.starts_with("amqp://") && u.ends_with(":5672/%2f"), "{name}: {u}");
                u.trim_start_matches("amqp://").split(':').next().expect("host")
            })
            .collect();
        assert_eq!(hosts, BROKER_NODES, "{name} is not given every node of the cluster");
        let deps = o["depends_on"].as_hash().expect("depends_on");
        let cond = |dep: &str| deps[&Yaml::String(dep.into())]["condition"].as_str().map(str::to_string);
        for node in BROKER_NODES {
            assert_eq!(cond(node).as_deref(), Some("service_healthy"), "{name} does not wait for {node}");
        }
        assert_eq!(cond("rabbitmq-cluster").as_deref(), Some("service_completed_successfully"), "{name}");
    }
    assert_eq!(clients, 4, "system-a and three system-b");
}

/// Three RabbitMQ nodes clustered by the image's own means: each with a
/// stable node name of its own (the host part its service's name, the
/// name part distinct, so one epmd can serve them all), its own data
/// volume, the definitions and the classic-config peer discovery file
/// (which lists exactly these names), and the cookie `identities` made,
/// installed where the image reads it; never the deprecated
/// RABBITMQ_ERLANG_COOKIE. The one-shot `rabbitmq-cluster` waits for the
/// three and grows the quorum queues onto each.
#[test]
fn the_scale_out_profile_runs_a_three_node_rabbitmq_cluster() {
    let base_doc = load("docker-compose.yml");
    let over_doc = load(SCALE_OUT);
    let base = services(&base_doc);
    let over = services(&over_doc);
    let declared: BTreeSet<String> = [&base_doc, &over_doc]
        .iter()
        .flat_map(|d| d["volumes"].as_hash().expect("volumes:").keys().filter_map(|k| k.as_str().map(str::to_string)))
        .collect();
    let mut names = Vec::new();
    let mut data = BTreeSet::new();
    for node in BROKER_NODES {
        let svc = over.get(node).unwrap_or_else(|| panic!("the scale-out profile lacks the broker node {node}"));
        assert!(svc["image"].as_str().is_some_and(|i| i.starts_with("rabbitmq:3")), "{node}: {:?}", svc["image"]);
        let name = svc["environment"]["RABBITMQ_NODENAME"].as_str().unwrap_or_else(|| panic!("{node}: no node name"));
        let (alive, host) = name.split_once('@').unwrap_or_else(|| panic!("{node}: {name} is not NAME@HOST"));
        assert_eq!(host, node, "{node}'s node name must resolve to it");
        assert_eq!(svc["hostname"].as_str(), Some(node), "{node}");
        assert!(!names.iter().any(|n: &String| n.starts_with(&format!("{alive}@"))), "{alive}@ is used twice");
        names.push(name.to_string());
        let volumes = strs(&svc["volumes"]);
        for want in [
            "./rabbitmq/definitions.conf:/etc/rabbitmq/conf.d/20-definitions.conf:ro",
            "./rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/30-cluster.conf:ro",
            "identity-rabbitmq:/run/identity:ro",
        ] {
            assert!(volumes.iter().any(|v| v == want), "{node} does not mount {want}: {volumes:?}");
        }
        let own = volumes
            .iter()
            .find_map(|v| v.strip_suffix(":/var/lib/rabbitmq"))
            .unwrap_or_else(|| panic!("{node} has no data volume"));
        assert!(declared.contains(own), "{node}'s data volume {own} is not declared");
        assert!(data.insert(own.to_string()), "{own} is shared by two nodes");
        // The cookie: from the broker's identity volume to the data dir's
        // .erlang.cookie, owner-only, then the image's own entrypoint.
        let entry = argv(svc).join(" ");
        assert!(
            entry.contains(
                "install -m 0400 -o rabbitmq -g rabbitmq /run/identity/erlang.cookie /var/lib/rabbitmq/.erlang.cookie"
            ) && entry.contains("exec docker-entrypoint.sh"),
            "{node} does not install the shared cookie: {entry}"
        );
        assert_eq!(strs(&svc["command"]), ["rabbitmq-server"], "{node}");
        assert!(!svc["healthcheck"].is_badvalue(), "{node} has no healthcheck");
        if node != "rabbitmq" {
            let deps = svc["depends_on"].as_hash().expect("depends_on");
            let first = &deps[&Yaml::String("rabbitmq".into())]["condition"];
            assert_eq!(first.as_str(), Some("service_healthy"), "{node} must join a running first node");
        }
    }
    // The base file's broker is the first node: the override adds to it.
    assert!(strs(&base["rabbitmq"]["volumes"]).iter().any(|v| v == "rabbitmq-data:/var/lib/rabbitmq"));
    let conf = std::fs::read_to_string(repo().join("rabbitmq/cluster.conf")).expect("rabbitmq/cluster.conf");
    let settings: BTreeMap<&str, &str> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    assert_eq!(settings.get("cluster_formation.peer_discovery_backend"), Some(&"classic_config"), "{conf}");
    // The partition handling the partition test proves (testkit's cluster
    // runs the same mode): a cut-off minority must pause, not serve.
    assert_eq!(settings.get("cluster_partition_handling"), Some(&"pause_minority"), "{conf}");
    let mut listed: Vec<&str> = settings
        .iter()
        .filter(|(k, _)| k.starts_with("cluster_formation.classic_config.nodes."))
        .map(|(_, v)| *v)
        .collect();
    listed.sort_unstable();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(listed, want, "cluster.conf lists other nodes than the compose file runs");
    for file in ["docker-compose.yml", SCALE_OUT] {
        let text = std::fs::read_to_string(repo().join(file)).expect("read");
        assert!(!text.contains("RABBITMQ_ERLANG_COOKIE:"), "{file}: the cookie comes from the identities volume");
    }

    let cluster = over.get("rabbitmq-cluster").expect("the rabbitmq-cluster one-shot");
    assert_eq!(cluster["restart"].as_str(), Some("no"), "a one-shot");
    let deps = cluster["depends_on"].as_hash().expect("depends_on");
    for node in BROKER_NODES {
        let cond = &deps[&Yaml::String(node.into())]["condition"];
        assert_eq!(cond.as_str(), Some("service_healthy"), "rabbitmq-cluster does not wait for {node}");
    }
    let listed: Vec<&str> = cluster["environment"]["RABBITMQ_CLUSTER_NODES"]
        .as_str()
        .expect("RABBITMQ_CLUSTER_NODES")
        .split_whitespace()
        .collect();
    assert_eq!(listed, names, "rabbitmq-cluster waits for other nodes than the compose file runs");
    assert!(strs(&cluster["volumes"]).iter().any(|v| v == "identity-rabbitmq:/run/identity:ro"), "the cookie");
    let script = argv(cluster).last().cloned().expect("a script");
    let mount = strs(&cluster["volumes"])
        .into_iter()
        .find(|v| v.contains(&format!(":{script}:")))
        .unwrap_or_else(|| panic!("rabbitmq-cluster runs {script}, which it does not mount"));
    let source = mount.split(':').next().expect("source").trim_start_matches("./");
    let text = std::fs::read_to_string(repo().join(source)).expect("the cluster script");
    assert!(text.contains("rabbitmq-queues") && text.contains(" grow "), "{source} does not grow the quorum queues");

    // The cookie is the broker image's user's: 999 in the official image.
    let ids = argv(&base["identities"]);
    let at = ids.iter().position(|a| a == "--broker-owner").expect("identities --broker-owner");
    assert_eq!(ids[at + 1], "999:999", "the official rabbitmq image's user");
}

#[test]
fn the_image_builds_with_a_toolchain_the_workspace_accepts() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let needed = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("rust-version in Cargo.toml");
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:").or_else(|| l.strip_prefix("ARG RUST_IMAGE=rust:")))
        .and_then(|l| l.split('-').next())
        .expect("a FROM rust:<version> stage (or its RUST_IMAGE default)");
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().expect("a version number")).collect::<Vec<_>>();
    assert!(parse(image) >= parse(needed), "Dockerfile builds with Rust {image}, the workspace needs {needed}");
    assert!(dockerfile.contains("USER "), "the runtime image must not run as root");
}

/// Nothing on the host's network reaches a container: every published port
/// binds the host's loopback. (The admin port was published on every
/// interface, with ListTree and ExpireSession open to anyone who reached it.)
#[test]
fn ports_are_published_on_loopback_only() {
    for file in ["docker-compose.yml", SCALE_OUT] {
        for (name, svc) in services(&load(file)) {
            for port in strs(&svc["ports"]) {
                assert!(port.starts_with("127.0.0.1:"), "{file}: {name} publishes {port} beyond the host's loopback");
            }
        }
    }
}

/// The identity volumes each service mounts: (volume, mount point).
fn identity_mounts(svc: &Yaml) -> Vec<(String, String)> {
    strs(&svc["volumes"])
        .iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            source.starts_with("identity-").then(|| (source.to_string(), target.to_string()))
        })
        .collect()
}

/// Each service runs as its own identity, from a volume that it alone (and
/// the one-shot `identities` service that fills it) mounts, read-only; the
/// tree is laid out by the operator before any service starts; nothing
/// needs a file from the host.
#[test]
fn every_zookeeper_client_has_its_own_identity() {
    let doc = load("docker-compose.yml");
    let svcs = services(&doc);
    assert!(doc["secrets"].is_badvalue(), "identities come from volumes the first `up` fills, not host files");
    let mut consumers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, svc) in &svcs {
        if name == "identities" {
            continue;
        }
        let mounts = identity_mounts(svc);
        assert!(mounts.len() <= 1, "{name} mounts several identities: {mounts:?}");
        for (volume, target) in &mounts {
            assert_eq!(target, "/run/identity", "{name}");
            assert!(
                strs(&svc["volumes"]).contains(&format!("{volume}:{target}:ro")),
                "{name} mounts {volume} writable"
            );
            consumers.entry(volume.clone()).or_default().push(name.clone());
            let deps = &svc["depends_on"];
            let waits = |dep: &str| deps[dep]["condition"].as_str() == Some("service_completed_successfully");
            assert!(waits("identities") || waits("init-acls"), "{name} may start before its identity exists");
        }
        if svc["environment"]["ZK_CONNECT"].is_badvalue() {
            continue;
        }
        let command = argv(svc);
        let at = command.iter().position(|a| a == "--zk-credentials-file");
        let file = at
            .and_then(|i| command.get(i + 1).cloned())
            .or_else(|| svc["environment"]["ZK_CREDENTIALS_FILE"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("{name} runs without an identity"));
        assert_eq!(file, "/run/identity/zk.cred", "{name}");
        let role = match name.as_str() {
            "init-acls" => "operator",
            n if n.starts_with("system-b") => "system-b",
            n if n.starts_with("ha-worker") => "ha-worker",
            n => n,
        };
        assert_eq!(mounts, [(format!("identity-{role}"), "/run/identity".to_string())], "{name} runs as {role}");
        if name != "init-acls" {
            let deps = svc["depends_on"].as_hash().expect("depends_on");
            let init = &deps[&Yaml::String("init-acls".into())];
            assert_eq!(init["condition"].as_str(), Some("service_completed_successfully"), "{name}");
        }
    }
    // The identities service fills exactly the volumes `zkctl
    // gen-identities` writes a directory for, and each has a consumer.
    let ids = &svcs["identities"];
    assert_eq!(ids["restart"].as_str(), Some("no"), "a one-shot");
    let dir = e2e_tests::TempDir::new("compose-identities");
    gen_identities(dir.path(), &[]);
    let mut written: Vec<String> = std::fs::read_dir(dir.path())
        .expect("the set")
        .map(|e| format!("identity-{}", e.expect("an entry").file_name().to_string_lossy()))
        .collect();
    written.sort();
    let mut filled: Vec<String> = identity_mounts(ids)
        .into_iter()
        .map(|(volume, target)| {
            assert_eq!(target, format!("/identities/{}", volume.trim_start_matches("identity-")));
            volume
        })
        .collect();
    filled.sort();
    assert_eq!(filled, written, "the identities service's volumes are not the consumers' directories");
    assert_eq!(consumers.keys().cloned().collect::<Vec<_>>(), written, "a volume nobody mounts, or one not filled");
    assert_eq!(consumers["identity-operator"], ["init-acls"], "the operator's identity is init-acls's alone");
}

/// Each service that uses RabbitMQ logs in as its own broker user, from a
/// secret only it mounts; no URL, environment value or argument of any
/// service carries a broker password or guest; the broker alone mounts the
/// definitions (the users' password hashes).
#[test]
fn every_broker_client_has_its_own_broker_user() {
    for file in ["docker-compose.yml", SCALE_OUT] {
        for (name, svc) in services(&load(file)) {
            let mut values = strs(&svc["command"]);
            if let Some(env) = svc["environment"].as_hash() {
                values.extend(env.values().filter_map(|v| v.as_str().map(str::to_string)));
            }
            for v in &values {
                assert!(!v.contains("guest"), "{file}: {name} uses guest: {v}");
                for url in v.split(',').filter(|u| u.starts_with("amqp")) {
                    assert_eq!(servicekit::rabbit::userinfo_of(url), None, "{file}: {name}'s URL has credentials: {v}");
                }
            }
        }
    }
    let doc = load("docker-compose.yml");
    let mut users = BTreeSet::new();
    for (name, svc) in services(&doc) {
        let mounts: Vec<String> = identity_mounts(&svc).into_iter().map(|(v, _)| v).collect();
        if name == "rabbitmq" {
            assert_eq!(mounts, ["identity-rabbitmq"], "the broker mounts its definitions only");
            assert!(strs(&svc["volumes"]).iter().any(|v| v.contains("/etc/rabbitmq/conf.d/")), "loads them at boot");
            let conf = std::fs::read_to_string(repo().join("rabbitmq/definitions.conf")).expect("definitions.conf");
            assert!(conf.contains("load_definitions = /run/identity/definitions.json"), "{conf}");
            continue;
        }
        if svc["environment"]["AMQP_URL"].is_badvalue() {
            assert!(
                name == "identities" || mounts.iter().all(|m| m != "identity-system-a" && m != "identity-system-b"),
                "{name} uses no broker but mounts {mounts:?}"
            );
            continue;
        }
        let command = strs(&svc["command"]);
        let at = command.iter().position(|a| a == "--amqp-credentials-file");
        let path = at.and_then(|i| command.get(i + 1)).unwrap_or_else(|| panic!("{name} has no broker user"));
        assert_eq!(path, "/run/identity/amqp.cred", "{name}");
        let role = if name.starts_with("system-b") { "system-b" } else { name.as_str() };
        assert_eq!(mounts, [format!("identity-{role}")], "{name} mounts another service's identity");
        users.insert(role.to_string());
    }
    assert_eq!(users.into_iter().collect::<Vec<_>>(), servicekit::broker::ROLES, "every broker user is used");
}

/// Runs `zkctl gen-identities DIR ARGS...`.
fn gen_identities(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(binary("zkctl")).arg("gen-identities").arg(dir).args(args).output().expect("run zkctl");
    assert!(out.status.success(), "gen-identities {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `zkctl gen-identities`, what the `identities` service runs on every
/// `up`: identities the services accept (each password matches its listed
/// digest id), each consumer's files private to the owner given, one admin
/// token for its three holders, a broker set the definitions match; a
/// second run changes nothing; a partial set is refused, not completed;
/// `--rotate` makes a new set and keeps the old operator for the re-grant.
#[test]
fn gen_identities_makes_a_set_once_and_rotates_it() {
    use std::os::unix::fs::MetadataExt;
    let dir = e2e_tests::TempDir::new("gen-identities");
    let root = dir.path().join("identities");
    let me = std::fs::metadata("/proc/self").expect("/proc/self");
    let owner = format!("{}:{}", me.uid(), me.gid());
    gen_identities(&root, &["--owner", &owner]);
    let read = |consumer: &str| {
        servicekit::auth::ZkAuth::from_file(&root.join(consumer).join("zk.cred"))
            .unwrap_or_else(|e| panic!("{consumer}: {e}"))
    };
    for role in servicekit::auth::ROLES {
        assert_eq!(read(role).credentials.expect("auth").user(), role);
    }
    let token = |consumer: &str| std::fs::read_to_string(root.join(consumer).join("admin.token")).expect("admin.token");
    assert_eq!(token("operator").len(), 64, "32 random bytes, hex");
    assert_eq!(token("coordinator"), token("operator"));
    assert_eq!(token("dashboard"), token("operator"));
    let mut files = Vec::new();
    for consumer in std::fs::read_dir(&root).expect("the set") {
        for f in std::fs::read_dir(consumer.expect("a consumer").path()).expect("a consumer's directory") {
            files.push(f.expect("a file").path());
        }
    }
    assert_eq!(files.len(), 12, "{files:?}");
    for f in &files {
        let m = std::fs::metadata(f).expect("stat");
        let want = if f.ends_with("rabbitmq/definitions.json") {
            0o644
        } else if f.ends_with("rabbitmq/erlang.cookie") {
            0o400 // Erlang refuses a cookie others may read
        } else {
            0o600
        };
        assert_eq!(m.mode() & 0o777, want, "{}", f.display());
        assert_eq!((m.uid(), m.gid()), (me.uid(), me.gid()), "{}", f.display());
    }
    check_broker_set(&root);

    let before: Vec<(PathBuf, String)> =
        files.iter().map(|f| (f.clone(), std::fs::read_to_string(f).expect("read"))).collect();
    let out = gen_identities(&root, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
    for (f, text) in &before {
        assert_eq!(&std::fs::read_to_string(f).expect("read"), text, "a second run changed {}", f.display());
    }

    std::fs::remove_file(root.join("system-b/amqp.cred")).expect("rm");
    let out = Command::new(binary("zkctl")).arg("gen-identities").arg(&root).output().expect("run zkctl");
    assert!(!out.status.success(), "a partial set was completed with files that do not match the rest");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rotate"), "the refusal names the fix");

    let old_operator = std::fs::read_to_string(root.join("operator/zk.cred")).expect("read");
    let old_ids = read("system-b").ids;
    let cookie = std::fs::read_to_string(root.join("rabbitmq/erlang.cookie")).expect("the cookie");
    gen_identities(&root, &["--rotate"]);
    assert_eq!(
        std::fs::read_to_string(root.join("rabbitmq/erlang.cookie")).expect("the cookie"),
        cookie,
        "--rotate must keep the broker cluster's cookie"
    );
    assert_ne!(read("system-b").ids, old_ids, "--rotate made the same identities");
    assert_ne!(std::fs::read_to_string(root.join("operator/zk.cred")).expect("read"), old_operator, "not rotated");
    assert_eq!(
        std::fs::read_to_string(root.join("operator/previous-operator.cred")).expect("the old operator, kept"),
        old_operator
    );
    check_broker_set(&root);
}

/// The broker set in a set of identities: the definitions are what
/// `servicekit::broker::generate` writes for the queue `tasks` (the same
/// permissions and topology), and each service's password in its own
/// directory is hashed there as RabbitMQ does.
fn check_broker_set(root: &Path) {
    let text = std::fs::read_to_string(root.join("rabbitmq/definitions.json")).expect("definitions");
    let written: serde_json::Value = serde_json::from_str(&text).expect("the definitions are JSON");
    let rust: serde_json::Value =
        serde_json::from_str(&servicekit::broker::generate("tasks", "").definitions).expect("JSON");
    for key in ["vhosts", "permissions", "queues", "exchanges", "bindings"] {
        assert_eq!(written[key], rust[key], "{key} differ from servicekit::broker's");
    }
    for role in servicekit::broker::ROLES {
        let file = root.join(role).join("amqp.cred");
        let creds = servicekit::auth::ZkAuth::credentials_from_file(&file).expect("a broker credentials file");
        assert_eq!(creds.user(), role);
        let user = written["users"].as_array().and_then(|u| u.iter().find(|u| u["name"] == role)).expect("user");
        assert_eq!(user["hashing_algorithm"], "rabbit_password_hashing_sha256");
        let hash = user["password_hash"].as_str().expect("hash");
        let password = std::fs::read_to_string(&file).expect("read");
        let password = password.lines().find_map(|l| l.strip_prefix(&format!("auth = {role}:"))).expect("auth");
        assert!(servicekit::broker::password_matches(password, hash), "{role}'s hash is not RabbitMQ's");
        assert_eq!(password.len(), 43, "256 random bits");
    }
}

/// A named volume mounted where the image has no directory is created
/// root-owned, and the image's non-root user cannot write to it: every
/// mount point of the project's image must be made, and given to that user,
/// before `USER`.
#[test]
fn every_volume_of_the_image_is_writable_by_its_user() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let runtime = dockerfile.rsplit("\nFROM ").next().expect("a runtime stage");
    let (before_user, _) = runtime.split_once("\nUSER ").expect("USER in the runtime stage");
    let user = runtime.split_once("\nUSER ").and_then(|(_, r)| r.split_whitespace().next()).expect("a user");
    for (name, svc) in services(&load("docker-compose.yml")) {
        // `identities` runs as root to give its files to the image's user.
        if svc["image"].as_str() != Some(IMAGE) || svc["user"].as_str() == Some("0:0") {
            continue;
        }
        for v in strs(&svc["volumes"]) {
            let target = v.split(':').nth(1).expect("volume:path");
            if target == "/data" || v.ends_with(":ro") {
                continue; // the user's home (useradd --create-home), or only read
            }
            assert!(
                before_user.contains("mkdir -p") && before_user.contains(target),
                "{name} mounts a volume on {target}, which the image does not create"
            );
            let chown = before_user
                .lines()
                .find(|l| l.contains("chown") && l.contains(target))
                .unwrap_or_else(|| panic!("{name}: {target} is not given to the image's user"));
            assert!(chown.contains(&format!("{user}:")), "{target} is chowned to someone else than {user}: {chown}");
        }
    }
}

/// Prometheus scrapes the coordinator and every service that serves
/// metrics, where each listens, on both profiles; on the scale-out profile
/// also each server of the ensemble, on the port its metrics provider is
/// given.
#[test]
fn prometheus_scrapes_every_service() {
    let targets = |file: &str| -> BTreeSet<String> {
        let text = std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let doc = YamlLoader::load_from_str(&text).expect("YAML").remove(0);
        let mut out = BTreeSet::new();
        for job in doc["scrape_configs"].as_vec().expect("scrape_configs") {
            assert!(job["metrics_path"].is_badvalue(), "{file}: every target serves /metrics");
            for sc in job["static_configs"].as_vec().expect("static_configs") {
                out.extend(strs(&sc["targets"]));
            }
        }
        out
    };
    let base = services(&load("docker-compose.yml"));
    let mut want = BTreeSet::new();
    for (name, svc) in &base {
        if let Some(listen) = svc["environment"]["METRICS_LISTEN"].as_str() {
            want.insert(format!("{name}:{}", listen.rsplit(':').next().expect("a port")));
        }
    }
    let admin = argv(&base["coordinator"]);
    let at = admin.iter().position(|a| a == "--admin-listen").expect("the coordinator's admin port");
    want.insert(format!("coordinator:{}", admin[at + 1].rsplit(':').next().expect("a port")));
    assert_eq!(want.len(), 7, "{want:?}");
    assert_eq!(targets("prometheus/prometheus.yml"), want, "prometheus.yml");
    let mounted = strs(&base["prometheus"]["volumes"]);
    assert!(mounted.contains(&"./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro".to_string()));

    let over = services(&load(SCALE_OUT));
    let mut zk_want = want.clone();
    for (name, svc) in over.iter().filter(|(n, _)| n.starts_with("zk")) {
        let extra = svc["environment"]["ZOO_CFG_EXTRA"].as_str().expect("ZOO_CFG_EXTRA");
        assert!(extra.contains("metricsProvider.className=org.apache.zookeeper.metrics.prometheus."), "{name}");
        let port = extra.split_whitespace().find_map(|kv| kv.strip_prefix("metricsProvider.httpPort="));
        zk_want.insert(format!("{name}:{}", port.expect("metricsProvider.httpPort")));
    }
    assert_eq!(targets("prometheus/prometheus-zookeeper.yml"), zk_want, "prometheus-zookeeper.yml");
    let mounted = strs(&over["prometheus"]["volumes"]);
    assert_eq!(mounted, ["./prometheus/prometheus-zookeeper.yml:/etc/prometheus/prometheus.yml:ro"]);
}

/// The Grafana dashboard is provisioned from the repository, on Prometheus,
/// and every panel has a query (scripts/compose-smoke.sh runs each one
/// against a live Prometheus and wants data back).
#[test]
fn the_grafana_dashboard_is_provisioned() {
    let grafana = &services(&load("docker-compose.yml"))["grafana"];
    assert_eq!(strs(&grafana["profiles"]), ["grafana"], "optional: not run by the smoke");
    let text = std::fs::read_to_string(repo().join("grafana/dashboards/coordination.json")).expect("the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut queries = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no query", p["title"]));
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "panel {}: an empty query", p["title"]);
            assert_eq!(t["datasource"]["uid"], "prometheus", "panel {}", p["title"]);
            queries += 1;
        }
    }
    assert!(queries >= 14, "{queries} queries");
    let ds = std::fs::read_to_string(repo().join("grafana/provisioning/datasources/prometheus.yml")).expect("ds");
    assert!(ds.contains("uid: prometheus") && ds.contains("url: http://prometheus:9090"), "{ds}");
}

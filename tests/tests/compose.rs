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

#[test]
fn every_compose_service_runs_a_real_command_with_real_flags() {
    let doc = load("docker-compose.yml");
    let svcs = services(&doc);
    let volumes: BTreeSet<String> =
        doc["volumes"].as_hash().expect("volumes:").keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    let mut host_ports = BTreeSet::new();
    for (name, svc) in &svcs {
        if let Some(command) = svc["command"].as_vec().map(|_| strs(&svc["command"])) {
            let (bin, args) = command.split_first().unwrap_or_else(|| panic!("{name}: empty command"));
            let help = help(bin, args);
            if let Some(env) = svc["environment"].as_hash() {
                for key in env.keys().filter_map(|k| k.as_str()) {
                    if key == "RUST_LOG" {
                        continue; // read by tracing's filter, not by a flag
                    }
                    assert!(help.contains(&format!("[env: {key}")), "{name}: {bin} does not read ${key}");
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
                // A file of the repository, bind-mounted read-only.
                assert!(repo().join(file).is_file(), "{name} mounts {source}, which the repository lacks");
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
    for needed in
        ["coordinator", "rabbitmq", "system-a", "system-b-1", "system-b-2", "system-b-3", "ha-worker-1", "ha-worker-2"]
    {
        assert!(svcs.contains_key(needed), "docker-compose.yml lacks {needed}");
    }
}

#[test]
fn the_zookeeper_override_points_every_service_at_the_ensemble() {
    let base = services(&load("docker-compose.yml"));
    let over = services(&load("docker-compose.zookeeper.yml"));
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
    for file in ["docker-compose.yml", "docker-compose.zookeeper.yml"] {
        for (name, svc) in services(&load(file)) {
            for port in strs(&svc["ports"]) {
                assert!(port.starts_with("127.0.0.1:"), "{file}: {name} publishes {port} beyond the host's loopback");
            }
        }
    }
}

/// Each service runs as its own identity, from a compose secret it alone
/// mounts; the tree is laid out by the operator before any service starts.
#[test]
fn every_zookeeper_client_has_its_own_identity() {
    let doc = load("docker-compose.yml");
    let declared: BTreeSet<String> =
        doc["secrets"].as_hash().expect("secrets:").keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    for (name, svc) in services(&doc) {
        if svc["environment"]["ZK_CONNECT"].is_badvalue() {
            continue;
        }
        let command = strs(&svc["command"]);
        let at = command.iter().position(|a| a == "--zk-credentials-file");
        let file = at.and_then(|i| command.get(i + 1)).unwrap_or_else(|| panic!("{name} runs without an identity"));
        let secret = file.strip_prefix("/run/secrets/").unwrap_or_else(|| panic!("{name}: {file} is not a secret"));
        assert!(declared.contains(secret), "{name} uses undeclared secret {secret}");
        assert!(strs(&svc["secrets"]).contains(&secret.to_string()), "{name} does not mount {secret}");
        let role = secret.trim_start_matches("zk-");
        let expected = match name.as_str() {
            "init-acls" => "operator",
            n if n.starts_with("system-b") => "system-b",
            n if n.starts_with("ha-worker") => "ha-worker",
            n => n,
        };
        assert_eq!(role, expected, "{name} runs as {role}");
        if name != "init-acls" {
            let deps = svc["depends_on"].as_hash().expect("depends_on");
            let init = &deps[&Yaml::String("init-acls".into())];
            assert_eq!(init["condition"].as_str(), Some("service_completed_successfully"), "{name}");
        }
    }
}

/// Each service that uses RabbitMQ logs in as its own broker user, from a
/// secret only it mounts; no URL, environment value or argument of any
/// service carries a broker password or guest; the broker alone mounts the
/// definitions (the users' password hashes).
#[test]
fn every_broker_client_has_its_own_broker_user() {
    for file in ["docker-compose.yml", "docker-compose.zookeeper.yml"] {
        for (name, svc) in services(&load(file)) {
            let mut values = strs(&svc["command"]);
            if let Some(env) = svc["environment"].as_hash() {
                values.extend(env.values().filter_map(|v| v.as_str().map(str::to_string)));
            }
            for v in &values {
                assert!(!v.contains("guest"), "{file}: {name} uses guest: {v}");
                if v.starts_with("amqp") {
                    assert_eq!(servicekit::rabbit::userinfo_of(v), None, "{file}: {name}'s URL has credentials: {v}");
                }
            }
        }
    }
    let doc = load("docker-compose.yml");
    let declared = &doc["secrets"];
    let mut users = BTreeSet::new();
    for (name, svc) in services(&doc) {
        let mounted = strs(&svc["secrets"]);
        let broker_secrets: Vec<&String> =
            mounted.iter().filter(|s| s.starts_with("amqp-") || s.as_str() == "broker-definitions").collect();
        if name == "rabbitmq" {
            assert_eq!(broker_secrets, ["broker-definitions"], "the broker mounts the definitions only");
            assert!(strs(&svc["volumes"]).iter().any(|v| v.contains("/etc/rabbitmq/conf.d/")), "loads them at boot");
            continue;
        }
        if svc["environment"]["AMQP_URL"].is_badvalue() {
            assert!(broker_secrets.is_empty(), "{name} uses no broker but mounts {broker_secrets:?}");
            continue;
        }
        let command = strs(&svc["command"]);
        let at = command.iter().position(|a| a == "--amqp-credentials-file");
        let path = at.and_then(|i| command.get(i + 1)).unwrap_or_else(|| panic!("{name} has no broker user"));
        let secret = path.strip_prefix("/run/secrets/").unwrap_or_else(|| panic!("{name}: {path} is not a secret"));
        let role = if name.starts_with("system-b") { "system-b" } else { name.as_str() };
        assert_eq!(secret, format!("amqp-{role}"), "{name} logs in as another service");
        assert_eq!(broker_secrets, [secret], "{name} mounts another service's broker secret");
        let file = declared[secret]["file"].as_str().unwrap_or_else(|| panic!("secret {secret} is not declared"));
        assert_eq!(file, format!("./.secrets/broker-{role}.cred"), "{secret} is what compose-secrets.sh writes");
        users.insert(role.to_string());
    }
    assert_eq!(users.into_iter().collect::<Vec<_>>(), servicekit::broker::ROLES, "every broker user is used");
}

/// scripts/compose-secrets.sh writes identities the services accept (each
/// password matches its listed digest id, computed with openssl there and
/// with the sha1 crate here), a fresh set each time, and never overwrites a
/// deployment's set by accident.
#[test]
fn compose_secrets_are_fresh_and_valid() {
    let dir = e2e_tests::TempDir::new("compose-secrets");
    let secrets = dir.path().join("secrets");
    let run = |args: &[&str]| {
        Command::new(repo().join("scripts/compose-secrets.sh"))
            .args(args)
            .env("SECRETS_DIR", &secrets)
            .output()
            .expect("run scripts/compose-secrets.sh")
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |role: &str| {
        servicekit::auth::ZkAuth::from_file(&secrets.join(format!("{role}.cred")))
            .unwrap_or_else(|e| panic!("{role}: {e}"))
    };
    for role in servicekit::auth::ROLES {
        assert_eq!(read(role).credentials.expect("auth").user(), role);
    }
    let token = std::fs::read_to_string(secrets.join("admin.token")).expect("admin.token");
    assert_eq!(token.len(), 64, "32 random bytes, hex");
    check_broker_set(&secrets);
    assert!(!run(&[]).status.success(), "a second run overwrote the deployment's identities");
    let before = read("system-b").ids;
    assert!(run(&["--rotate"]).status.success());
    assert_ne!(read("system-b").ids, before, "--rotate made the same identities");
}

/// The broker set compose-secrets.sh writes in bash is the one
/// `servicekit::broker::generate` writes for the queue `tasks`: the same
/// permissions and topology, and each password hashed as RabbitMQ does.
fn check_broker_set(secrets: &Path) {
    let text = std::fs::read_to_string(secrets.join("broker-definitions.json")).expect("definitions");
    let bash: serde_json::Value = serde_json::from_str(&text).expect("the definitions are JSON");
    let rust: serde_json::Value =
        serde_json::from_str(&servicekit::broker::generate("tasks", "").definitions).expect("JSON");
    for key in ["vhosts", "permissions", "queues", "exchanges", "bindings"] {
        assert_eq!(bash[key], rust[key], "{key} differ from servicekit::broker's");
    }
    for role in servicekit::broker::ROLES {
        let file = secrets.join(format!("broker-{role}.cred"));
        let creds = servicekit::auth::ZkAuth::credentials_from_file(&file).expect("a broker credentials file");
        assert_eq!(creds.user(), role);
        let user = bash["users"].as_array().and_then(|u| u.iter().find(|u| u["name"] == role)).expect("user");
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
        if svc["image"].as_str() != Some("coordination-demo:latest") {
            continue;
        }
        for v in strs(&svc["volumes"]) {
            let target = v.split(':').nth(1).expect("volume:path");
            if target == "/data" {
                continue; // the user's home, made by useradd --create-home
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

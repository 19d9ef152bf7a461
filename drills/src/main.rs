//! `drill NAME`: one failure drill against the running system (see the
//! library's docs, and `scripts/drill.sh`, which builds and runs this).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drills::system::System;
use drills::Drill;

#[derive(Parser)]
#[command(name = "drill", about = "Cause a failure on the running system and judge the promise it tests")]
struct Args {
    /// The drill to run.
    #[arg(value_enum)]
    drill: Drill,
    /// Against `docker compose up` instead of scripts/run.sh.
    #[arg(long)]
    compose: bool,
    /// With --compose: the scale-out profile, a 3-node ZooKeeper ensemble
    /// and a 3-node RabbitMQ cluster (docker-compose.scale-out.yml on top
    /// of docker-compose.yml). `--zookeeper`, its old name, still works.
    #[arg(long, requires = "compose", alias = "zookeeper")]
    scale_out: bool,
    /// The compose command (e.g. "docker-compose"); by default `docker
    /// compose` when it answers, else docker-compose.
    #[arg(long, env = "DRILL_COMPOSE")]
    compose_command: Option<String>,
    /// scripts/run.sh's data dir (its RUN_DIR).
    #[arg(long, env = "RUN_DIR")]
    run_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The repository: scripts/drill.sh runs us from there.
    let root = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let system = if args.compose {
        let mut command: Vec<String> = match args.compose_command {
            Some(c) => c.split_whitespace().map(str::to_string).collect(),
            None => default_compose(),
        };
        command.extend(["-f".into(), "docker-compose.yml".into()]);
        if args.scale_out {
            command.extend(["-f".into(), "docker-compose.scale-out.yml".into()]);
        }
        System::compose(root, command, args.scale_out)
    } else {
        let run_dir = args.run_dir.unwrap_or_else(|| root.join(".run"));
        match System::local(root, run_dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("drill: {e:#}");
                return ExitCode::from(2);
            }
        }
    };
    if drills::run(args.drill, system).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn default_compose() -> Vec<String> {
    let v2 =
        std::process::Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if v2 {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

//! `ha-worker`: the active/standby pair of scenario 4. The service is the
//! library (`ha_worker::run`); this parses flags and runs it.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = ha_worker::Args::parse();
    servicekit::telemetry::init(args.common.log_json);
    if let Err(e) = ha_worker::run(args, servicekit::shutdown_token()).await {
        eprintln!("ha-worker: {e:#}");
        std::process::exit(1);
    }
    // Exit now: a background task of the ZooKeeper client still retrying a
    // server that is away must not hold the process past its stop budget.
    std::process::exit(0);
}

//! `ha-worker`: the active/standby pair of scenario 4. The service is the
//! library (`ha_worker::run`); this parses flags and runs it.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = ha_worker::Args::parse();
    servicekit::telemetry::init(env!("CARGO_BIN_NAME"), args.common.log_json);
    if let Err(e) = ha_worker::run(args, servicekit::shutdown_token()).await {
        servicekit::telemetry::shutdown(std::time::Duration::from_secs(1));
        eprintln!("ha-worker: {e:#}");
        std::process::exit(1);
    }
    // Exit now: a background task of the ZooKeeper client still retrying a
    // server that is away must not hold the process past its stop budget.
    servicekit::telemetry::shutdown(std::time::Duration::from_secs(1));
    std::process::exit(0);
}

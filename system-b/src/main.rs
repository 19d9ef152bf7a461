//! `system-b`: the worker of scenarios 1 and 2. The service is the
//! library (`system_b::run`); this parses flags and runs it.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = system_b::Args::parse();
    servicekit::telemetry::init(env!("CARGO_BIN_NAME"), args.common.log_json);
    if let Err(e) = system_b::run(args, servicekit::shutdown_token()).await {
        servicekit::telemetry::shutdown(std::time::Duration::from_secs(1));
        eprintln!("system-b: {e:#}");
        std::process::exit(1);
    }
    // Exit now: a background task of a client still retrying a server that
    // is away must not hold the process after its bounded stop.
    servicekit::telemetry::shutdown(std::time::Duration::from_secs(1));
    std::process::exit(0);
}

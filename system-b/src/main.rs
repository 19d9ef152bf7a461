//! `system-b`: the worker of scenarios 1 and 2. The service is the
//! library (`system_b::run`); this parses flags and runs it.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = system_b::Args::parse();
    servicekit::telemetry::init(args.common.log_json);
    if let Err(e) = system_b::run(args, servicekit::shutdown_token()).await {
        eprintln!("system-b: {e:#}");
        std::process::exit(1);
    }
    // Exit now: a background task of a client still retrying a server that
    // is away must not hold the process after its bounded stop.
    std::process::exit(0);
}

//! `coordinator`: parse settings, bind, serve until SIGINT/SIGTERM.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // Named threads, so `top -H`, `perf` and flamegraphs tell the server's
    // workers apart from a client's in the same recording.
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("coordinator").build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = coordinator::Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries one line, the address clients can
    // use, once the server is listening (tests and scripts start it on port 0).
    // Coloured only on a terminal: escape codes in a log file are noise.
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coordinator: {e}");
            std::process::exit(2);
        }
    };
    let listener = listen(config.listen).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        listen = %addr,
        tick_ms = config.tick_time.as_millis() as u64,
        min_session_ms = config.min_session_timeout.as_millis() as u64,
        max_session_ms = config.max_session_timeout.as_millis() as u64,
        "coordinator starting"
    );
    let core = match coordinator::core::Core::open(config) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            eprintln!("coordinator: cannot open the data dir: {e}");
            std::process::exit(1);
        }
    };
    println!("coordinator listening on {addr}");
    coordinator::serve(listener, core, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The client port, with room in the kernel's queue for a connect storm:
/// after a restart every client reconnects at once, and a queue of the
/// default 1024 (cut to `net.core.somaxconn`) overflowed with 1,000
/// sessions, each dropped SYN costing its client a second before the
/// retry. The kernel caps the figure at `somaxconn` whatever is asked.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

//! `test-apiserver --listen 127.0.0.1:PORT --kubeconfig PATH`: serves until SIGTERM/SIGINT,
//! so people can try redis-pair with `KUBECONFIG=PATH kubectl ...`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// An in-memory Kubernetes API server (plain HTTP on loopback, no authentication).
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at this server (as the cluster admin).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve HTTPS and authenticate every request (needed for kubectl to send tokens).
    #[arg(long)]
    tls: bool,
}

/// Bad configuration (a flag, a busy port), as the rest of redis-pair exits.
const EXIT_CONFIG: u8 = 64;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_CONFIG)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let text = error.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            return fail(first.strip_prefix("error: ").unwrap_or(first));
        }
    };
    let options = test_apiserver::Options {
        listen: cli.listen,
        tls: cli.tls,
        ..Default::default()
    };
    let server = match test_apiserver::ApiServer::start(options).await {
        Ok(server) => server,
        Err(error) => return fail(format_args!("cannot listen on {}: {error}", cli.listen)),
    };
    if let Some(path) = &cli.kubeconfig
        && let Err(error) = server.write_kubeconfig(path)
    {
        return fail(format_args!(
            "cannot write the kubeconfig {}: {error}",
            path.display()
        ));
    }
    eprintln!("test-apiserver serving on {}", server.url());
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) else {
        return fail("cannot install the signal handlers");
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    ExitCode::SUCCESS
}

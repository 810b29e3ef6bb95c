//! The `redis-pair` binary: parse the command line, set up logging and the runtime, run the
//! chosen mode, and turn its outcome into an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use redis_pair::cli::{Cli, LogFormat, Mode};
use tracing_subscriber::EnvFilter;

/// EX_USAGE: the configuration is wrong and running again unchanged will not help.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    match cli.command {
        // Only the YAML on stdout: no logging.
        Mode::Crd => print_crd(),
        Mode::Local(args) => {
            init_logging(cli.log_format);
            let threads = args.proxy.threads;
            run(threads, redis_pair::local::run(args), |e| e.exit_code())
        }
        Mode::Controller(args) => {
            init_logging(cli.log_format);
            let threads = args.threads;
            run(threads, redis_pair::controller::run(args), |e| {
                e.exit_code()
            })
        }
        Mode::Proxy(args) => {
            init_logging(cli.log_format);
            let threads = args.proxy.threads;
            run(threads, redis_pair::sidecar::run(args), |e| e.exit_code())
        }
    }
}

/// Runs a mode to its end and turns the outcome into an exit code; a fatal error is logged
/// and printed as one `error: ...` line on stderr.
fn run<E: std::fmt::Display>(
    threads: usize,
    mode: impl Future<Output = Result<(), E>>,
    exit_code: impl Fn(&E) -> u8,
) -> ExitCode {
    let runtime = match runtime(threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("error: {error}");
            ExitCode::from(exit_code(&error))
        }
    }
}

fn print_crd() -> ExitCode {
    match redis_pair::crd::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot render the CRD: {error}");
            ExitCode::FAILURE
        }
    }
}

/// clap's messages span several lines; keep its first (which names the flag and the value)
/// and point at --help, so that every startup error is one line.
fn usage_error(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        _ => {
            let rendered = error.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: invalid command line");
            let first = if first.starts_with("error:") {
                first.to_owned()
            } else {
                format!("error: {first}")
            };
            eprintln!("{first} (see redis-pair --help)");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

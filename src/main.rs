//! `depot`: the appliance (`depot serve`) and its command-line client.
//!
//! Layout:
//! - `config`: `depot.toml`, parsed and validated.
//! - `serve`: wiring of the store, services, admin endpoint and signals.
//! - `state`: what `/health`, `/metrics` and `/status` report.
//! - `admin`: the HTTP admin endpoint.
//! - `status`: `depot status`, the client side of `/status`.
//! - `bench`: load tools (`depot bench ...`).
//! - `logcmd`: `depot log ...`, the command-line log client.

mod admin;
mod bench;
mod config;
mod logcmd;
mod serve;
mod state;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use config::Config;

/// Depot: a ZeroMQ appliance for logs, state, queues, clocks and multicast, on durable storage.
#[derive(Parser)]
#[command(name = "depot", version)]
struct Cli {
    /// Log line format on stderr (RUST_LOG sets the filter, default "info").
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance.
    Serve(ServeArgs),
    /// Show what the running appliance holds.
    Status(StatusArgs),
    /// Send, tail and replay log records.
    Log(LogArgs),
    /// Load tools that measure Depot on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(clap::Args)]
struct LogArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Append records on the acked path; exits 0 once every record is durable.
    Send(logcmd::SendArgs),
    /// Print stored records, and with -f follow new ones.
    Tail(logcmd::TailArgs),
    /// List streams.
    Streams {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Finds the running appliance: its run.json in the data folder, else the configuration.
fn endpoints(args: &ConfigArgs) -> anyhow::Result<logcmd::Endpoints> {
    let (config, data_dir) = args.load()?;
    let run = std::fs::read(data_dir.join(serve::RUN_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serve::RunInfo>(&bytes).ok());
    Ok(match run {
        Some(run) => logcmd::Endpoints {
            acked: run.logd.acked,
            live: run.logd.live,
            replay: run.logd.replay,
            admin: run.admin,
        },
        None => logcmd::Endpoints {
            acked: config.logd.acked,
            live: config.logd.live,
            replay: config.logd.replay,
            admin: config.admin.listen.to_string(),
        },
    })
}

fn log(args: &LogArgs) -> anyhow::Result<()> {
    let endpoints = endpoints(&args.config)?;
    match &args.command {
        LogCommand::Send(send) => logcmd::send(&endpoints, send),
        LogCommand::Tail(tail) => logcmd::tail(&endpoints, tail),
        LogCommand::Streams { json } => logcmd::streams(&endpoints, *json),
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable appends and read-back against the disk core, with the on-disk size.
    Store(bench::StoreBenchArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Configuration file (default: ./depot.toml if it exists, else built-in defaults).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Data folder (overrides [store] data_dir).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<(Config, PathBuf)> {
        let config = match &self.config {
            Some(path) => Config::load(path, true)?,
            None => Config::load(Path::new("depot.toml"), false)?,
        };
        let data_dir = self
            .data
            .clone()
            .unwrap_or_else(|| config.store.data_dir.clone());
        Ok((config, data_dir))
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Admin endpoint to ask, host:port (default: from the data folder's run.json, else the config).
    #[arg(long)]
    admin: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let (config, data_dir) = args.config.load()?;
    let admin = match &args.admin {
        Some(addr) => addr.clone(),
        None => std::fs::read(data_dir.join(serve::RUN_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serve::RunInfo>(&bytes).ok())
            .map_or_else(|| config.admin.listen.to_string(), |run| run.admin),
    };
    let report = status::fetch(&admin)?;
    let text = if args.json {
        serde_json::to_string_pretty(&report).context("encoding the report")? + "\n"
    } else {
        status::render(&report)
    };
    use std::io::Write;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match &cli.command {
        Command::Serve(args) => args
            .config
            .load()
            .and_then(|(config, data_dir)| serve::run(config, data_dir))
            // The appliance reports through its log, which collectors read.
            .inspect_err(|e| tracing::error!("{e:#}")),
        Command::Status(args) => status(args).inspect_err(|e| eprintln!("depot: {e:#}")),
        Command::Log(args) => log(args).inspect_err(|e| eprintln!("depot: {e:#}")),
        Command::Bench(BenchCommand::Store(args)) => {
            bench::store(args).inspect_err(|e| eprintln!("depot: {e:#}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

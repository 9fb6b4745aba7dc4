//! `depot`: the appliance (`depot serve`) and its command-line client.
//!
//! Layout:
//! - `config`: `depot.toml`, parsed and validated.
//! - `serve`: wiring of the store, services, admin endpoint and signals.
//! - `reload`: live reload of `depot.toml` (what applies at once, what needs a restart).
//! - `state`: what `/health`, `/metrics` and `/status` report.
//! - `admin`: the HTTP admin endpoint.
//! - `status`: `depot status`, the client side of `/status`.
//! - `bench`: load tools (`depot bench ...`); `queuebench`, `clockbench`, `busbench`: `depot
//!   bench queue`, `depot bench clock`, `depot bench bus`.
//! - `logcmd`: `depot log ...`, the command-line log client.
//! - `cachecmd`: `depot cache ...`, the command-line cache client.
//! - `queuecmd`: `depot queue ...`, the command-line queue client.
//! - `clockcmd`: `depot clock watch` and `depot timer ...`, the command-line clock client.
//! - `buscmd`: `depot bus ...`, list buses and watch one.
//! - `soak`: `depot bench soak`, the crash soak (kills and restarts a child appliance).

mod admin;
mod bench;
mod busbench;
mod buscmd;
mod cachecmd;
mod clockbench;
mod clockcmd;
mod logcmd;
mod queuebench;
mod queuecmd;
mod reload;
mod serve;
mod soak;
mod state;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use config::Config;
use depot::config;

/// Depot: a ZeroMQ appliance for logs, state, queues, clocks and multicast, on durable storage.
#[derive(Parser)]
#[command(name = "depot", version)]
struct Cli {
    /// Log line format on stderr (RUST_LOG sets the filter, default "info").
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Client key pair (NAME.key, from `depot keygen`) for an appliance with CURVE on.
    #[arg(long = "key", global = true, value_name = "FILE")]
    client_key: Option<PathBuf>,
    /// The server's public key (Z85, or a file holding it; default: server.pub in the data
    /// folder). Used with --key.
    #[arg(long = "server-key", global = true, value_name = "KEY|FILE")]
    server_public_key: Option<String>,
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
    /// Write a consistent copy of the running appliance's data to DIR.
    Backup {
        #[command(flatten)]
        config: ConfigArgs,
        /// Folder for the backup (created; must not hold one already).
        dir: PathBuf,
    },
    /// Restore a backup into the data folder (appliance stopped, folder without a database).
    Restore {
        #[command(flatten)]
        config: ConfigArgs,
        /// Folder holding the backup.
        dir: PathBuf,
    },
    /// Send, tail and replay log records.
    Log(LogArgs),
    /// Read and change the state cache.
    Cache {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: cachecmd::CacheCommand,
    },
    /// Publish to, consume from and inspect queues.
    Queue {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: queuecmd::QueueCommand,
    },
    /// Watch tick streams.
    Clock {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: clockcmd::ClockCommand,
    },
    /// Add, list and cancel persistent timers.
    Timer {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: clockcmd::TimerCommand,
    },
    /// List multicast buses, or watch one.
    Bus {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: buscmd::BusCommand,
    },
    /// Load tools that measure Depot on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Make a CURVE key pair for a client: NAME.key (secret, mode 0600) and NAME.pub.
    Keygen {
        /// Path and name of the files, without suffix.
        #[arg(long, default_value = "depot-client")]
        out: PathBuf,
    },
}

/// The configuration flags a command was given, if it takes them.
fn command_config(command: &Command) -> Option<&ConfigArgs> {
    match command {
        Command::Serve(args) => Some(&args.config),
        Command::Status(args) => Some(&args.config),
        Command::Log(args) => Some(&args.config),
        Command::Cache { config, .. }
        | Command::Queue { config, .. }
        | Command::Clock { config, .. }
        | Command::Timer { config, .. }
        | Command::Bus { config, .. }
        | Command::Backup { config, .. }
        | Command::Restore { config, .. } => Some(config),
        Command::Bench(BenchCommand::Logd { config, .. })
        | Command::Bench(BenchCommand::Bus { config, .. })
        | Command::Bench(BenchCommand::Cache { config, .. })
        | Command::Bench(BenchCommand::Queue { config, .. })
        | Command::Bench(BenchCommand::Clock { config, .. }) => Some(config),
        Command::Bench(BenchCommand::Store(_))
        | Command::Bench(BenchCommand::Soak(_))
        | Command::Keygen { .. } => None,
    }
}

/// With `--key`: makes every client socket of this process a CURVE client of the server.
fn use_client_keys(cli: &Cli) -> anyhow::Result<()> {
    use depot_common::security::{ClientKeys, Key, KeyPair};
    let Some(key_file) = &cli.client_key else {
        return Ok(());
    };
    let pair = KeyPair::load(key_file)?;
    let server_text = match &cli.server_public_key {
        Some(text) if text.trim().len() == 40 && !Path::new(text).exists() => text.clone(),
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the server key {path}"))?,
        None => {
            let data_dir = match command_config(&cli.command) {
                Some(args) => args.load()?.1,
                None => Config::default().store.data_dir,
            };
            let path = data_dir.join("server.pub");
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read the server's public key {}; pass --server-key",
                    path.display()
                )
            })?
        }
    };
    let server_public = Key::from_z85(&server_text)?;
    depot_common::security::set_process_client_keys(ClientKeys {
        server_public,
        pair,
    });
    Ok(())
}

/// `depot keygen`: writes the pair and prints the public key.
fn keygen(out: &Path) -> anyhow::Result<()> {
    let pair = depot_common::security::KeyPair::generate()?;
    pair.write(out)?;
    println!("{}", pair.public.z85());
    eprintln!(
        "wrote {} (secret, mode 0600) and {}; add the public key to the server's authorized_keys",
        depot_common::security::KeyPair::secret_path(out).display(),
        depot_common::security::KeyPair::public_path(out).display()
    );
    Ok(())
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
/// Returns the log service's endpoints and the admin address.
/// `depot backup DIR`: asks the running appliance to write the backup.
fn backup(args: &ConfigArgs, dir: &Path) -> anyhow::Result<()> {
    let (_, admin) = run_info(args)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let encoded: String = dir
        .to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    let body = status::http_request(
        &admin,
        "POST",
        &format!("/backup?dir={encoded}"),
        std::time::Duration::from_secs(3600),
    )?;
    let stats: depot_store::BackupStats = serde_json::from_str(&body)?;
    println!(
        "backup written to {}: {} trees, {} entries, {} bytes",
        dir.join(depot_store::BACKUP_FILE).display(),
        stats.trees,
        stats.entries,
        stats.bytes
    );
    Ok(())
}

/// `depot restore DIR`: fills the (stopped) appliance's empty data folder from a backup.
fn restore(args: &ConfigArgs, dir: &Path) -> anyhow::Result<()> {
    let (_, data_dir) = args.load()?;
    let stats = depot_store::restore(dir, &data_dir).with_context(|| {
        format!(
            "cannot restore {} into {}",
            dir.display(),
            data_dir.display()
        )
    })?;
    println!(
        "restored {} trees, {} entries into {}; start `depot serve` on it",
        stats.trees,
        stats.entries,
        data_dir.display()
    );
    Ok(())
}

fn run_info(args: &ConfigArgs) -> anyhow::Result<(depot_logd::LogdEndpoints, String)> {
    let (config, data_dir) = args.load()?;
    let run = std::fs::read(data_dir.join(serve::RUN_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serve::RunInfo>(&bytes).ok());
    Ok(match run {
        Some(run) => (run.logd, run.admin),
        None => {
            let logd = &config.logd;
            let endpoints = depot_logd::LogdEndpoints {
                pull: logd.pull.clone(),
                sub: logd.sub.clone(),
                acked: logd.acked.clone(),
                live: logd.live.clone(),
                live_packed: logd.live_packed.clone(),
                replay: logd.replay.clone(),
                replay_api: logd.replay_api.clone(),
                syslog_udp: logd.syslog_udp.map(|a| a.to_string()),
                syslog_tcp: logd.syslog_tcp.map(|a| a.to_string()),
            };
            (endpoints, config.admin.listen.to_string())
        }
    })
}

/// The running appliance's cache endpoints: run.json in the data folder, else the configuration.
fn cache_endpoints(args: &ConfigArgs) -> anyhow::Result<depot_cache::client::ServerEndpoints> {
    let (config, data_dir) = args.load()?;
    let run = std::fs::read(data_dir.join(serve::RUN_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serve::RunInfo>(&bytes).ok())
        .and_then(|run| run.cache);
    Ok(match run {
        Some(c) => depot_cache::client::ServerEndpoints {
            snapshot: c.snapshot,
            publisher: c.publisher,
            collector: c.collector,
        },
        None => depot_cache::client::ServerEndpoints {
            snapshot: config.cache.snapshot,
            publisher: config.cache.publisher,
            collector: config.cache.collector,
        },
    })
}

/// The running appliance's queue endpoints: run.json in the data folder, else the configuration.
fn queue_endpoints(args: &ConfigArgs) -> anyhow::Result<depot_queue::QueueEndpoints> {
    let (config, data_dir) = args.load()?;
    let run = std::fs::read(data_dir.join(serve::RUN_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serve::RunInfo>(&bytes).ok())
        .and_then(|run| run.queue);
    Ok(run.unwrap_or_else(|| depot_queue::QueueEndpoints {
        router: config.queue.router.clone(),
        pull: config.queue.pull.clone(),
        push: Default::default(),
    }))
}

/// The running appliance's process id, from run.json.
fn appliance_pid(args: &ConfigArgs) -> Option<u32> {
    let (_, data_dir) = args.load().ok()?;
    let bytes = std::fs::read(data_dir.join(serve::RUN_FILE)).ok()?;
    serde_json::from_slice::<serve::RunInfo>(&bytes)
        .ok()
        .map(|run| run.pid)
}

/// The running appliance's clock endpoints and pid: run.json in the data folder, else the
/// configuration.
fn clock_endpoints(
    args: &ConfigArgs,
) -> anyhow::Result<(depot_clock::ClockEndpoints, Option<u32>)> {
    let (config, data_dir) = args.load()?;
    let run = std::fs::read(data_dir.join(serve::RUN_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serve::RunInfo>(&bytes).ok());
    if let Some(run) = run {
        let pid = run.pid;
        return run
            .clock
            .map(|clock| (clock, Some(pid)))
            .context("the running appliance has no clock ([clock] publisher is empty)");
    }
    anyhow::ensure!(
        !config.clock.publisher.is_empty(),
        "the configuration switches the clock off ([clock] publisher is empty)"
    );
    Ok((
        depot_clock::ClockEndpoints {
            publisher: config.clock.publisher,
            publisher_extra: config.clock.publisher_extra,
            timers: config.clock.timers,
        },
        None,
    ))
}

fn endpoints(args: &ConfigArgs) -> anyhow::Result<logcmd::Endpoints> {
    let (run, admin) = run_info(args)?;
    Ok(logcmd::Endpoints {
        acked: run.acked,
        live: run.live,
        replay: run.replay,
        replay_api: run.replay_api,
        admin,
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
    /// Load against a running appliance's log service.
    Logd {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: bench::LogdBenchArgs,
    },
    /// Throughput and loss of a multicast bus (or of libzmq EPGM alone).
    Bus {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: busbench::BusBenchArgs,
    },
    /// Load against a running appliance's cache.
    Cache {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: bench::CacheBenchArgs,
    },
    /// Load against a running appliance's queue.
    Queue {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: queuebench::QueueBenchArgs,
    },
    /// Tick lateness and timer firing rate of a running appliance's clock.
    Clock {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: clockbench::ClockBenchArgs,
    },
    /// Crash soak: mixed load on a child appliance killed and restarted at random moments,
    /// checking after each restart that nothing acknowledged was lost.
    Soak(soak::SoakArgs),
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

    /// The file a live reload watches: the one given, else `./depot.toml` when it exists.
    fn watched_file(&self) -> Option<PathBuf> {
        let default = Path::new("depot.toml");
        self.config
            .clone()
            .or_else(|| default.exists().then(|| default.to_path_buf()))
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

/// The running appliance's admin address: run.json in the data folder, else the configuration.
fn admin_address(config: &Config, data_dir: &Path) -> String {
    std::fs::read(data_dir.join(serve::RUN_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serve::RunInfo>(&bytes).ok())
        .map_or_else(|| config.admin.listen.to_string(), |run| run.admin)
}

fn bus(config: &ConfigArgs, command: &buscmd::BusCommand) -> anyhow::Result<()> {
    let (config, data_dir) = config.load()?;
    let admin = admin_address(&config, &data_dir);
    match command {
        buscmd::BusCommand::Ls { json } => buscmd::ls(&admin, *json),
        buscmd::BusCommand::Watch(args) => buscmd::watch(args, &config.multicast, &admin),
        buscmd::BusCommand::Keygen { out } => buscmd::keygen(out),
    }
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let (config, data_dir) = args.config.load()?;
    let admin = match &args.admin {
        Some(addr) => addr.clone(),
        None => admin_address(&config, &data_dir),
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

/// Fixes glibc's mmap threshold at its default (128 KiB). Left dynamic, glibc raises it each
/// time a large block is freed; later large buffers (blocks, batches, socket messages) then come
/// from the arenas, fragment them and are not given back: under a sustained load RSS grew by
/// MiB a minute over a live heap under 8 MiB (RELIABILITY.md, memory).
fn fix_malloc_mmap_threshold() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    if ok != 1 {
        tracing::warn!("mallopt(M_MMAP_THRESHOLD) failed; memory may fragment under load");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    fix_malloc_mmap_threshold();
    let result = use_client_keys(&cli).and_then(|()| match &cli.command {
        Command::Keygen { out } => keygen(out),
        Command::Serve(args) => args.config.load().and_then(|(config, data_dir)| {
            serve::run(config, data_dir, args.config.watched_file())
        }),
        Command::Status(args) => status(args),
        Command::Backup { config, dir } => backup(config, dir),
        Command::Restore { config, dir } => restore(config, dir),
        Command::Log(args) => log(args),
        Command::Queue { config, command } => {
            queue_endpoints(config).and_then(|endpoints| queuecmd::run(&endpoints, command))
        }
        Command::Bench(BenchCommand::Queue { config, args }) => queue_endpoints(config)
            .and_then(|endpoints| queuebench::run(&endpoints, appliance_pid(config), args)),
        Command::Cache { config, command } => {
            cache_endpoints(config).and_then(|server| cachecmd::run(&server, command))
        }
        Command::Clock { config, command } => {
            clock_endpoints(config).and_then(|(clock, _)| match command {
                clockcmd::ClockCommand::Watch(args) => clockcmd::watch(&clock, args),
            })
        }
        Command::Timer { config, command } => {
            clock_endpoints(config).and_then(|(clock, _)| clockcmd::timer(&clock, command))
        }
        Command::Bench(BenchCommand::Clock { config, args }) => {
            clock_endpoints(config).and_then(|(clock, pid)| clockbench::run(&clock, pid, args))
        }
        Command::Bus { config, command } => bus(config, command),
        Command::Bench(BenchCommand::Store(args)) => bench::store(args),
        Command::Bench(BenchCommand::Soak(args)) => soak::run(args),
        Command::Bench(BenchCommand::Bus { config, args }) => config
            .load()
            .and_then(|(c, _)| run_info(config).map(|(logd, _)| (c, logd)))
            .and_then(|(c, logd)| busbench::run(args, &c.multicast, &logd)),
        Command::Bench(BenchCommand::Cache { config, args }) => {
            cache_endpoints(config).and_then(|server| bench::cache(&server, args))
        }
        Command::Bench(BenchCommand::Logd { config, args }) => {
            run_info(config).and_then(|(run, admin)| bench::logd(&run, &admin, args))
        }
    });
    if let Err(e) = &result {
        match cli.command {
            // The appliance reports through its log, which collectors read.
            Command::Serve(_) => tracing::error!("{e:#}"),
            _ => eprintln!("depot: {e:#}"),
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand's arguments agree with the global ones (a clash only shows at run time).
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for args in [
            &["depot", "cache", "set", "/a", "1", "--key", "k.key"][..],
            &["depot", "queue", "--help"][..],
            &[
                "depot",
                "log",
                "send",
                "--stream",
                "s",
                "x",
                "--server-key",
                "s.pub",
            ][..],
        ] {
            let parsed = Cli::try_parse_from(args);
            assert!(
                parsed.is_ok()
                    || parsed.as_ref().err().map(clap::Error::kind)
                        == Some(clap::error::ErrorKind::DisplayHelp),
                "{args:?}"
            );
        }
        let cli =
            Cli::try_parse_from(["depot", "cache", "set", "/a", "1", "--key", "k.key"]).unwrap();
        assert_eq!(cli.client_key, Some(PathBuf::from("k.key")));
    }
}

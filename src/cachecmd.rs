//! `depot cache ...`: read and change the state cache from the command line.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use depot_cache::client::{CacheClient, ServerEndpoints};
use depot_cache::protocol::KvMsg;

/// `depot cache` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Print the value of KEY (exit 1 if it is not set).
    Get {
        /// The key, e.g. /app/config/x.
        key: String,
    },
    /// Set KEY to VALUE; returns once the cache has published it.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Time to live, e.g. 30s, 10m.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Delete KEY; returns once the delete is published.
    Del {
        /// The key.
        key: String,
    },
    /// Print every key under SUBTREE (default: all).
    Dump {
        /// Key prefix.
        subtree: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print changes under SUBTREE as they happen.
    Watch {
        /// Key prefix.
        subtree: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn print(out: &mut impl Write, msg: &KvMsg, json: bool) -> std::io::Result<()> {
    let key = String::from_utf8_lossy(&msg.key);
    let value = String::from_utf8_lossy(&msg.body);
    if json {
        let properties: serde_json::Map<String, serde_json::Value> = msg
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let line = serde_json::json!({ "key": key, "seq": msg.seq, "value": value, "properties": properties });
        writeln!(out, "{line}")
    } else if msg.is_delete() {
        writeln!(out, "{key} (deleted) #{}", msg.seq)
    } else {
        writeln!(out, "{key} = {value} #{}", msg.seq)
    }
}

/// Runs a `depot cache` subcommand against the server at `server`.
pub fn run(server: &ServerEndpoints, command: &CacheCommand) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let join = |subtree: &str| {
        CacheClient::join(&ctx, server, subtree.as_bytes(), TIMEOUT)
            .with_context(|| format!("joining the cache at {}", server.snapshot))
    };
    let fetch = |subtree: &str| {
        CacheClient::fetch(&ctx, server, subtree.as_bytes(), TIMEOUT)
            .with_context(|| format!("reading the cache at {}", server.snapshot))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        CacheCommand::Get { key } => {
            let client = fetch(key)?;
            let value = client
                .get(key.as_bytes())
                .with_context(|| format!("{key} is not set"))?;
            out.write_all(value)?;
            writeln!(out)?;
        }
        CacheCommand::Set { key, value, ttl } => {
            let ttl = ttl
                .as_deref()
                .map(depot_common::config::parse_duration)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                !value.is_empty(),
                "an empty value would delete the key: use `depot cache del`"
            );
            let mut client = join(key)?;
            let published = client.set(key.as_bytes(), value.as_bytes(), ttl, TIMEOUT)?;
            eprintln!("{key} set (#{})", published.seq);
        }
        CacheCommand::Del { key } => {
            let mut client = join(key)?;
            let published = client.delete(key.as_bytes(), TIMEOUT)?;
            eprintln!("{key} deleted (#{})", published.seq);
        }
        CacheCommand::Dump { subtree, json } => {
            let client = fetch(subtree.as_deref().unwrap_or(""))?;
            for msg in client.entries() {
                print(&mut out, msg, *json)?;
            }
        }
        CacheCommand::Watch { subtree, json } => {
            let mut client = join(subtree.as_deref().unwrap_or(""))?;
            loop {
                for msg in client.poll(Duration::from_secs(1))? {
                    print(&mut out, &msg, *json)?;
                }
                out.flush()?;
            }
        }
    }
    Ok(())
}

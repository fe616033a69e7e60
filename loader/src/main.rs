//! `xdpdns`: the privileged loader and the operator's command line.

mod blocks;
mod bpf;
mod config_file;
mod control;
mod dryrun;
mod dynamic;
mod forwarding;
mod instance;
mod metrics;
mod plan;
mod reload;
mod run;
mod sockets;
mod status;
mod system;
mod workers;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xdpdns_common::config::Config;

use crate::plan::Plan;

/// xdpdns: a DNS frontend whose UDP fast path runs on AF_XDP.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, start one dataplane per queue, serve until SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration against this machine and print the plan;
    /// touches no BPF state.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Instead of the plan: say what the rules do with a query NAME TYPE
        /// (nothing is sent).
        #[arg(long, num_args = 2, value_names = ["NAME", "TYPE"])]
        query: Option<Vec<String>>,
        /// The query's client address.
        #[arg(long, default_value = "192.0.2.100", requires = "query")]
        from: std::net::IpAddr,
        /// The listen address it arrives at (default: the first).
        #[arg(long, requires = "query")]
        to: Option<std::net::SocketAddr>,
        /// Over TCP.
        #[arg(long, requires = "query")]
        tcp: bool,
        /// With the DO bit.
        #[arg(long = "do", requires = "query")]
        dnssec_ok: bool,
    },
    /// Show a running instance's queues, dataplanes and counters.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make a running instance re-read FILE and apply what can change live
    /// (also done on SIGHUP, from the file it runs from). An invalid file
    /// changes nothing.
    Reload {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Replace the dataplane of one queue, leaving the others alone.
    RestartQueue {
        #[arg(long, short)]
        config: PathBuf,
        /// The queue id.
        queue: u32,
    },
    /// Block client prefixes in the XDP program at run time (beside the
    /// configuration's [[block]] list; not kept across a loader restart).
    Block {
        #[command(subcommand)]
        what: BlockCommand,
    },
    /// The packet cache shared by every queue ([cache] entries).
    Cache {
        #[command(subcommand)]
        what: CacheCommand,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Remove NAME's entries (of TYPE only, if given) from the cache, for
    /// every queue at once; with --suffix, every name at or below NAME.
    Purge {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
        qtype: Option<String>,
        #[arg(long)]
        suffix: bool,
    },
    /// Hits, misses, inserts, evictions, collisions, stale answers per queue.
    Stats {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BlockCommand {
    /// Drop queries from PREFIX (an address is a /32 or /128), at once.
    Add {
        #[arg(long, short)]
        config: PathBuf,
        prefix: String,
        /// For how long: 60s, 5m, 2h, 1d (at most a day); default: until deleted.
        #[arg(long = "for")]
        duration: Option<String>,
        /// What its UDP queries get: drop, refused or tc (answered in XDP;
        /// dropped where XDP_TX cannot reach the peer, see xdp.tx_answers).
        #[arg(long, default_value = "drop")]
        action: String,
        /// Drop its TCP to listen addresses too (by default TCP stays open,
        /// so clients answered TC=1 can retry).
        #[arg(long)]
        tcp: bool,
    },
    /// Lift a run-time block.
    Del {
        #[arg(long, short)]
        config: PathBuf,
        prefix: String,
    },
    /// The run-time blocks, with the time each has left.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(config_file::load(path)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    xdpdns_common::logging::init("info");
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends one request to the instance `config` names.
fn ask(config: &Path, request: control::Request) -> anyhow::Result<control::Response> {
    let config = load_config(config)?;
    let f = &config.fixed;
    let path = instance::control_socket(&f.runtime_dir.join(&f.instance));
    runtime()?.block_on(control::request(&path, &request))
}

fn done(response: control::Response) -> anyhow::Result<ExitCode> {
    match response {
        control::Response::Done(lines) => {
            for l in lines {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        control::Response::Error(e) => anyhow::bail!(e),
        control::Response::Status(_) => anyhow::bail!("unexpected answer"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: dataplanes are forked from it, and their parent-death
    // signal follows the thread that forked them.
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config: path } => {
            let config = load_config(&path)?;
            let plan = Plan::resolve(&config)?;
            let path = std::fs::canonicalize(&path)?;
            runtime()?.block_on(run::run(plan, config.live, path))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config: path,
            query: Some(q),
            from,
            to,
            tcp,
            dnssec_ok,
        } => {
            let config = load_config(&path)?;
            let q = dryrun::DryQuery {
                name: q[0].clone(),
                qtype: q[1].clone(),
                from,
                to,
                tcp,
                dnssec_ok,
            };
            print!("{}", dryrun::explain(&config, &q)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config: path,
            query: None,
            ..
        } => {
            let config = load_config(&path)?;
            let plan = Plan::resolve(&config)?;
            print!("{}", plan.describe(&config.live));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => match ask(&config, control::Request::Status)? {
            control::Response::Status(s) if json => {
                println!("{}", serde_json::to_string_pretty(&s)?);
                Ok(ExitCode::SUCCESS)
            }
            control::Response::Status(s) => {
                print!("{}", s.render());
                Ok(ExitCode::SUCCESS)
            }
            other => done(other),
        },
        Command::Reload { config } => done(ask(&config, control::Request::Reload {})?),
        Command::RestartQueue { config, queue } => {
            done(ask(&config, control::Request::RestartQueue { queue })?)
        }
        Command::Block { what } => match what {
            BlockCommand::Add {
                config,
                prefix,
                duration,
                action,
                tcp,
            } => {
                let action: xdpdns_common::config::BlockAction = action
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--action {e}"))?;
                let for_s = duration
                    .map(|d| blocks::parse_duration(&d).map(|d| d.as_secs()))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--for {e}"))?;
                done(ask(
                    &config,
                    control::Request::BlockAdd {
                        prefix,
                        for_s,
                        tcp,
                        action,
                    },
                )?)
            }
            BlockCommand::Del { config, prefix } => {
                done(ask(&config, control::Request::BlockDel { prefix })?)
            }
            BlockCommand::List { config } => done(ask(&config, control::Request::BlockList {})?),
        },
        Command::Cache { what } => match what {
            CacheCommand::Purge {
                config,
                name,
                qtype,
                suffix,
            } => done(ask(
                &config,
                control::Request::CachePurge {
                    name,
                    qtype,
                    suffix,
                },
            )?),
            CacheCommand::Stats { config } => match ask(&config, control::Request::Status)? {
                control::Response::Status(s) => {
                    print!("{}", s.render_cache());
                    Ok(ExitCode::SUCCESS)
                }
                other => done(other),
            },
        },
    }
}

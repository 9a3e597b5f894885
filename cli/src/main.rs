//! `dagger`: the command-line client.

mod client;
mod connect;
mod drivers;
mod export;
mod host;
mod progress;
mod run;
mod runner_host;
mod session;
mod sockets;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

#[derive(Parser)]
#[command(name = "dagger", version = VERSION, about = "Run Dagger pipelines on a Dagger-compatible engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the client and engine versions.
    Version,
    /// Send a GraphQL document to the engine and print the JSON result.
    Query {
        /// Read the document from FILE instead of standard input.
        #[arg(long, value_name = "FILE")]
        doc: Option<PathBuf>,
        /// How to show the engine's progress on stderr.
        #[arg(long, value_enum, default_value = "auto")]
        progress: progress::Mode,
    },
    /// Run a command with a session: SDKs inside it reach the engine through
    /// DAGGER_SESSION_PORT and DAGGER_SESSION_TOKEN.
    #[command(after_help = "Examples:\n  dagger run python3 main.py\n  dagger run node main.mjs")]
    Run {
        /// How to show the engine's progress on stderr (stdout is the command's).
        #[arg(long, value_enum, default_value = "auto")]
        progress: progress::Mode,
        /// The command and its arguments; everything after COMMAND belongs to it.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Serve the engine's API to an SDK on 127.0.0.1 (started by the SDKs themselves).
    #[command(hide = true, disable_help_flag = true)]
    Session {
        /// Flags the SDKs pass (`--label`, `--workdir`, `--project`, ...): accepted and ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ignored: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dagger: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dagger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => version().await,
        Command::Query { doc, progress } => query(doc, progress).await,
        Command::Run { command, progress } => run::command(command, progress).await,
        Command::Session { ignored } => session::command(session_progress(&ignored)?).await,
    }
}

async fn version() -> anyhow::Result<ExitCode> {
    let client = connect::connect().await?;
    let answer = client.query("{ version defaultPlatform }").await?;
    let data = &answer.body["data"];
    let (Some(engine), Some(platform)) =
        (data["version"].as_str(), data["defaultPlatform"].as_str())
    else {
        anyhow::bail!(
            "the engine at {} did not report its version: {}",
            client.endpoint,
            answer.body
        );
    };
    println!(
        "dagger {VERSION} (engine {engine} at {}) {platform}",
        client.endpoint
    );
    Ok(ExitCode::SUCCESS)
}

/// `--progress` among `dagger session`'s otherwise ignored flags (quiet by default: the SDKs
/// only show the session's stderr when something fails).
fn session_progress(args: &[String]) -> anyhow::Result<progress::Mode> {
    use clap::ValueEnum as _;
    let mut value = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--progress=") {
            value = Some(v.to_string());
        } else if a == "--progress" {
            value = it.next().cloned();
        }
    }
    match value {
        None => Ok(progress::Mode::Quiet),
        Some(v) => progress::Mode::from_str(&v, true).map_err(|_| {
            anyhow::anyhow!("--progress: expected auto, plain, tty or quiet, got {v:?}")
        }),
    }
}

async fn query(doc: Option<PathBuf>, progress: progress::Mode) -> anyhow::Result<ExitCode> {
    let document = match &doc {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the query from standard input")?;
            s
        }
    };
    if document.trim().is_empty() {
        anyhow::bail!("no query: pass a GraphQL document on standard input or with --doc FILE");
    }
    let client = connect::connect().await?;
    // Through a session channel, so the query can export to this machine and show progress.
    let channel = session::Channel::open(&client, progress::Progress::new(progress)).await?;
    let answer = session::query_in_session(&client, &channel.id, &document).await;
    channel.close().await;
    let answer = answer?;
    let data = &answer.body["data"];
    if !data.is_null() {
        println!("{}", serde_json::to_string_pretty(data)?);
    }
    let errors = answer.body["errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if errors.is_empty() && answer.status < 400 {
        return Ok(ExitCode::SUCCESS);
    }
    for e in &errors {
        let msg = e["message"].as_str().unwrap_or("(no message)");
        match e["path"].as_array() {
            Some(path) if !path.is_empty() => {
                let path: Vec<String> = path
                    .iter()
                    .map(|p| {
                        p.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| p.to_string())
                    })
                    .collect();
                eprintln!("Error: {msg} (at {})", path.join("."))
            }
            _ => eprintln!("Error: {msg}"),
        }
    }
    if errors.is_empty() {
        eprintln!("Error: the engine answered HTTP {}", answer.status);
    }
    Ok(ExitCode::FAILURE)
}

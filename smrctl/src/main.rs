//! smrctl: the cluster client. Applies and inspects definitions and nodes through the REST API.
//!
//! Exit codes: 0 success, 1 other failure, 2 usage, 3 invalid input (definitions, bad request),
//! 4 not found, 5 conflict, 6 cluster unavailable or unreachable, 7 authentication or context,
//! 8 `apply` waited and the rollout was not ready in time.

use std::path::PathBuf;
use std::process::ExitCode;

use api_types::client::{Client, ClientError, Context};
use api_types::now_ms;
use clap::{Parser, Subcommand};
use smr_core::definitions::{self, ObjectKey};
use smr_core::scheduler::Availability;
use smr_core::state::{GitopsState, Outcome, StoredObject};
use smrctl::output::{self, Format};

#[derive(Parser)]
#[command(
    name = "smrctl",
    version,
    about = "Apply and inspect smr definitions and nodes"
)]
struct Cli {
    /// Context file (API URL + client certificate). Default: $SMR_CONTEXT, the one `smrmgr start`
    /// recorded, or /var/lib/smr/admin.context.
    #[arg(long, global = true)]
    context: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or update the definitions in files or directories, all or none.
    Apply {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Validate and show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Wait until the applied `containers` objects are rolled out and ready (the default).
        #[arg(long, overrides_with = "no_wait")]
        wait: bool,
        /// Return once the definitions are stored.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for readiness (e.g. 90s, 5m); exit code 8 when it runs out.
        #[arg(long, default_value = "5m", value_parser = definitions::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Delete the definitions of files, or objects by KIND/GROUP/NAME.
    Delete {
        #[arg(short = 'f', long = "file")]
        files: Vec<PathBuf>,
        keys: Vec<String>,
    },
    /// Show one object (KIND/GROUP/NAME).
    Get {
        key: String,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
    },
    /// List objects, all or of one kind.
    List {
        kind: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Nodes of the cluster: role, leader, address, health, scheduling (active, cordoned,
    /// draining) and replicas held; `-o wide` adds subnet, backend, VTEP
    /// MAC, public address, WireGuard port and the answering node's WireGuard session with each
    /// peer (last handshake, bytes received and sent).
    Nodes {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Replicas: node, state, image, IP, restarts, age.
    Ps {
        /// Only the replicas of this object (KIND/GROUP/NAME).
        object: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// An object with its replicas and their history.
    Describe {
        key: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Cluster events; -f follows new ones.
    Events {
        /// Only events of this object (KIND/GROUP/NAME) or node (node/NAME).
        subject: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The end of a replica's log (from the node that runs it).
    Logs {
        replica: String,
        #[arg(long)]
        tail: Option<usize>,
        /// Keep following the log until the container stops (or Ctrl-C).
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Run a command in a replica; exits with the command's exit code.
    Exec {
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a terminal for the command (raw mode locally when stdin is a terminal).
        #[arg(short = 't', long)]
        tty: bool,
        replica: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Gitops repositories the cluster follows: list (default), describe, sync.
    Gitops {
        #[command(subcommand)]
        action: Option<GitopsCmd>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The `*.private` names the answering node serves, with their addresses.
    Dns {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Remove a node from the cluster by id.
    RemoveNode { id: u64 },
    /// Take a node (id or name) out of scheduling: it keeps its replicas and gets no new ones.
    Cordon { node: String },
    /// Let a cordoned or drained node (id or name) take new replicas again.
    Uncordon { node: String },
    /// Cordon a node (id or name), then move its replicas to other nodes one batch at a time
    /// (the rolling-update limits), each new replica ready before the old one stops; prints
    /// progress and returns once the node holds no replica (exit 8 after --timeout).
    Drain {
        node: String,
        #[arg(long, default_value = "5m", value_parser = definitions::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show which context is used and where it points.
    Context,
    /// Print the API's OpenAPI document.
    Openapi,
}

#[derive(Subcommand)]
enum GitopsCmd {
    /// Every gitops object: repository, commit, state, last sync, message.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// One gitops object (GROUP/NAME): status and the objects it deployed.
    Describe {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Fetch and deploy now (GROUP/NAME), even with automaticSync off; waits for the result.
    Sync {
        name: String,
        /// Return once the request is recorded.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for the sync.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
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
            eprintln!("smrctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for a blocking read of stdin (`exec -i`) that may still be pending.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Client(e)) => {
            eprintln!("smrctl: {e}");
            if let ClientError::Api {
                details: Some(details),
                ..
            } = &e
                && !details.is_null()
            {
                eprintln!(
                    "{}",
                    serde_json::to_string_pretty(details).unwrap_or_default()
                );
            }
            ExitCode::from(e.exit_code() as u8)
        }
        Err(Failure::Input(e)) => {
            eprintln!("smrctl: {e}");
            ExitCode::from(3)
        }
        Err(Failure::NotFound(e)) => {
            eprintln!("smrctl: {e}");
            ExitCode::from(4)
        }
        Err(Failure::NotReady(e)) => {
            eprintln!("smrctl: {e}");
            ExitCode::from(smrctl::rollout::NOT_READY_EXIT)
        }
        Err(Failure::Other(e)) => {
            eprintln!("smrctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Client(ClientError),
    Input(String),
    /// The rollout was not ready in time.
    NotReady(String),
    /// A command line naming what does not exist (exit 4).
    NotFound(String),
    Other(anyhow::Error),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<smrctl::drain::DrainError> for Failure {
    fn from(e: smrctl::drain::DrainError) -> Self {
        use smrctl::drain::DrainError;
        match e {
            DrainError::Client(e) => Failure::Client(e),
            DrainError::NoSuchNode(e) => Failure::NotFound(e),
            DrainError::Timeout(e) => Failure::NotReady(e),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn connect(flag: Option<PathBuf>) -> Result<Client, Failure> {
    let path = smrctl::resolve_context(flag);
    let ctx = Context::load(&path)?;
    Ok(Client::from_context(&ctx)?)
}

fn load_files(files: &[PathBuf]) -> Result<Vec<definitions::Object>, Failure> {
    let mut objects = Vec::new();
    for file in files {
        objects.extend(definitions::load_path(file).map_err(|e| Failure::Input(e.to_string()))?);
    }
    if objects.is_empty() {
        return Err(Failure::Input(
            "no definitions found in the given files".into(),
        ));
    }
    Ok(objects)
}

fn parse_key(text: &str) -> Result<ObjectKey, Failure> {
    text.parse()
        .map_err(|e: definitions::KeyError| Failure::Input(e.to_string()))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Cmd::Apply {
            files,
            dry_run,
            output,
            wait,
            no_wait,
            timeout,
        } => {
            let objects = load_files(&files)?;
            let client = connect(cli.context)?;
            let response = client.apply(&objects, dry_run, None).await?;
            let _ = wait; // the default; the flag exists to override an earlier --no-wait
            match output {
                Format::Json => print!("{}", output::json(&response)?),
                Format::Yaml => print!("{}", output::yaml(&response)?),
                Format::Table | Format::Wide => {
                    let suffix = if dry_run { " (dry run)" } else { "" };
                    for o in &response.outcomes {
                        println!("{} {}{suffix}", o.key, outcome_word(o.outcome));
                    }
                }
            }
            let rollouts: Vec<ObjectKey> = response
                .outcomes
                .iter()
                .filter(|o| o.key.kind == definitions::Kind::Containers)
                .filter(|o| !matches!(o.outcome, Outcome::Deleted | Outcome::NotFound))
                .map(|o| o.key.clone())
                .collect();
            if !dry_run && !no_wait && !rollouts.is_empty() {
                let ready = smrctl::rollout::wait(&client, &rollouts, response.revision, timeout)
                    .await
                    .map_err(|e| match e {
                        smrctl::rollout::WaitError::Client(e) => Failure::Client(e),
                        smrctl::rollout::WaitError::NotReady(why) => Failure::NotReady(why),
                    })?;
                if matches!(output, Format::Table | Format::Wide) {
                    for p in ready {
                        println!("{}", p.line());
                    }
                }
            }
        }
        Cmd::Delete { files, keys } => {
            let mut all: Vec<ObjectKey> = keys
                .iter()
                .map(|k| parse_key(k))
                .collect::<Result<_, _>>()?;
            if !files.is_empty() {
                all.extend(load_files(&files)?.iter().map(|o| o.key()));
            }
            if all.is_empty() {
                return Err(Failure::Input(
                    "nothing to delete: give -f FILE or KIND/GROUP/NAME".into(),
                ));
            }
            let client = connect(cli.context)?;
            let response = client.delete(&all).await?;
            for o in &response.outcomes {
                println!("{} {}", o.key, outcome_word(o.outcome));
            }
        }
        Cmd::Get { key, output } => {
            let key = parse_key(&key)?;
            let client = connect(cli.context)?;
            let stored = client.get(&key).await?;
            match output {
                Format::Json => print!("{}", output::json(&stored)?),
                Format::Yaml => print!(
                    "{}",
                    definitions::to_yaml(std::slice::from_ref(&stored.object))
                        .map_err(|e| Failure::Other(e.into()))?
                ),
                Format::Table | Format::Wide => print!("{}", objects_table(&[stored])),
            }
        }
        Cmd::List { kind, output } => {
            let kind = kind
                .map(|k| {
                    k.parse::<definitions::Kind>()
                        .map_err(|e| Failure::Input(e.to_string()))
                })
                .transpose()?;
            let client = connect(cli.context)?;
            let objects = client.list(kind).await?;
            match output {
                Format::Json => print!("{}", output::json(&objects)?),
                Format::Yaml => print!(
                    "{}",
                    definitions::to_yaml(&api_types::plain_objects(&objects))
                        .map_err(|e| Failure::Other(e.into()))?
                ),
                Format::Table | Format::Wide => print!("{}", objects_table(&objects)),
            }
        }
        Cmd::Nodes { output } => {
            let client = connect(cli.context)?;
            let nodes = client.nodes().await?;
            match output {
                Format::Json => print!("{}", output::json(&nodes)?),
                Format::Yaml => print!("{}", output::yaml(&nodes)?),
                Format::Table | Format::Wide => {
                    let now = now_ms();
                    let wide = output == Format::Wide;
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            let role = if n.leader {
                                format!("{} (leader)", n.role)
                            } else {
                                n.role.clone()
                            };
                            let mut row = vec![
                                n.id.to_string(),
                                n.name.clone(),
                                role,
                                n.ip.clone(),
                                n.api.clone(),
                                n.health.clone(),
                                n.availability.to_string(),
                                n.replicas.to_string(),
                                output::age(n.joined_ms, now),
                            ];
                            if wide {
                                let dash = || "-".to_string();
                                row.push(n.subnet.clone().unwrap_or_else(dash));
                                row.push(n.backend.clone().unwrap_or_else(dash));
                                row.push(n.vtep_mac.clone().unwrap_or_else(dash));
                                row.push(n.public_ip.clone().unwrap_or_else(dash));
                                row.push(n.wg_port.map(|p| p.to_string()).unwrap_or_else(dash));
                                // The answering node's WireGuard session with this node.
                                match &n.wireguard {
                                    Some(wg) => {
                                        row.push(
                                            wg.last_handshake_ms
                                                .map(|t| output::age(t, now))
                                                .unwrap_or_else(|| "never".into()),
                                        );
                                        row.push(output::bytes(wg.rx_bytes));
                                        row.push(output::bytes(wg.tx_bytes));
                                    }
                                    None => row.extend([dash(), dash(), dash()]),
                                }
                            }
                            row
                        })
                        .collect();
                    let mut header = vec![
                        "ID",
                        "NAME",
                        "ROLE",
                        "IP",
                        "API",
                        "HEALTH",
                        "SCHEDULING",
                        "REPLICAS",
                        "AGE",
                    ];
                    if wide {
                        header.extend([
                            "SUBNET",
                            "BACKEND",
                            "VTEP MAC",
                            "PUBLIC IP",
                            "WG PORT",
                            "HANDSHAKE",
                            "RX",
                            "TX",
                        ]);
                    }
                    print!("{}", output::table(&header, &rows));
                }
            }
        }
        Cmd::Ps { object, output } => {
            let object = object.map(|o| parse_key(&o)).transpose()?;
            let client = connect(cli.context)?;
            let replicas = client.replicas(object.as_ref()).await?;
            match output {
                Format::Json => print!("{}", output::json(&replicas)?),
                Format::Yaml => print!("{}", output::yaml(&replicas)?),
                Format::Table | Format::Wide => print!("{}", replicas_table(&replicas)),
            }
        }
        Cmd::Describe { key, output } => {
            let key = parse_key(&key)?;
            let client = connect(cli.context)?;
            let view = client.describe(&key).await?;
            match output {
                Format::Json => print!("{}", output::json(&view)?),
                Format::Yaml => print!("{}", output::yaml(&view)?),
                Format::Table | Format::Wide => {
                    let o = &view.object;
                    println!("Object:      {}", o.object.key());
                    println!(
                        "Generation:  {} (template {})",
                        o.generation, o.template_generation
                    );
                    println!("Owner:       {}", o.owner.as_deref().unwrap_or("-"));
                    if let Some(error) = &view.placement_error {
                        println!("Scheduling:  {error}");
                    }
                    println!("\nReplicas:\n{}", replicas_table(&view.replicas));
                    println!("Events:\n{}", events_table(&view.events));
                }
            }
        }
        Cmd::Events {
            subject,
            follow,
            output,
        } => {
            let client = connect(cli.context)?;
            let mut since = 0;
            loop {
                let wait = if follow {
                    std::time::Duration::from_secs(30)
                } else {
                    std::time::Duration::ZERO
                };
                let events = client.events(since, subject.as_deref(), wait).await?;
                if let Some(last) = events.last() {
                    since = last.revision;
                }
                match output {
                    Format::Json => {
                        for e in &events {
                            println!("{}", serde_json::to_string(e).map_err(anyhow::Error::from)?);
                        }
                    }
                    Format::Yaml => print!("{}", output::yaml(&events)?),
                    Format::Table | Format::Wide => print!("{}", events_lines(&events)),
                }
                if !follow {
                    break;
                }
            }
        }
        Cmd::Logs {
            replica,
            tail,
            follow,
        } => {
            let client = connect(cli.context)?;
            if follow {
                use futures::StreamExt as _;
                use std::io::Write as _;
                let mut chunks = std::pin::pin!(client.logs_follow(&replica, tail).await?);
                let mut stdout = std::io::stdout();
                while let Some(chunk) = chunks.next().await {
                    stdout.write_all(&chunk?).map_err(anyhow::Error::from)?;
                    stdout.flush().map_err(anyhow::Error::from)?;
                }
            } else {
                print!("{}", client.logs(&replica, tail).await?.logs);
            }
        }
        Cmd::Exec {
            replica,
            command,
            interactive,
            tty,
        } => {
            let client = connect(cli.context)?;
            if interactive || tty {
                let code = smrctl::exec::interactive(&client, &replica, &command, interactive, tty)
                    .await?;
                // Exit at once: a read of stdin may still block a thread of the runtime.
                std::process::exit(if code == 0 {
                    0
                } else {
                    code.clamp(1, 255) as i32
                });
            }
            let out = client.exec(&replica, &command).await?;
            print!("{}", out.output);
            if out.exit_code != 0 {
                std::process::exit(out.exit_code.clamp(1, 255) as i32);
            }
        }
        Cmd::Dns { output } => {
            let client = connect(cli.context)?;
            let records = client.dns().await?;
            match output {
                Format::Json => print!("{}", output::json(&records)?),
                Format::Yaml => print!("{}", output::yaml(&records)?),
                Format::Table | Format::Wide => {
                    let rows: Vec<Vec<String>> = records
                        .iter()
                        .map(|r| vec![r.name.clone(), "A".into(), r.addresses.join(",")])
                        .collect();
                    print!("{}", output::table(&["NAME", "TYPE", "ADDRESSES"], &rows));
                }
            }
        }
        Cmd::Gitops { action, output } => {
            let client = connect(cli.context)?;
            gitops(&client, action.unwrap_or(GitopsCmd::List { output })).await?;
        }
        Cmd::RemoveNode { id } => {
            let client = connect(cli.context)?;
            client.remove_node(id).await?;
            println!("node {id} removed");
        }
        Cmd::Cordon { node } => {
            let client = connect(cli.context)?;
            let n = smrctl::drain::set(&client, &node, Availability::Cordoned).await?;
            println!("{}: cordoned (no new replicas)", n.name);
        }
        Cmd::Uncordon { node } => {
            let client = connect(cli.context)?;
            let n = smrctl::drain::set(&client, &node, Availability::Active).await?;
            println!("{}: active (takes new replicas)", n.name);
        }
        Cmd::Drain { node, timeout } => {
            let client = connect(cli.context)?;
            smrctl::drain::drain(&client, &node, timeout).await?;
        }
        Cmd::Context => {
            let path = smrctl::resolve_context(cli.context);
            let ctx = Context::load(&path)?;
            println!("context {} ({}): {}", ctx.name, path.display(), ctx.api_url);
        }
        Cmd::Openapi => {
            let client = connect(cli.context)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&client.get_json("openapi.json").await?)
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `GROUP/NAME` or `gitops/GROUP/NAME`.
fn gitops_name(text: &str) -> Result<(String, String), Failure> {
    let rest = text.strip_prefix("gitops/").unwrap_or(text);
    match rest.split_once('/') {
        Some((g, n)) if !g.is_empty() && !n.is_empty() && !n.contains('/') => {
            Ok((g.to_string(), n.to_string()))
        }
        _ => Err(Failure::Input(format!(
            "gitops object {text:?} is not GROUP/NAME"
        ))),
    }
}

fn short_commit(commit: &Option<String>) -> String {
    commit
        .as_deref()
        .map(|c| c.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

async fn gitops(client: &Client, action: GitopsCmd) -> Result<(), Failure> {
    let now = now_ms();
    match action {
        GitopsCmd::List { output } => {
            let views = client.gitops_list().await?;
            match output {
                Format::Json => print!("{}", output::json(&views)?),
                Format::Yaml => print!("{}", output::yaml(&views)?),
                Format::Table | Format::Wide => {
                    let rows: Vec<Vec<String>> = views
                        .iter()
                        .map(|v| {
                            vec![
                                format!("{}/{}", v.group, v.name),
                                v.repo.clone(),
                                v.revision.clone().unwrap_or_else(|| "HEAD".into()),
                                short_commit(&v.status.synced_commit),
                                v.status.state.to_string(),
                                v.status
                                    .last_sync_ms
                                    .map(|t| output::age(t, now))
                                    .unwrap_or_else(|| "-".into()),
                                v.status.message.clone(),
                            ]
                        })
                        .collect();
                    let header = [
                        "NAME", "REPO", "REVISION", "COMMIT", "STATE", "SYNCED", "MESSAGE",
                    ];
                    print!("{}", output::table(&header, &rows));
                }
            }
        }
        GitopsCmd::Describe { name, output } => {
            let (group, name) = gitops_name(&name)?;
            let v = client.gitops_get(&group, &name).await?;
            match output {
                Format::Json => print!("{}", output::json(&v)?),
                Format::Yaml => print!("{}", output::yaml(&v)?),
                Format::Table | Format::Wide => print!("{}", gitops_details(&v, now)),
            }
        }
        GitopsCmd::Sync {
            name,
            no_wait,
            timeout,
        } => {
            let (group, name) = gitops_name(&name)?;
            let asked = client.gitops_sync(&group, &name).await?;
            if no_wait {
                println!(
                    "gitops/{group}/{name}: sync requested (request {})",
                    asked.request
                );
                return Ok(());
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            let view = loop {
                let v = client.gitops_get(&group, &name).await?;
                if v.status.sync_handled >= asked.request {
                    break v;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Failure::Client(ClientError::Api {
                        status: 503,
                        code: "unavailable".into(),
                        message: format!(
                            "gitops/{group}/{name}: the sync did not finish within {timeout}s"
                        ),
                        details: None,
                    }));
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            };
            let s = &view.status;
            println!(
                "gitops/{group}/{name}: {} at commit {}{}",
                s.state,
                short_commit(&s.synced_commit),
                if s.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.message)
                }
            );
            match s.state {
                GitopsState::Error => return Err(Failure::Other(anyhow::anyhow!("sync failed"))),
                GitopsState::Conflict => {
                    return Err(Failure::Client(ClientError::Api {
                        status: 409,
                        code: "conflict".into(),
                        message: "some definitions are held by someone else".into(),
                        details: None,
                    }));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn gitops_details(v: &api_types::sync_views::GitopsView, now: u64) -> String {
    use std::fmt::Write as _;
    let s = &v.status;
    let mut out = String::new();
    let _ = writeln!(out, "Gitops:      gitops/{}/{}", v.group, v.name);
    let _ = writeln!(out, "Repository:  {}", v.repo);
    let _ = writeln!(
        out,
        "Revision:    {}",
        v.revision.as_deref().unwrap_or("HEAD")
    );
    let _ = writeln!(
        out,
        "Directory:   {}",
        v.directory.as_deref().unwrap_or("/")
    );
    let _ = writeln!(
        out,
        "Sync:        {} every {}s{}",
        if v.automatic_sync {
            "automatic"
        } else {
            "manual"
        },
        v.interval_seconds,
        if v.webhook { ", webhook enabled" } else { "" }
    );
    let _ = writeln!(out, "State:       {}", s.state);
    let _ = writeln!(out, "Synced:      {}", short_commit(&s.synced_commit));
    let _ = writeln!(out, "Head:        {}", short_commit(&s.head_commit));
    let _ = writeln!(
        out,
        "Last sync:   {}",
        s.last_sync_ms
            .map(|t| format!("{} ago", output::age(t, now)))
            .unwrap_or_else(|| "-".into())
    );
    if !s.message.is_empty() {
        let _ = writeln!(out, "Message:     {}", s.message);
    }
    let mut rows: Vec<Vec<String>> = v
        .objects
        .iter()
        .map(|o| vec![o.key.to_string(), o.generation.to_string(), o.state.clone()])
        .collect();
    for key in s
        .drifted
        .iter()
        .filter(|k| !v.objects.iter().any(|o| &o.key == *k))
    {
        rows.push(vec![
            key.to_string(),
            "-".into(),
            "missing (drifted)".into(),
        ]);
    }
    for (key, why) in &s.conflicts {
        rows.push(vec![
            key.to_string(),
            "-".into(),
            format!("not deployed: {why}"),
        ]);
    }
    let _ = write!(
        out,
        "\nObjects:\n{}",
        output::table(&["OBJECT", "GENERATION", "STATE"], &rows)
    );
    out
}

fn replicas_table(replicas: &[api_types::types::ReplicaView]) -> String {
    let now = now_ms();
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.node_name.clone(),
                if r.ready {
                    format!("{} (ready)", r.state)
                } else {
                    r.state.clone()
                },
                r.image.clone(),
                r.ip.clone().unwrap_or_else(|| "-".into()),
                r.restarts.to_string(),
                r.started_ms
                    .map(|s| output::age(s, now))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(
        &["REPLICA", "NODE", "STATE", "IMAGE", "IP", "RESTARTS", "AGE"],
        &rows,
    )
}

fn events_table(events: &[smr_core::state::Event]) -> String {
    let now = now_ms();
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                output::age(e.at_ms, now),
                e.reason.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    output::table(&["AGE", "REASON", "MESSAGE"], &rows)
}

fn events_lines(events: &[smr_core::state::Event]) -> String {
    events
        .iter()
        .map(|e| format!("{} {} {} {}\n", e.at_ms, e.subject, e.reason, e.message))
        .collect()
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Created => "created",
        Outcome::Configured => "configured",
        Outcome::Unchanged => "unchanged",
        Outcome::Deleted => "deleted",
        Outcome::NotFound => "not found",
    }
}

fn objects_table(objects: &[StoredObject]) -> String {
    let now = now_ms();
    let rows: Vec<Vec<String>> = objects
        .iter()
        .map(|o| {
            vec![
                o.object.key().to_string(),
                o.generation.to_string(),
                o.owner.clone().unwrap_or_else(|| "-".into()),
                output::age(o.updated_ms, now),
            ]
        })
        .collect();
    output::table(&["OBJECT", "GENERATION", "OWNER", "UPDATED"], &rows)
}

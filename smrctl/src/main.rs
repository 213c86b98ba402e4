//! smrctl: the cluster client. Applies and inspects definitions and nodes through the REST API.
//!
//! Exit codes: 0 success, 1 other failure, 2 usage, 3 invalid input (definitions, bad request),
//! 4 not found, 5 conflict, 6 cluster unavailable or unreachable, 7 authentication or context,
//! 8 `apply` waited and the rollout was not ready in time.

use std::path::PathBuf;
use std::process::ExitCode;

use api_types::client::{Client, ClientError, Context};
use api_types::now_ms;
use clap::{CommandFactory, Parser, Subcommand};
use smr_core::definitions::{self, ObjectKey};
use smr_core::scheduler::Availability;
use smr_core::state::{GitopsState, Outcome, StoredObject};
use smrctl::output::{self, Format};
use smrctl::source::Source;

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
    /// Create or update the definitions in files, directories, packs or https:// URLs, all or
    /// none.
    Apply {
        /// Files, directories, packs (a folder with Pack.yaml) or https:// URLs.
        #[arg(value_name = "PATH|URL")]
        paths: Vec<String>,
        /// The same as a PATH|URL argument (kept for `-f FILE` habits).
        #[arg(short = 'f', long = "file", value_name = "PATH|URL")]
        files: Vec<String>,
        /// A pack variable, KEY=VALUE (`a.b=v` for a nested key); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A CA certificate (PEM) trusted for https:// URLs besides the system's roots.
        #[arg(long, value_name = "FILE")]
        url_ca: Option<PathBuf>,
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
    /// Delete objects: by [PREFIX/]KIND/GROUP/NAME, or those defined in files, directories,
    /// packs or https:// URLs.
    #[command(visible_alias = "remove")]
    Delete {
        /// KIND/GROUP/NAME, or a PATH|URL whose definitions are deleted.
        #[arg(value_name = "KEY|PATH|URL")]
        args: Vec<String>,
        #[arg(short = 'f', long = "file", value_name = "PATH|URL")]
        files: Vec<String>,
        /// Pack variables, as for apply (they may change the names a pack defines).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long, value_name = "FILE")]
        url_ca: Option<PathBuf>,
    },
    /// Show one object ([PREFIX/]KIND/GROUP/NAME); `inspect` is the same.
    #[command(visible_alias = "inspect")]
    Get {
        key: String,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
    },
    /// Rolling restart of a containers definition's replicas without changing it
    /// (`containers/GROUP/NAME`): a new replica is ready before the next old one goes. Waits for
    /// the rollout like apply.
    Restart {
        /// containers/GROUP/NAME.
        key: String,
        /// Return once the restart is recorded.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for readiness (e.g. 90s, 5m); exit code 8 when it runs out.
        #[arg(long, default_value = "5m", value_parser = definitions::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Edit an object's YAML in $VISUAL/$EDITOR and apply it when saved; a refused edit is
    /// opened again with the reason.
    Edit { key: String },
    /// Print a pack's definitions after templating (variables.yaml and --set), validated.
    Template {
        pack: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// List objects, all, of one KIND, or of one PREFIX/KIND (e.g. traefik.io/v1/custom).
    List {
        kind: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Nodes of the cluster: role, leader, address, health, scheduling (active, cordoned,
    /// draining) and replicas held; `-o wide` adds subnet, backend, VTEP
    /// MAC, public address, WireGuard port and the answering node's WireGuard session with each
    /// peer (last handshake, bytes received and sent) and when each node's certificate expires.
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
    /// Contexts (API address and credentials): which is used (default), list, use, import,
    /// export.
    Context {
        #[command(subcommand)]
        action: Option<ContextCmd>,
    },
    /// Print the API's OpenAPI document.
    Openapi,
    /// Print the shell completion script (e.g. `source <(smrctl completion bash)`).
    Completion { shell: smrctl::completion::Shell },
}

#[derive(Subcommand)]
enum ContextCmd {
    /// Imported contexts and the one in use (marked *).
    List,
    /// Make an imported context the default.
    Use { name: String },
    /// Store a context file (from `context export`) under its name, or --name.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Replace a different context of the same name.
        #[arg(long)]
        force: bool,
        /// Also make it the default.
        #[arg(long = "use")]
        make_default: bool,
    },
    /// Write the context in use (API URL, CA, this client's certificate and key) as one file,
    /// to FILE (mode 0600) or stdout. With --user NAME: a fresh key and an admin certificate
    /// the cluster signs for user NAME instead of this client's own.
    Export {
        file: Option<PathBuf>,
        /// The name the context gets in the file (default: the user's name with --user).
        #[arg(long)]
        name: Option<String>,
        /// Mint a new admin certificate for this user (needs an admin certificate).
        #[arg(long)]
        user: Option<String>,
    },
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

/// Reads the definitions of paths and URLs (packs get the `--set` values).
async fn load_sources(
    sources: &[String],
    set: &[String],
    url_ca: Option<&PathBuf>,
) -> Result<Vec<definitions::Object>, Failure> {
    let sources: Vec<Source> = sources
        .iter()
        .map(|s| Source::parse(s))
        .collect::<Result<_, _>>()
        .map_err(Failure::Input)?;
    let ca = url_ca
        .map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| Failure::Input(format!("--url-ca {}: {e}", p.display())))
        })
        .transpose()?;
    let mut loader = definitions::Loader::new(set).map_err(|e| Failure::Input(e.to_string()))?;
    let objects = smrctl::source::load_all(&sources, &mut loader, ca.as_deref())
        .await
        .map_err(Failure::Input)?;
    if objects.is_empty() {
        return Err(Failure::Input(
            "no definitions found in the given files".into(),
        ));
    }
    Ok(objects)
}

fn parse_key(text: &str) -> Result<ObjectKey, Failure> {
    Ok(parse_address(text)?.key)
}

fn parse_address(text: &str) -> Result<definitions::Address, Failure> {
    text.parse()
        .map_err(|e: definitions::KeyError| Failure::Input(e.to_string()))
}

/// The object at `address` (a custom object under its own prefix: `PREFIX/custom/GROUP/NAME`).
async fn get_addressed(
    client: &Client,
    address: &definitions::Address,
) -> Result<StoredObject, Failure> {
    Ok(client.get(&address.key).await?)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Cmd::Completion { shell } => {
            smrctl::completion::generate(shell, &mut Cli::command(), &mut std::io::stdout())
        }
        Cmd::Apply {
            mut paths,
            files,
            set,
            url_ca,
            dry_run,
            output,
            wait,
            no_wait,
            timeout,
        } => {
            paths.extend(files);
            if paths.is_empty() {
                return Err(Failure::Input(
                    "nothing to apply: give PATH or https:// URL (or -f)".into(),
                ));
            }
            let objects = load_sources(&paths, &set, url_ca.as_ref()).await?;
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
        Cmd::Delete {
            args,
            mut files,
            set,
            url_ca,
        } => {
            // An argument is a source when it is a URL or an existing path, else an address.
            let mut addresses = Vec::new();
            for arg in args {
                if matches!(Source::parse(&arg), Ok(Source::Url(_)) | Err(_))
                    || std::path::Path::new(&arg).exists()
                {
                    files.push(arg);
                } else {
                    addresses.push(parse_address(&arg).map_err(|_| {
                        Failure::Input(format!(
                            "{arg:?} is neither an existing file or directory, an https:// URL, nor KIND/GROUP/NAME"
                        ))
                    })?);
                }
            }
            let mut all: Vec<ObjectKey> = addresses.iter().map(|a| a.key.clone()).collect();
            if !files.is_empty() {
                all.extend(
                    load_sources(&files, &set, url_ca.as_ref())
                        .await?
                        .iter()
                        .map(|o| o.key()),
                );
            } else if !set.is_empty() {
                return Err(Failure::Input(
                    "--set fills pack variables, and no pack was given".into(),
                ));
            }
            if all.is_empty() {
                return Err(Failure::Input(
                    "nothing to delete: give KIND/GROUP/NAME, PATH or https:// URL".into(),
                ));
            }
            let client = connect(cli.context)?;
            let response = client.delete(&all).await?;
            for o in &response.outcomes {
                println!("{} {}", o.key, outcome_word(o.outcome));
            }
        }
        Cmd::Get { key, output } => {
            let address = parse_address(&key)?;
            let client = connect(cli.context)?;
            let stored = get_addressed(&client, &address).await?;
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
        Cmd::Restart {
            key,
            no_wait,
            timeout,
        } => {
            let address = parse_address(&key)?;
            let client = connect(cli.context)?;
            let response = client.restart(&address.key).await?;
            println!("{} restart started", address.key);
            if !no_wait {
                let ready = smrctl::rollout::wait(
                    &client,
                    std::slice::from_ref(&address.key),
                    response.revision,
                    timeout,
                )
                .await
                .map_err(|e| match e {
                    smrctl::rollout::WaitError::Client(e) => Failure::Client(e),
                    smrctl::rollout::WaitError::NotReady(why) => Failure::NotReady(why),
                })?;
                for p in ready {
                    println!("{}", p.line());
                }
            }
        }
        Cmd::Edit { key } => {
            let address = parse_address(&key)?;
            let client = connect(cli.context)?;
            edit(&client, &address).await?;
        }
        Cmd::Template { pack, set } => {
            let mut loader =
                definitions::Loader::new(&set).map_err(|e| Failure::Input(e.to_string()))?;
            let rendered = loader
                .render(&pack)
                .map_err(|e| Failure::Input(e.to_string()))?;
            loader.finish().map_err(|e| Failure::Input(e.to_string()))?;
            let mut out = String::new();
            for (file, text) in &rendered.files {
                // Validated as apply would, so what is printed is what apply would send.
                definitions::parse_str(file, text).map_err(|e| Failure::Input(e.to_string()))?;
                out.push_str(&format!("---\n# Source: {file}\n"));
                out.push_str(text.trim_start_matches("---\n"));
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            print!("{out}");
        }
        Cmd::List { kind, output } => {
            // KIND, or PREFIX/KIND (traefik.io/v1/custom): the prefix filters the listing.
            let (prefix, kind) = match kind.as_deref().and_then(|k| k.rsplit_once('/')) {
                Some((prefix, kind)) => {
                    if !definitions::is_prefix(prefix) {
                        return Err(Failure::Input(format!(
                            "{prefix:?} is not a prefix (DOMAIN/VERSION, e.g. traefik.io/v1)"
                        )));
                    }
                    (Some(prefix.to_string()), Some(kind.to_string()))
                }
                None => (None, kind),
            };
            let kind = kind
                .map(|k| {
                    k.parse::<definitions::Kind>()
                        .map_err(|e| Failure::Input(e.to_string()))
                })
                .transpose()?;
            let client = connect(cli.context)?;
            let mut objects = client.list(kind).await?;
            if let Some(prefix) = &prefix {
                objects.retain(|o| o.object.prefix == *prefix);
            }
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
                                row.push(
                                    n.cert_expires_ms
                                        .map(|t| output::expiry(t, now))
                                        .unwrap_or_else(dash),
                                );
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
                            "CERT EXPIRES",
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
            let replica = smrctl::source::replica_name(&replica).map_err(Failure::Input)?;
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
            let replica = smrctl::source::replica_name(&replica).map_err(Failure::Input)?;
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
        Cmd::Context {
            action:
                Some(ContextCmd::Export {
                    file,
                    name,
                    user: Some(user),
                }),
        } => export_user(cli.context, &user, name, file).await?,
        Cmd::Context { action } => context(cli.context, action)?,
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

fn context(flag: Option<PathBuf>, action: Option<ContextCmd>) -> Result<(), Failure> {
    use smrctl::contexts::{self, Store};
    let store = Store::user();
    let current = smrctl::resolve_context(flag);
    match action {
        None => {
            let ctx = Context::load(&current)?;
            println!(
                "context {} ({}): {}",
                ctx.name,
                current.display(),
                ctx.api_url
            );
        }
        Some(ContextCmd::List) => {
            let entries = store.list(Some(&current)).map_err(Failure::Input)?;
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        if e.current { "*".into() } else { String::new() },
                        e.name.clone(),
                        e.api_url.clone(),
                        e.path.display().to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["CURRENT", "NAME", "API", "FILE"], &rows)
            );
        }
        Some(ContextCmd::Use { name }) => {
            let path = store
                .use_context(&name)
                .map_err(|e| Failure::Client(ClientError::Context(e)))?;
            println!("using context {name} ({})", path.display());
            if std::env::var_os("SMR_CONTEXT").is_some() {
                eprintln!("smrctl: note: $SMR_CONTEXT is set and takes precedence");
            }
        }
        Some(ContextCmd::Import {
            file,
            name,
            force,
            make_default,
        }) => {
            let name = store
                .import(&file, name.as_deref(), force)
                .map_err(|e| Failure::Client(ClientError::Context(e)))?;
            if make_default {
                store
                    .use_context(&name)
                    .map_err(|e| Failure::Client(ClientError::Context(e)))?;
                println!("context {name} imported and in use");
            } else {
                println!(
                    "context {name} imported; `smrctl context use {name}` makes it the default"
                );
            }
        }
        Some(ContextCmd::Export { file, name, .. }) => {
            let text = contexts::export(&current, name.as_deref())
                .map_err(|e| Failure::Client(ClientError::Context(e)))?;
            match file {
                Some(path) => {
                    api_types::client::write_private(&path, text.as_bytes()).map_err(|e| {
                        Failure::Other(anyhow::anyhow!("cannot write {}: {e}", path.display()))
                    })?;
                    eprintln!(
                        "smrctl: wrote {} (it holds this client's private key: share it like a password)",
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
        }
    }
    Ok(())
}

/// `smrctl context export --user USER`: a context with a fresh key and an admin certificate the
/// cluster signs for USER, to FILE (mode 0600) or stdout.
async fn export_user(
    flag: Option<PathBuf>,
    user: &str,
    name: Option<String>,
    file: Option<PathBuf>,
) -> Result<(), Failure> {
    let name = name.unwrap_or_else(|| user.to_string());
    if !smrctl::contexts::valid_name(&name) {
        return Err(Failure::Input(format!(
            "{name:?} is not a context name (give one with --name)"
        )));
    }
    let base = Context::load(&smrctl::resolve_context(flag))?;
    let client = Client::from_context(&base)?;
    let ctx = client.user_context(&base, user, &name).await?;
    let text = serde_json::to_string_pretty(&ctx).map_err(|e| Failure::Other(e.into()))? + "\n";
    match file {
        Some(path) => {
            api_types::client::write_private(&path, text.as_bytes()).map_err(|e| {
                Failure::Other(anyhow::anyhow!("cannot write {}: {e}", path.display()))
            })?;
            eprintln!(
                "smrctl: wrote {} for user {user} (a new admin certificate and its private key: \
                 share it like a password)",
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `smrctl edit`: fetch, edit, validate, apply; again with the reason until it is accepted or
/// the user gives up.
async fn edit(client: &Client, address: &definitions::Address) -> Result<(), Failure> {
    use smrctl::edit::{self as ed, Outcome};
    let stored = get_addressed(client, address).await?;
    let key = stored.object.key();
    let original = definitions::to_yaml(std::slice::from_ref(&stored.object))
        .map_err(|e| Failure::Other(e.into()))?;
    let dir = tempfile_dir()?;
    let file = dir.join(format!("{}-{}-{}.yaml", key.kind, key.group, key.name));
    let source = file.display().to_string();
    let mut error: Option<String> = None;
    // What the editor shows: the object, then after a refusal what the user saved.
    let mut body = original;
    let result = loop {
        let shown = ed::with_error(&body, error.as_deref());
        std::fs::write(&file, &shown).map_err(|e| Failure::Other(e.into()))?;
        if let Err(e) = ed::run_editor(&file) {
            break Err(Failure::Input(e));
        }
        let saved = std::fs::read_to_string(&file).map_err(|e| Failure::Other(e.into()))?;
        match ed::judge(&shown, &saved, &key, &source) {
            Outcome::Unchanged => {
                break match error {
                    None => {
                        println!("{key} unchanged (nothing saved)");
                        Ok(())
                    }
                    Some(e) => Err(Failure::Input(format!(
                        "edit abandoned; the last edit was refused: {e}"
                    ))),
                };
            }
            Outcome::Invalid(why) => {
                body = ed::strip_error(&saved).to_string();
                error = Some(why);
            }
            Outcome::Edited(obj) => {
                match client.apply(std::slice::from_ref(&*obj), false, None).await {
                    Ok(response) => {
                        for o in &response.outcomes {
                            println!("{} {}", o.key, outcome_word(o.outcome));
                        }
                        break Ok(());
                    }
                    Err(e @ ClientError::Api { status, .. })
                        if (400..500).contains(&status) && status != 401 && status != 403 =>
                    {
                        body = ed::strip_error(&saved).to_string();
                        let mut why = e.to_string();
                        if let ClientError::Api {
                            details: Some(d), ..
                        } = &e
                            && !d.is_null()
                        {
                            why.push('\n');
                            why.push_str(&serde_json::to_string_pretty(d).unwrap_or_default());
                        }
                        error = Some(why);
                    }
                    Err(e) => break Err(Failure::Client(e)),
                }
            }
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A private temporary folder for the edited file.
fn tempfile_dir() -> Result<PathBuf, Failure> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("smrctl-edit-{}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Failure::Other(e.into())),
        }
    }
    Err(Failure::Other(anyhow::anyhow!(
        "cannot create a temporary folder"
    )))
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
        Outcome::Restarted => "restarted",
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

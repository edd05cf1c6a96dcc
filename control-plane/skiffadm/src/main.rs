//! skiffadm: set up and inspect nodes of a Skiff cluster: `init`, `join` and `reset` on
//! machines systemd runs, `preflight`, bootstrap `token` management, and local mode (`up`,
//! `status`, `down`, `delete`, `service`, `image load`) for a single node without systemd.

mod local;
mod node;
mod preflight;
mod token;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "skiffadm", version, about = "Skiff's kubeadm")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check that this machine can run a Skiff node.
    Preflight {
        /// Checks whose errors are only reported (names as printed, or `all`).
        #[arg(long, value_delimiter = ',')]
        ignore_preflight_errors: Vec<String>,
    },
    /// Make this machine a cluster's control plane (and a node), with systemd units.
    Init(node::init::InitArgs),
    /// Make this machine a node of the cluster at HOST:PORT.
    Join(node::join::JoinArgs),
    /// Undo init or join: units, pods, links, iptables chains, cgroups, mounts, /etc/skiff,
    /// /var/lib/skiff, /run/skiff.
    Reset,
    /// Start (or resume) a single-node cluster on this machine, without systemd.
    Up(local::up::UpArgs),
    /// Show the local cluster's processes, API, node and cgroup limits.
    Status(LocalRoot),
    /// Stop the local cluster's API server and agent, keeping its state (pods keep running).
    Down(LocalRoot),
    /// Remove everything the local cluster made: processes, containers, mounts, links,
    /// iptables chains, cgroups, files and the kubeconfig context.
    Delete(LocalRoot),
    /// Print how to reach a NodePort service of the local cluster.
    Service {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Print the service's URL(s).
        #[arg(long)]
        url: bool,
        #[command(flatten)]
        root: LocalRoot,
    },
    /// Images of the local cluster's node.
    Image {
        #[command(subcommand)]
        action: ImageCmd,
    },
    /// The local cluster's supervisor daemon (started by `up`).
    #[command(hide = true)]
    LocalSupervise(LocalRoot),
    /// The API relay of a multi-node lab (started by the supervisor): accepts on the host's
    /// `--listen` and connects to `--to` inside the network namespace `--netns`.
    #[command(hide = true)]
    LocalRelay {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        to: std::net::SocketAddr,
        /// Only so that `skiffadm delete` finds this process by its root dir.
        #[command(flatten)]
        root: LocalRoot,
    },
    /// Manage bootstrap tokens.
    Token {
        #[command(subcommand)]
        action: TokenCmd,
        /// Admin credentials of the cluster.
        #[arg(long, global = true, default_value = "/etc/skiff/admin.kubeconfig")]
        kubeconfig: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct LocalRoot {
    /// The local cluster's state directory.
    #[arg(long, default_value = local::DEFAULT_ROOT)]
    root_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Load a docker-archive (`docker save`, `skopeo copy … docker-archive:FILE:NAME`) or
    /// OCI-layout tarball into the node, under the name it carries.
    Load {
        file: PathBuf,
        #[command(flatten)]
        root: LocalRoot,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a token (random unless given).
    Create {
        token: Option<String>,
        /// Lifetime, e.g. 24h; 0 never expires.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Print the `skiffadm join` command a worker runs with this token.
        #[arg(long)]
        print_join_command: bool,
    },
    /// List tokens.
    List,
    /// Delete a token (by id or whole token).
    Delete { token: String },
}

async fn client(kubeconfig: &PathBuf) -> anyhow::Result<(kube::Client, kube::config::Kubeconfig)> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc.clone(), &Default::default()).await?;
    Ok((kube::Client::try_from(config)?, kc))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The supervisor daemon stays single-threaded: it forks children, and it must not carry
    // an async runtime's threads into them.
    if let Cmd::LocalSupervise(root) = &cli.command {
        return Ok(local::supervisor::run_daemon(&root.root_dir)?);
    }
    // Plain threads too: it switches its network namespace, which applies per thread.
    if let Cmd::LocalRelay {
        listen, netns, to, ..
    } = &cli.command
    {
        return Ok(skiff_lab::relay::serve(*listen, netns, *to)?);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Init(args) => node::init::run(args).await?,
        Cmd::Join(args) => node::join::run(args).await?,
        Cmd::Reset => node::reset::run()?,
        Cmd::Up(args) => local::up::run(args).await?,
        Cmd::Status(r) => local::status::run(&r.root_dir).await?,
        Cmd::Down(r) => local::stop::down(&r.root_dir)?,
        Cmd::Delete(r) => local::stop::delete(&r.root_dir)?,
        Cmd::Service {
            name,
            namespace,
            url,
            root,
        } => local::service::run(&root.root_dir, &name, &namespace, url).await?,
        Cmd::Image {
            action: ImageCmd::Load { file, root },
        } => local::image::load(&root.root_dir, &file).await?,
        Cmd::LocalSupervise(_) | Cmd::LocalRelay { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Cmd::Preflight {
            ignore_preflight_errors,
        } => {
            let findings = preflight::run(&preflight::Host::real(), None);
            let blocking = preflight::blocking(&findings, &ignore_preflight_errors);
            for f in &findings {
                let level = if blocking.contains(&f) {
                    "ERROR"
                } else {
                    "WARNING"
                };
                println!("[preflight] {level} {}: {}", f.check, f.message);
            }
            if !blocking.is_empty() {
                anyhow::bail!("{} preflight check(s) failed; fix them or pass --ignore-preflight-errors=<check>,… (or all)", blocking.len());
            }
            println!("[preflight] all checks passed");
        }
        Cmd::Token { action, kubeconfig } => {
            let (client, kc) = client(&kubeconfig).await?;
            match action {
                TokenCmd::Create {
                    token,
                    ttl,
                    description,
                    print_join_command,
                } => {
                    let token = token.unwrap_or_else(token::generate);
                    token::create(&client, &token, token::parse_ttl(&ttl)?, &description).await?;
                    if print_join_command {
                        let (server, ca) = token::kubeconfig_ca(&kc)?;
                        let host = server.trim_start_matches("https://").trim_end_matches('/');
                        println!("skiffadm join {host} --token {token} --discovery-token-ca-cert-hash {}", token::ca_cert_hash(&ca)?);
                    } else {
                        println!("{token}");
                    }
                }
                TokenCmd::List => {
                    println!("{:<24} {:<22} DESCRIPTION", "TOKEN", "EXPIRES");
                    for t in token::list(&client).await? {
                        println!(
                            "{:<24} {:<22} {}",
                            t.token,
                            t.expires.unwrap_or_else(|| "<forever>".into()),
                            t.description
                        );
                    }
                }
                TokenCmd::Delete { token } => {
                    token::delete(&client, &token).await?;
                    println!(
                        "bootstrap token {:?} deleted",
                        token.split('.').next().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

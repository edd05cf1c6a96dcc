//! skiffadm: prepare and inspect nodes of a Skiff cluster. Today: `preflight` and bootstrap
//! `token` management; `init`, `join` and `reset` come with the systemd units.

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
    /// Manage bootstrap tokens.
    Token {
        #[command(subcommand)]
        action: TokenCmd,
        /// Admin credentials of the cluster.
        #[arg(long, global = true, default_value = "/etc/skiff/admin.kubeconfig")]
        kubeconfig: PathBuf,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
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

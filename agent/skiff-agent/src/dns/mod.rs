//! Cluster DNS served by the agent on its node: the names of Services, endpoints and pods
//! (`records`), answered from memory (`query`) over UDP and TCP with forwarding of other names
//! (`server`), kept current by watches (`controller`), and announced as endpoints of the
//! `kube-system/kube-dns` Service so the proxy sends 10.96.0.10 here (`publish`).

pub mod controller;
pub mod publish;
pub mod query;
pub mod records;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How the agent runs its DNS server (from its command line).
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    /// `--dns-upstream` values; empty means the nameservers of `resolv_conf`.
    pub upstreams: Vec<String>,
    pub resolv_conf: PathBuf,
    pub domain: String,
    /// The kube-dns ClusterIP, never used as an upstream.
    pub cluster_dns: Option<IpAddr>,
    pub node: String,
    /// Announced when `bind` is a wildcard address.
    pub node_ip: IpAddr,
    /// Announced instead of the bound or node address, even a loopback one (asked for).
    pub advertise: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Records(#[from] records::RecordsError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
}

/// Binds the server (so a taken port fails the agent's start with a clear error), then runs
/// the server, the watches and the kube-dns announcement in the background.
pub async fn start(client: kube::Client, s: Settings) -> Result<SocketAddr, DnsError> {
    let upstreams = server::upstreams(&s.upstreams, &s.resolv_conf, s.bind, s.cluster_dns)?;
    let (tx, rx) = watch::channel(Arc::new(records::Table::unsynced(&s.domain)?));
    let srv = server::Server::bind(
        server::Config {
            bind: s.bind,
            upstreams: upstreams.clone(),
            forward_timeout: Duration::from_secs(2),
        },
        rx.clone(),
    )
    .await?;
    let addr = srv.local_addr();
    tracing::info!(%addr, ?upstreams, domain = %s.domain, "cluster DNS listening");
    tokio::spawn(srv.run());
    let watch_client = client.clone();
    let domain = s.domain.clone();
    tokio::spawn(async move {
        if let Err(e) = controller::run(watch_client, domain, tx).await {
            tracing::error!(error = %e, "cluster DNS: watches stopped");
        }
    });
    let address = match s.advertise {
        Some(ip) => ip,
        None if addr.ip().is_unspecified() => s.node_ip,
        None => addr.ip(),
    };
    if address.is_loopback() && s.advertise.is_none() {
        tracing::warn!(%address, "cluster DNS: not announced as a kube-dns endpoint: pods cannot reach a loopback address");
        return Ok(addr);
    }
    let mut synced = rx;
    tokio::spawn(async move {
        // Announce only once the table is filled, so no pod is sent to a server that would
        // still answer SERVFAIL.
        if synced.wait_for(|t| t.is_synced()).await.is_ok() {
            publish::run(
                client,
                publish::Announce {
                    node: s.node,
                    address,
                    port: addr.port(),
                },
            )
            .await;
        }
    });
    Ok(addr)
}

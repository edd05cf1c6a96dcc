//! skiff-controllers: the scheduler and the controllers that keep the cluster's declared state
//! true. Each controller is a kube-rs client of the API server (as kube-controller-manager
//! is), so it can run inside skiff-server or on its own.

pub mod csrapproving;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod leader;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podutil;
pub mod replicaset;
pub mod scheduler;
pub mod serviceaccount;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

pub use events::{EventRecorder, EventType};

/// Controllers that can be turned off one by one (`--disable` in skiff-server).
pub const CONTROLLERS: &[&str] = &[
    "scheduler",
    "replicaset",
    "deployment",
    "daemonset",
    "endpoints",
    "endpointslice",
    "serviceaccount",
    "nodelifecycle",
    "nodeipam",
    "csrapproving",
];

#[derive(Clone, Debug)]
pub struct Settings {
    /// A node whose Lease is older than this becomes Ready=Unknown.
    pub node_monitor_grace: Duration,
    /// How long pods tolerate an unreachable or not-ready node unless they say otherwise.
    pub default_eviction_toleration: Duration,
    /// Pod network of the cluster and the size of each node's share.
    pub cluster_cidr: String,
    pub node_cidr_mask: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_monitor_grace: Duration::from_secs(40),
            default_eviction_toleration: Duration::from_secs(300),
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask: 24,
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub events: EventRecorder,
    pub settings: Settings,
}

impl Context {
    pub fn new(client: kube::Client, component: &str, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            events: EventRecorder::new(client.clone(), component),
            client,
            settings,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

fn spawn_one(set: &mut JoinSet<()>, name: &str, ctx: Arc<Context>) {
    // One arm per controller; each module exposes `pub async fn run(ctx: Arc<Context>)`.
    match name {
        "replicaset" => {
            set.spawn(replicaset::run(ctx));
        }
        "deployment" => {
            set.spawn(deployment::run(ctx));
        }
        "nodeipam" => {
            set.spawn(nodeipam::run(ctx));
        }
        "nodelifecycle" => {
            set.spawn(nodelifecycle::run(ctx));
        }
        "endpoints" => {
            set.spawn(endpoints::run(ctx));
        }
        "endpointslice" => {
            set.spawn(endpointslice::run(ctx));
        }
        "daemonset" => {
            set.spawn(daemonset::run(ctx));
        }
        "csrapproving" => {
            set.spawn(csrapproving::run(ctx));
        }
        "serviceaccount" => {
            set.spawn(serviceaccount::run(ctx));
        }
        "scheduler" => {
            set.spawn(scheduler::run(ctx));
        }
        other => {
            let _ = ctx;
            tracing::warn!(controller = other, "not built yet; skipped")
        }
    }
}

/// Runs every enabled controller while this process holds the leader lease; stops them when
/// leadership is lost and starts them again when it comes back.
pub async fn run_with_leader_election(ctx: Arc<Context>, identity: String, disabled: Vec<String>) {
    let mut leading = leader::spawn(ctx.client.clone(), leader::LeaderConfig::new(identity));
    let mut running: Option<JoinSet<()>> = None;
    loop {
        let is_leader = *leading.borrow_and_update();
        match (is_leader, running.is_some()) {
            (true, false) => {
                let mut set = JoinSet::new();
                for name in CONTROLLERS
                    .iter()
                    .filter(|c| !disabled.iter().any(|d| d == *c))
                {
                    spawn_one(&mut set, name, ctx.clone());
                }
                tracing::info!(controllers = set.len(), "leading: controllers started");
                running = Some(set);
            }
            (false, true) => {
                if let Some(mut set) = running.take() {
                    set.abort_all();
                    while set.join_next().await.is_some() {}
                }
                tracing::info!("not leading: controllers stopped");
            }
            _ => {}
        }
        if leading.changed().await.is_err() {
            return;
        }
    }
}

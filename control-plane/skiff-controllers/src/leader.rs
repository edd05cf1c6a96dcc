//! Leader election on a `coordination.k8s.io/v1` Lease, so that several skiff-servers can
//! share one store while only one runs the controllers.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaderConfig {
    pub fn new(identity: String) -> Self {
        Self {
            namespace: "kube-system".into(),
            name: "skiff-controller-manager".into(),
            identity,
            // A dead leader is replaced within lease + one retry: about 12 s.
            lease_duration: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// One attempt to take or keep the lease; true if we hold it afterwards.
async fn try_acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let secs = cfg.lease_duration.as_secs() as i32;
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
            let expired = match &spec.renew_time {
                Some(t) => {
                    let duration = spec.lease_duration_seconds.unwrap_or(secs) as i64;
                    let age_ms = jiff::Timestamp::now().as_millisecond() - t.0.as_millisecond();
                    age_ms > duration * 1000
                }
                None => true,
            };
            if !ours && !expired {
                return Ok(false);
            }
            if !ours {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.renew_time = Some(now());
            spec.lease_duration_seconds = Some(secs);
            // The resourceVersion in `lease` makes this a compare-and-swap: two candidates
            // cannot both win.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Runs the election forever; the receiver says whether we lead right now.
pub fn spawn(client: kube::Client, cfg: LeaderConfig) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            let leading = match try_acquire(&api, &cfg).await {
                Ok(true) => {
                    last_renewal = tokio::time::Instant::now();
                    true
                }
                Ok(false) => false,
                // A failed renewal keeps leadership only until the lease could have expired.
                Err(e) => {
                    tracing::warn!(error = %e, "leader election request failed");
                    *tx.borrow() && last_renewal.elapsed() < cfg.lease_duration
                }
            };
            if *tx.borrow() != leading {
                tracing::info!(identity = cfg.identity, leading, "leadership changed");
                let _ = tx.send(leading);
            }
            tokio::time::sleep(cfg.renew_every).await;
        }
    });
    rx
}

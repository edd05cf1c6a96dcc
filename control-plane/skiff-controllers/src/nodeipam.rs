//! Node IPAM: each node gets its own slice of the pod network in `spec.podCIDR`.
//! Allocation is derived from the nodes that exist, so deleting a node frees its range
//! and a restarted controller cannot hand out a range twice.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::events::{reference, EventType};
use crate::{Context, Error};

pub async fn run(ctx: Arc<Context>) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    // One node at a time: allocation reads all nodes, then writes one.
    Controller::new(nodes, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(1))
        .run(
            reconcile,
            |_, err, _| {
                tracing::warn!(error = %err, "node IPAM failed; retrying");
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn parse_cidr(s: &str) -> Result<(u32, u8), Error> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| Error::Invalid(format!("{s}: not a CIDR")))?;
    let addr: Ipv4Addr = a.parse().map_err(|e| Error::Invalid(format!("{s}: {e}")))?;
    let prefix: u8 = p.parse().map_err(|e| Error::Invalid(format!("{s}: {e}")))?;
    if prefix > 32 {
        return Err(Error::Invalid(format!("{s}: prefix over 32")));
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    Ok((u32::from(addr) & mask, prefix))
}

/// The first `/mask` subnet of `cluster` that is not in `used`.
pub fn next_free(cluster: &str, mask: u8, used: &HashSet<String>) -> Result<Option<String>, Error> {
    let (base, prefix) = parse_cidr(cluster)?;
    if mask < prefix || mask > 30 {
        return Err(Error::Invalid(format!(
            "node mask /{mask} does not fit in {cluster}"
        )));
    }
    let count = 1u64 << (mask - prefix);
    let step = 1u64 << (32 - mask);
    for i in 0..count {
        let subnet = format!("{}/{mask}", Ipv4Addr::from((base as u64 + i * step) as u32));
        if !used.contains(&subnet) {
            return Ok(Some(subnet));
        }
    }
    Ok(None)
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some()
        || node.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    let nodes = api.list(&ListParams::default()).await?.items;
    // The watcher's copy can predate this controller's own earlier patch (a status update
    // from the agent triggers a reconcile with the old object): the fresh list decides, or
    // the node would get a second range and its first would be handed out again.
    let Some(fresh) = nodes.iter().find(|n| n.name_any() == node.name_any()) else {
        return Ok(Action::await_change());
    };
    if fresh
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some()
    {
        return Ok(Action::await_change());
    }
    let used: HashSet<String> = nodes
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
        .collect();
    match next_free(
        &ctx.settings.cluster_cidr,
        ctx.settings.node_cidr_mask,
        &used,
    )? {
        Some(cidr) => {
            // With the listed resourceVersion: a concurrent writer makes this a conflict
            // (retried) rather than a silent overwrite.
            let rv = fresh.metadata.resource_version.clone();
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}
            });
            api.patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            ctx.events
                .record(
                    &reference(node.as_ref()),
                    EventType::Normal,
                    "CIDRAssignmentSucceeded",
                    &format!("Node {} was assigned pod CIDR {cidr}", node.name_any()),
                )
                .await;
        }
        None => {
            ctx.events
                .record(
                    &reference(node.as_ref()),
                    EventType::Warning,
                    "CIDRNotAvailable",
                    &format!("Node {} status is now: CIDRNotAvailable", node.name_any()),
                )
                .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_the_first_free_slice() {
        let mut used = HashSet::new();
        assert_eq!(
            next_free("10.244.0.0/16", 24, &used).unwrap().unwrap(),
            "10.244.0.0/24"
        );
        used.insert("10.244.0.0/24".to_string());
        used.insert("10.244.2.0/24".to_string());
        assert_eq!(
            next_free("10.244.0.0/16", 24, &used).unwrap().unwrap(),
            "10.244.1.0/24"
        );
        let full: HashSet<String> = (0..4).map(|i| format!("10.0.0.{}/26", i * 64)).collect();
        assert_eq!(next_free("10.0.0.0/24", 26, &full).unwrap(), None);
        assert!(next_free("10.0.0.0/24", 16, &used).is_err());
        assert!(next_free("bogus", 24, &used).is_err());
    }
}

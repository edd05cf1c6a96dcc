//! The overlay's loop in the agent: a reflector on Nodes; on every change, and on a timer
//! (which repairs a device deleted by hand), one pass brings the device, its entries, the
//! firewall chains and this node's annotations to what the Node list says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::Notify;

use super::desired::{self, Mac, Plan, Skipped, Subnet};
use super::kernel::{self, DeviceChange, OverlayKernel, VxlanSpec};
use super::{firewall, sysctl, OverlayError};
use crate::proxy::kernel::Kernel;

#[derive(Clone, Debug)]
pub struct OverlayConfig {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// The whole pod network (all nodes' podCIDRs lie inside).
    pub cluster_cidr: Subnet,
    /// How often the device and entries are checked without a Node change.
    pub resync: Duration,
    /// `/proc/sys` outside tests.
    pub sysctl_root: PathBuf,
}

/// The device the overlay wants on a node whose underlay link has `underlay_mtu`.
pub fn device_spec(node_ip: Ipv4Addr, underlay_mtu: u32) -> VxlanSpec {
    VxlanSpec {
        name: super::DEVICE.into(),
        vni: super::VNI,
        port: super::PORT,
        local: node_ip,
        mtu: underlay_mtu.saturating_sub(super::OVERHEAD),
        mac: Mac::for_node(node_ip),
    }
}

/// The overlay device's spec from the link holding the node IP (whose MTU bounds ours).
pub fn spec_from_kernel(
    k: &mut dyn OverlayKernel,
    node_ip: Ipv4Addr,
) -> Result<VxlanSpec, OverlayError> {
    let mtu = k
        .mtu_of_address(node_ip)?
        .ok_or(OverlayError::NoUnderlay { ip: node_ip })?;
    Ok(device_spec(node_ip, mtu))
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    pub device: Option<DeviceChange>,
    pub plan: Plan,
    pub firewall_written: bool,
    pub skipped: Vec<Skipped>,
}

/// One reconcile pass against the kernel: device, entries for `peers`, firewall chains.
pub fn pass(
    k: &mut dyn OverlayKernel,
    fw: &mut dyn Kernel,
    spec: &VxlanSpec,
    network: Subnet,
    own: Subnet,
    peers: &[desired::Peer],
) -> Result<PassReport, OverlayError> {
    let (index, change) = kernel::ensure_device(k, spec, own)?;
    let (want, skipped) = desired::desired(peers, own);
    let plan = desired::diff(&want, &k.entries(index)?);
    kernel::apply(k, index, &plan)?;
    let firewall_written = firewall::ensure(fw, network, own)?;
    Ok(PassReport {
        device: Some(change),
        plan,
        firewall_written,
        skipped,
    })
}

/// The annotations this node must carry for the others to reach it.
pub fn annotations(spec: &VxlanSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            desired::ANNOTATION_VTEP_MAC.to_string(),
            spec.mac.to_string(),
        ),
        (
            desired::ANNOTATION_PUBLIC_IP.to_string(),
            spec.local.to_string(),
        ),
    ])
}

fn needs_publish(node: &Node, want: &BTreeMap<String, String>) -> bool {
    let have = node.metadata.annotations.as_ref();
    want.iter()
        .any(|(k, v)| have.and_then(|a| a.get(k)) != Some(v))
}

fn log_pass(r: &PassReport) {
    match r.device {
        Some(DeviceChange::Created) => tracing::info!("overlay: created {}", super::DEVICE),
        Some(DeviceChange::Replaced) => {
            tracing::warn!("overlay: {} had other parameters; replaced", super::DEVICE)
        }
        Some(DeviceChange::Repaired) => {
            tracing::warn!(
                "overlay: {} repaired (mtu, address or state)",
                super::DEVICE
            )
        }
        _ => {}
    }
    let p = &r.plan;
    if !p.is_empty() {
        tracing::info!(
            add_routes = p.add_routes.len(),
            del_routes = p.del_routes.len(),
            add_neighs = p.add_neighs.len(),
            del_neighs = p.del_neighs.len(),
            add_fdb = p.add_fdb.len(),
            del_fdb = p.del_fdb.len(),
            "overlay: entries updated"
        );
    }
    if r.firewall_written {
        tracing::info!("overlay: forwarding and masquerade chains written");
    }
}

/// Runs until the process ends; a failed pass is logged and retried on the next trigger.
pub async fn run<K, F>(
    client: kube::Client,
    cfg: OverlayConfig,
    kernel: K,
    firewall: F,
) -> Result<(), OverlayError>
where
    K: OverlayKernel + Send + 'static,
    F: Kernel + 'static,
{
    let report = sysctl::ensure(&cfg.sysctl_root)?;
    for k in &report.changed {
        tracing::info!("overlay: sysctl {} set to 1", k.replace('/', "."));
    }
    for m in &report.missing {
        tracing::warn!("overlay: {m}");
    }
    let notify = Arc::new(Notify::new());
    let (store, writer) = reflector::store::<Node>();
    let feed_notify = notify.clone();
    tokio::spawn(
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(move |ev| {
                if let Err(e) = &ev {
                    tracing::warn!("overlay watch: {e}");
                }
                feed_notify.notify_one();
                async {}
            }),
    );
    // Acting on a half-listed store would delete the entries of nodes not yet seen.
    let _ = store.wait_until_ready().await;
    let mut kernel = Some(kernel);
    let mut firewall = Some(firewall);
    let mut spec: Option<VxlanSpec> = None;
    let mut warned: BTreeSet<String> = BTreeSet::new();
    let mut waiting_logged = false;
    loop {
        let mut k = kernel.take().expect("kernel comes back after each pass");
        let mut fw = firewall
            .take()
            .expect("firewall comes back after each pass");
        let snapshot = Snapshot::take(&store, &cfg);
        let spec_now = spec.clone();
        let node_ip = cfg.node_ip;
        let network = cfg.cluster_cidr;
        let (k, fw, result) = tokio::task::spawn_blocking(move || {
            type Outcome = (VxlanSpec, Option<(PassReport, Vec<Skipped>)>);
            let r = (|| -> Result<Outcome, OverlayError> {
                let spec = match spec_now {
                    Some(s) => s,
                    None => spec_from_kernel(&mut k, node_ip)?,
                };
                let Some(own) = snapshot.own_subnet else {
                    return Ok((spec, None));
                };
                let r = pass(&mut k, &mut fw, &spec, network, own, &snapshot.peers)?;
                Ok((spec, Some((r, snapshot.skipped))))
            })();
            (k, fw, r)
        })
        .await
        .expect("the overlay pass does not panic");
        kernel = Some(k);
        firewall = Some(fw);
        match result {
            Ok((s, outcome)) => {
                spec = Some(s.clone());
                match outcome {
                    None if !waiting_logged => {
                        tracing::info!("overlay: waiting for this node's podCIDR");
                        waiting_logged = true;
                    }
                    None => {}
                    Some((mut r, mut skipped)) => {
                        skipped.append(&mut r.skipped);
                        log_pass(&r);
                        let now: BTreeSet<String> = skipped
                            .iter()
                            .filter_map(|s| match s {
                                Skipped::Bad { node, reason } => Some(format!("{node}: {reason}")),
                                Skipped::NotReady { .. } => None,
                            })
                            .collect();
                        for w in now.difference(&warned) {
                            tracing::warn!("overlay: node left out: {w}");
                        }
                        warned = now;
                        publish(&client, &store, &cfg.node_name, &s).await;
                    }
                }
            }
            Err(e) => tracing::error!("overlay pass failed: {e}"),
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(cfg.resync) => {}
        }
    }
}

/// Node list facts a pass needs, taken from the store before leaving the async side.
struct Snapshot {
    own_subnet: Option<Subnet>,
    peers: Vec<desired::Peer>,
    skipped: Vec<Skipped>,
}

impl Snapshot {
    fn take(store: &Store<Node>, cfg: &OverlayConfig) -> Snapshot {
        let nodes: Vec<Node> = store.state().iter().map(|n| (**n).clone()).collect();
        let own_subnet = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()))
            .and_then(|n| n.spec.as_ref()?.pod_cidr.as_deref())
            .and_then(Subnet::parse);
        let (peers, skipped) = desired::peers(&nodes, &cfg.node_name);
        Snapshot {
            own_subnet,
            peers,
            skipped,
        }
    }
}

async fn publish(client: &kube::Client, store: &Store<Node>, name: &str, spec: &VxlanSpec) {
    let want = annotations(spec);
    let me = store
        .state()
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some(name));
    if !me.is_some_and(|n| needs_publish(&n, &want)) {
        return;
    }
    let patch = serde_json::json!({"metadata": {"annotations": want}});
    let r = Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    match r {
        Ok(_) => tracing::info!(mac = %spec.mac, ip = %spec.local, "overlay: VTEP published"),
        Err(source) => tracing::warn!(
            "{}",
            OverlayError::Api {
                node: name.into(),
                source
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::kernel::FakeKernel;
    use crate::proxy::kernel::FakeKernel as FakeIptables;

    #[test]
    fn spec_takes_the_underlay_mtu_minus_the_vxlan_overhead() {
        let mut k = FakeKernel::default();
        let ip: Ipv4Addr = "172.30.0.2".parse().unwrap();
        assert!(matches!(
            spec_from_kernel(&mut k, ip),
            Err(OverlayError::NoUnderlay { .. })
        ));
        k.underlay.insert(ip, 1500);
        let s = spec_from_kernel(&mut k, ip).unwrap();
        assert_eq!((s.mtu, s.vni, s.port, s.local), (1450, 1, 8472, ip));
        assert_eq!(s.name, "skiff.1");
    }

    #[test]
    fn a_pass_converges_and_a_second_changes_nothing() {
        let mut k = FakeKernel::default();
        let mut fw = FakeIptables::default();
        let spec = device_spec("172.30.0.1".parse().unwrap(), 1500);
        let net = Subnet::parse("10.244.0.0/16").unwrap();
        let own = Subnet::parse("10.244.0.0/24").unwrap();
        let peers = vec![desired::Peer {
            name: "b".into(),
            subnet: Subnet::parse("10.244.1.0/24").unwrap(),
            vtep_mac: Mac::for_node("172.30.0.2".parse().unwrap()),
            public_ip: "172.30.0.2".parse().unwrap(),
        }];
        let r = pass(&mut k, &mut fw, &spec, net, own, &peers).unwrap();
        assert_eq!(r.device, Some(DeviceChange::Created));
        assert_eq!(r.plan.add_routes.len(), 1);
        assert!(r.firewall_written);
        let r = pass(&mut k, &mut fw, &spec, net, own, &peers).unwrap();
        assert_eq!(r.device, Some(DeviceChange::Unchanged));
        assert!(r.plan.is_empty());
        assert!(!r.firewall_written);
        let r = pass(&mut k, &mut fw, &spec, net, own, &[]).unwrap();
        assert_eq!(r.plan.del_fdb.len(), 1);
    }

    #[test]
    fn publishes_only_when_the_annotations_differ() {
        let spec = device_spec("172.30.0.1".parse().unwrap(), 1500);
        let want = annotations(&spec);
        assert_eq!(want[desired::ANNOTATION_VTEP_MAC], "0e:5f:ac:1e:00:01");
        let mut n = Node::default();
        assert!(needs_publish(&n, &want));
        n.metadata.annotations = Some(want.clone());
        assert!(!needs_publish(&n, &want));
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(desired::ANNOTATION_PUBLIC_IP.into(), "172.30.0.9".into());
        assert!(needs_publish(&n, &want));
    }
}

//! Announces this node's DNS server as an endpoint of the `kube-system/kube-dns` Service, so the
//! service proxy sends 10.96.0.10:53 to the nodes' DNS servers like to any Service's pods.
//!
//! Each agent owns one EndpointSlice, `kube-dns-<node>`, labeled with the service name and
//! `managed-by: skiff-agent` (the endpointslice controller leaves slices it does not manage
//! alone), and owned by the Node object so that deleting the node removes it.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

pub const SERVICE: &str = "kube-dns";
pub const NAMESPACE: &str = "kube-system";
pub const MANAGED_BY: &str = "skiff-agent";
/// Re-applied this often, so a slice deleted by hand comes back.
const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Announce {
    pub node: String,
    pub address: IpAddr,
    pub port: u16,
}

/// The slice this node applies; `node_uid` makes the Node its owner.
pub fn slice(a: &Announce, node_uid: &str) -> EndpointSlice {
    let address_type = if a.address.is_ipv4() { "IPv4" } else { "IPv6" };
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(&a.node), "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": a.node, "uid": node_uid}],
        },
        "addressType": address_type,
        "endpoints": [{
            "addresses": [a.address.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": a.node,
        }],
        "ports": [
            {"name": "dns", "port": a.port, "protocol": "UDP"},
            {"name": "dns-tcp", "port": a.port, "protocol": "TCP"},
        ],
    }))
    .expect("a well-formed EndpointSlice")
}

pub fn slice_name(node: &str) -> String {
    format!("{SERVICE}-{node}")
}

/// Applies the slice once the Node exists, then again every [`REFRESH`]. Errors are logged and
/// retried: the DNS server itself keeps serving whatever happens here.
pub async fn run(client: Client, a: Announce) {
    let nodes = Api::<Node>::all(client.clone());
    let slices = Api::<EndpointSlice>::namespaced(client, NAMESPACE);
    let params = PatchParams::apply(MANAGED_BY).force();
    loop {
        let wait = match nodes.get_opt(&a.node).await {
            Ok(Some(node)) => {
                let uid = node.metadata.uid.unwrap_or_default();
                match slices
                    .patch(
                        &slice_name(&a.node),
                        &params,
                        &Patch::Apply(slice(&a, &uid)),
                    )
                    .await
                {
                    Ok(_) => REFRESH,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster DNS: publishing the kube-dns endpoint");
                        Duration::from_secs(2)
                    }
                }
            }
            // The node registers itself at the same time; the slice waits for its owner.
            Ok(None) => Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(error = %e, "cluster DNS: reading this node");
                Duration::from_secs(2)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_points_the_service_at_this_node() {
        let a = Announce {
            node: "node-1".into(),
            address: "10.0.0.11".parse().unwrap(),
            port: 53,
        };
        let s = slice(&a, "uid-1");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["kind"], "EndpointSlice");
        assert_eq!(v["metadata"]["name"], "kube-dns-node-1");
        assert_eq!(
            v["metadata"]["labels"]["kubernetes.io/service-name"],
            "kube-dns"
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(v["addressType"], "IPv4");
        assert_eq!(v["endpoints"][0]["addresses"][0], "10.0.0.11");
        assert_eq!(v["ports"][0]["name"], "dns");
        assert_eq!(v["ports"][1]["protocol"], "TCP");
        let v6 = slice(
            &Announce {
                address: "fd00::11".parse().unwrap(),
                port: 5353,
                ..a
            },
            "u",
        );
        assert_eq!(v6.address_type, "IPv6");
        assert_eq!(v6.ports.unwrap()[0].port, Some(5353));
    }
}

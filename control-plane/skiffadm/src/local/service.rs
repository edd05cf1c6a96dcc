//! `skiffadm service NAME [-n NS] --url`: where a NodePort service answers on this node.

use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use kube::Api;

use super::layout::{Layout, Settings};
use super::LocalError;

/// `http://<node-ip>:<nodePort>` for each port of a NodePort or LoadBalancer service.
pub fn urls(svc: &Service, node_ip: &str) -> Result<Vec<String>, String> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = spec.type_.unwrap_or_else(|| "ClusterIP".into());
    if kind != "NodePort" && kind != "LoadBalancer" {
        return Err(format!(
            "service {name:?} is of type {kind}, which has no node port; expose it with `kubectl expose … --type=NodePort` or reach it inside the cluster"
        ));
    }
    let urls: Vec<String> = spec
        .ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.node_port.map(|np| format!("http://{node_ip}:{np}")))
        .collect();
    if urls.is_empty() {
        return Err(format!("service {name:?} has no node port allocated yet"));
    }
    Ok(urls)
}

pub async fn run(root: &Path, name: &str, namespace: &str, url: bool) -> Result<(), LocalError> {
    if !url {
        return Err(LocalError::Invalid(
            "say what to print: `skiffadm service NAME --url`".into(),
        ));
    }
    let layout = Layout::new(root)?;
    let settings = Settings::require(&layout)?;
    let client = super::client(&layout).await?;
    let api: Api<Service> = Api::namespaced(client, namespace);
    let svc = api.get(name).await.map_err(|e| LocalError::Api {
        what: format!("service {namespace}/{name}"),
        source: e,
    })?;
    // In a lab every node answers on the NodePort; its addresses are reached from the
    // lab's namespaces (`ip netns exec skiff-node-1 curl URL`).
    let ips: Vec<String> = match settings.nodes {
        Some(n) => {
            let spec = super::lab::spec(&layout, &settings, n);
            (1..=n).map(|i| spec.node_ip(i).to_string()).collect()
        }
        None => vec![settings.node_ip.clone()],
    };
    for ip in ips {
        for u in urls(&svc, &ip).map_err(LocalError::Invalid)? {
            println!("{u}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn node_port_urls() {
        let s = svc(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "ports": [
                {"port": 80, "nodePort": 30080},
                {"port": 443, "nodePort": 30443}
            ]}
        }));
        assert_eq!(
            urls(&s, "192.0.2.1").unwrap(),
            vec!["http://192.0.2.1:30080", "http://192.0.2.1:30443"]
        );
    }

    #[test]
    fn cluster_ip_services_have_no_url() {
        let s = svc(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80}]}
        }));
        let e = urls(&s, "192.0.2.1").unwrap_err();
        assert!(e.contains("ClusterIP") && e.contains("NodePort"), "{e}");
        let pending = svc(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "ports": [{"port": 80}]}
        }));
        assert!(urls(&pending, "192.0.2.1").is_err());
    }
}

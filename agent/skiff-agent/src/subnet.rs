//! The node's subnet file: the bridge between the control plane's pod-CIDR allocation
//! (`node.spec.podCIDR`, set by the node IPAM controller) and the `skiff-overlay` CNI plugin,
//! which reads it on every ADD. The agent waits for its Node to get a podCIDR and writes the
//! file before any pod gets a network, so the first pod never races the allocation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::Value;

/// Where `skiff-overlay` looks when its config names no `subnetFile`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/skiff/subnet.env";

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error("writing the subnet file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "node {node}: podCIDR {cidr:?} is not an IPv4 CIDR inside the cluster network {network}"
    )]
    BadCidr {
        node: String,
        cidr: String,
        network: String,
    },
}

/// What the file says about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetFacts {
    /// The whole cluster's pod network, e.g. `10.244.0.0/16`.
    pub network: String,
    /// This node's pod CIDR, e.g. `10.244.3.0/24`.
    pub subnet: String,
    pub mtu: Option<u32>,
    /// True when the node (not the bridge plugin) masquerades pod traffic leaving the cluster.
    pub ip_masq: bool,
}

fn parse_v4_cidr(s: &str) -> Option<(u32, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some((u32::from(addr), prefix))
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// True when `inner` is a CIDR that lies inside `outer`.
pub fn cidr_within(inner: &str, outer: &str) -> bool {
    match (parse_v4_cidr(inner), parse_v4_cidr(outer)) {
        (Some((ia, ip)), Some((oa, op))) => ip >= op && (ia & mask(op)) == (oa & mask(op)),
        _ => false,
    }
}

/// The file's text, in the `KEY=value` form the overlay plugin parses.
pub fn render(f: &SubnetFacts) -> String {
    let mut s = format!("SKIFF_NETWORK={}\nSKIFF_SUBNET={}\n", f.network, f.subnet);
    if let Some(mtu) = f.mtu {
        s.push_str(&format!("SKIFF_MTU={mtu}\n"));
    }
    s.push_str(&format!("SKIFF_IPMASQ={}\n", f.ip_masq));
    s
}

/// Writes the file atomically (temp file + rename), so the plugin never reads half of it.
pub fn write(path: &Path, f: &SubnetFacts) -> Result<(), SubnetError> {
    let err = |source| SubnetError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("env.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(render(f).as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The subnet file a network configuration list's `skiff-overlay` plugin reads, if it has one.
pub fn overlay_subnet_file(plugins: &[serde_json::Map<String, Value>]) -> Option<PathBuf> {
    plugins
        .iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some("skiff-overlay"))
        .map(|p| {
            p.get("subnetFile")
                .and_then(Value::as_str)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE))
        })
}

/// Waits until the Node has a podCIDR, then writes the subnet file. Returns what it wrote.
pub async fn wait_and_write(
    client: kube::Client,
    node: &str,
    network: &str,
    mtu: Option<u32>,
    ip_masq: bool,
    path: &Path,
) -> Result<SubnetFacts, SubnetError> {
    let nodes: Api<Node> = Api::all(client);
    let mut waited_logged = false;
    loop {
        // The Node may not exist yet (registration runs beside this) or have no CIDR yet.
        let cidr = match nodes.get_opt(node).await {
            Ok(n) => n.and_then(|n| n.spec?.pod_cidr),
            Err(e) => {
                tracing::debug!(error = %e, "reading the node for its podCIDR");
                None
            }
        };
        if let Some(cidr) = cidr {
            if !cidr_within(&cidr, network) {
                return Err(SubnetError::BadCidr {
                    node: node.into(),
                    cidr,
                    network: network.into(),
                });
            }
            let facts = SubnetFacts {
                network: network.into(),
                subnet: cidr,
                mtu,
                ip_masq,
            };
            write(path, &facts)?;
            tracing::info!(subnet = %facts.subnet, file = %path.display(), "pod subnet file written");
            return Ok(facts);
        }
        if !waited_logged {
            tracing::info!(
                node,
                "waiting for the control plane to allocate this node's podCIDR"
            );
            waited_logged = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_the_overlay_format() {
        let f = SubnetFacts {
            network: "10.244.0.0/16".into(),
            subnet: "10.244.3.0/24".into(),
            mtu: Some(1450),
            ip_masq: true,
        };
        assert_eq!(
            render(&f),
            "SKIFF_NETWORK=10.244.0.0/16\nSKIFF_SUBNET=10.244.3.0/24\nSKIFF_MTU=1450\nSKIFF_IPMASQ=true\n"
        );
        let no_mtu = SubnetFacts {
            mtu: None,
            ip_masq: false,
            ..f
        };
        assert_eq!(
            render(&no_mtu),
            "SKIFF_NETWORK=10.244.0.0/16\nSKIFF_SUBNET=10.244.3.0/24\nSKIFF_IPMASQ=false\n"
        );
    }

    #[test]
    fn write_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/skiff/subnet.env");
        let mut f = SubnetFacts {
            network: "10.244.0.0/16".into(),
            subnet: "10.244.0.0/24".into(),
            mtu: None,
            ip_masq: true,
        };
        write(&path, &f).unwrap();
        f.subnet = "10.244.1.0/24".into();
        write(&path, &f).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("SKIFF_SUBNET=10.244.1.0/24\n"));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("subnet.env")]);
    }

    #[test]
    fn cidr_containment() {
        assert!(cidr_within("10.244.3.0/24", "10.244.0.0/16"));
        assert!(cidr_within("10.244.0.0/16", "10.244.0.0/16"));
        assert!(!cidr_within("10.245.0.0/24", "10.244.0.0/16"));
        assert!(!cidr_within("10.244.0.0/8", "10.244.0.0/16"));
        assert!(!cidr_within("fd00::/64", "10.244.0.0/16"));
        assert!(!cidr_within("10.244.0.0", "10.244.0.0/16"));
    }

    #[test]
    fn finds_the_overlay_plugins_file() {
        let list = |v: Value| -> Vec<serde_json::Map<String, Value>> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_object().unwrap().clone())
                .collect()
        };
        assert_eq!(
            overlay_subnet_file(&list(json!([
                {"type": "skiff-overlay", "subnetFile": "/x/subnet.env"},
                {"type": "portmap"}
            ]))),
            Some(PathBuf::from("/x/subnet.env"))
        );
        assert_eq!(
            overlay_subnet_file(&list(json!([{"type": "skiff-overlay"}]))),
            Some(PathBuf::from(DEFAULT_SUBNET_FILE))
        );
        assert_eq!(
            overlay_subnet_file(&list(json!([{"type": "bridge"}]))),
            None
        );
    }
}

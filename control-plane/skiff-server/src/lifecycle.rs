//! Objects the cluster has from the start, and the end of a namespace's life.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::ApiServer;
use crate::registry::{self, RESOURCES};

pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the system namespaces and the `kubernetes` Service if they are missing.
pub async fn bootstrap(
    server: &ApiServer,
    advertise: &str,
    port: u16,
) -> Result<(), skiff_store::StoreError> {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    for ns in SYSTEM_NAMESPACES {
        let key = registry::namespaces().key(None, ns);
        if server.cache.get(&key).is_some() {
            continue;
        }
        let obj = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now,
                         "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        });
        create_if_missing(server, &key, &obj).await?;
    }
    let svc_key = registry::services().key(Some("default"), "kubernetes");
    if server.cache.get(&svc_key).is_none() {
        let ip = server.settings.service_cidr.nth(1).to_string();
        let obj = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "uid": uuid::Uuid::new_v4().to_string(),
                         "creationTimestamp": now, "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "sessionAffinity": "None",
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
            "status": {"loadBalancer": {}},
        });
        create_if_missing(server, &svc_key, &obj).await?;
    }
    let ep_key = registry::find("", "v1", "endpoints")
        .expect("endpoints")
        .key(Some("default"), "kubernetes");
    if server.cache.get(&ep_key).is_none() {
        let obj = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default", "uid": uuid::Uuid::new_v4().to_string(),
                         "creationTimestamp": now, "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": advertise}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        });
        create_if_missing(server, &ep_key, &obj).await?;
    }
    // kube-apiserver keeps an EndpointSlice for itself too: service proxies read slices only.
    let slice_key = registry::find("discovery.k8s.io", "v1", "endpointslices")
        .expect("endpointslices")
        .key(Some("default"), "kubernetes");
    if server.cache.get(&slice_key).is_none() {
        let obj = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default", "uid": uuid::Uuid::new_v4().to_string(),
                         "creationTimestamp": now, "generation": 1,
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": "skiff-server"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [advertise], "conditions": {"ready": true, "serving": true, "terminating": false}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        });
        create_if_missing(server, &slice_key, &obj).await?;
    }
    ensure_kube_dns(server, &now).await?;
    // Cascading deletions that were under way when the server stopped go on.
    for rt in RESOURCES {
        let (items, _) = server.cache.list(&rt.key_prefix(None), None);
        for (_, obj) in items {
            let deleting = obj
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|d| !d.is_null());
            let gc_finalizer = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| {
                    f.iter()
                        .any(|x| x == crate::gc::ORPHAN || x == crate::gc::FOREGROUND)
                });
            if deleting && gc_finalizer {
                crate::gc::spawn_finalizers(server, rt, &obj);
            }
        }
    }
    // Namespaces that were terminating when the server stopped finish now.
    let (namespaces, _) = server
        .cache
        .list(&registry::namespaces().key_prefix(None), None);
    for (_, ns) in namespaces {
        if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
            if let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) {
                spawn_namespace_cleanup(server, name.to_string());
            }
        }
    }
    Ok(())
}

/// The cluster DNS Service, `kube-system/kube-dns` at the 10th address of the service range
/// (10.96.0.10), as kubeadm sets it up. It has no selector: the agents serve DNS on their nodes
/// and each publishes its own EndpointSlice for it, so the service proxy spreads 10.96.0.10
/// over the nodes' DNS servers.
async fn ensure_kube_dns(server: &ApiServer, now: &str) -> Result<(), skiff_store::StoreError> {
    let key = registry::services().key(Some("kube-system"), "kube-dns");
    if server.cache.get(&key).is_some() {
        return Ok(());
    }
    let ip = server.settings.service_cidr.nth(10).to_string();
    let (services, _) = server
        .cache
        .list(&registry::services().key_prefix(None), None);
    if let Some((_, holder)) = services
        .iter()
        .find(|(_, s)| s.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(ip.as_str()))
    {
        // A cluster created before kube-dns existed may have given the address away.
        let holder = holder
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        tracing::warn!(
            ip,
            holder,
            "not creating kube-system/kube-dns: its address is taken"
        );
        return Ok(());
    }
    let obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "uid": uuid::Uuid::new_v4().to_string(),
                     "creationTimestamp": now,
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "sessionAffinity": "None",
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
        "status": {"loadBalancer": {}},
    });
    create_if_missing(server, &key, &obj).await
}

async fn create_if_missing(
    server: &ApiServer,
    key: &str,
    obj: &Value,
) -> Result<(), skiff_store::StoreError> {
    match server
        .store
        .create(key, serde_json::to_vec(obj).expect("JSON"))
        .await
    {
        Ok(kv) => {
            server.cache.wait_for(kv.mod_revision).await;
            Ok(())
        }
        Err(skiff_store::StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes everything in a terminating namespace, then the namespace itself.
pub fn spawn_namespace_cleanup(server: &ApiServer, namespace: String) {
    let Some(server) = server.self_ref() else {
        return;
    };
    tokio::spawn(async move {
        for attempt in 0..600u32 {
            let mut remaining = 0usize;
            for rt in RESOURCES.iter().filter(|r| r.namespaced) {
                let (items, _) = server.cache.list(&rt.key_prefix(Some(&namespace)), None);
                for (_, obj) in items {
                    remaining += 1;
                    let name = obj
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if obj
                        .pointer("/metadata/deletionTimestamp")
                        .is_some_and(|d| !d.is_null())
                    {
                        continue;
                    }
                    if let Err(e) = server
                        .delete_one(
                            rt,
                            Some(&namespace),
                            &name,
                            Some(0),
                            "Background",
                            None,
                            None,
                            false,
                        )
                        .await
                    {
                        if e.code != 404 {
                            tracing::warn!(namespace, name, error = %e.message, "namespace cleanup: delete failed");
                        }
                    }
                }
            }
            if remaining == 0 {
                let key = registry::namespaces().key(None, &namespace);
                if let Some(ns) = server.cache.get(&key) {
                    let rv = ns
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok());
                    match server.store.delete(&key, rv).await {
                        Ok(_) | Err(skiff_store::StoreError::NotFound { .. }) => return,
                        Err(e) => {
                            tracing::warn!(namespace, error = %e, "namespace cleanup: final delete failed")
                        }
                    }
                } else {
                    return;
                }
            }
            let pause = if attempt < 10 { 100 } else { 1000 };
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        tracing::error!(
            namespace,
            "namespace still not empty after 10 minutes; giving up for now"
        );
    });
}

impl ApiServer {
    /// The `Arc` this server lives in, for background work it starts.
    pub fn self_ref(&self) -> Option<Arc<ApiServer>> {
        self.myself.get().and_then(std::sync::Weak::upgrade)
    }
}

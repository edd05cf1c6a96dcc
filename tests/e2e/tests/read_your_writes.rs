//! A create answers as soon as the store commits, before the watch cache has it (as
//! kube-apiserver does); the next request must still see it (GET, LIST, a watch from the
//! returned resourceVersion, an update that starts from the cache, a create in a namespace
//! just created, a Service address allocation). Run on both stores by tests/run-all.sh.
//! Each case was seen failing with the server's freshness waits taken out.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::Kubeconfig;
use serde_json::json;
use skiff_e2e::Server;

const ROUNDS: usize = 150;

async fn client(server: &Server) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("config");
    kube::Client::try_from(config).expect("client")
}

fn config_map(name: &str, round: usize) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"round": round.to_string()}
    }))
    .expect("configmap")
}

#[test]
fn every_answered_write_is_visible_to_the_next_request() {
    let server = Server::start_with(&["--disable", "all"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
        for round in 0..ROUNDS {
            let name = format!("ryw-{round}");
            let created = api
                .create(&PostParams::default(), &config_map(&name, round))
                .await
                .expect("create");
            let rv = created.metadata.resource_version.clone().expect("rv");
            let got = api.get(&name).await.expect("GET right after the create");
            assert_eq!(got.metadata.resource_version.as_deref(), Some(rv.as_str()));

            // An update that reads the old object from the cache must not see a conflict.
            let patched = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"round": "patched"}})),
                )
                .await
                .expect("patch right after the create");
            let patched_rv = patched.metadata.resource_version.expect("rv");
            let listed = api.list(&ListParams::default()).await.expect("list");
            let item = listed
                .items
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("{name} missing from the LIST right after its patch"));
            assert_eq!(
                item.data
                    .as_ref()
                    .and_then(|d| d.get("round"))
                    .map(String::as_str),
                Some("patched"),
                "LIST shows the patched object"
            );
            assert_eq!(
                item.metadata.resource_version.as_deref(),
                Some(patched_rv.as_str())
            );

            // A watch from the create's resourceVersion starts with the patch, not before it.
            if round % 25 == 0 {
                let params = WatchParams::default().fields(&format!("metadata.name={name}"));
                let mut events = api.watch(&params, &rv).await.expect("watch").boxed();
                let first =
                    tokio::time::timeout(std::time::Duration::from_secs(10), events.try_next())
                        .await
                        .expect("a watch event within 10 s")
                        .expect("watch stream")
                        .expect("an event");
                match first {
                    WatchEvent::Modified(c) => assert_eq!(
                        c.metadata.resource_version.as_deref(),
                        Some(patched_rv.as_str())
                    ),
                    other => panic!("expected the patch as the first event, got {other:?}"),
                }
            }
        }
    });
}

/// Creates answer before the cache has them; from several clients at once, a GET sent the
/// moment each create answers must still find it (on etcd the watch event trails the answer
/// by the time etcd takes to send it and the cache to apply it).
#[test]
fn concurrent_creates_are_visible_to_the_next_get() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 150;
    let server = Server::start_with(&["--disable", "all"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = client(&server).await;
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
            tasks.push(tokio::spawn(async move {
                for round in 0..PER_CLIENT {
                    let name = format!("burst-{c}-{round}");
                    let created = api
                        .create(&PostParams::default(), &config_map(&name, round))
                        .await
                        .expect("create");
                    let got = api
                        .get_opt(&name)
                        .await
                        .expect("GET")
                        .unwrap_or_else(|| panic!("{name} not found right after its create"));
                    assert_eq!(
                        got.metadata.resource_version,
                        created.metadata.resource_version
                    );
                }
            }));
        }
        for task in tasks {
            task.await.expect("client task");
        }
    });
}

/// The reads a create itself makes see the creates answered before it: the namespace it
/// goes into, and the addresses other Services hold.
#[test]
fn a_create_sees_the_namespace_and_services_created_just_before() {
    use k8s_openapi::api::core::v1::{Namespace, Service};
    const CLIENTS: usize = 6;
    const PER_CLIENT: usize = 8;
    let server = Server::start_with(&["--disable", "all"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = client(&server).await;
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let namespaces: Api<Namespace> = Api::all(client.clone());
                let mut ips = Vec::new();
                for round in 0..PER_CLIENT {
                    let ns = format!("fresh-{c}-{round}");
                    let body = serde_json::from_value(json!({"metadata": {"name": ns}}))
                        .expect("namespace");
                    namespaces
                        .create(&PostParams::default(), &body)
                        .await
                        .expect("create namespace");
                    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
                    let svc = serde_json::from_value(json!({
                        "metadata": {"name": "web"},
                        "spec": {"ports": [{"port": 80}]}
                    }))
                    .expect("service");
                    let created = services
                        .create(&PostParams::default(), &svc)
                        .await
                        .unwrap_or_else(|e| panic!("Service in {ns} right after it: {e}"));
                    ips.push(
                        created
                            .spec
                            .and_then(|s| s.cluster_ip)
                            .expect("a ClusterIP"),
                    );
                }
                ips
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "every Service got its own ClusterIP");
    });
}

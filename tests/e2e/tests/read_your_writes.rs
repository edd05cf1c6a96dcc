//! A create or update answers as soon as the store commits, before the watch cache has it;
//! the next request must still see it (GET, LIST, a watch from the returned resourceVersion,
//! and an update that starts from the cache). Run on both stores by tests/run-all.sh.

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

//! ServiceAccount controller: a `default` ServiceAccount in every namespace, created when the
//! namespace appears and again whenever it is deleted (kube's serviceaccounts-controller).
//! Namespaces being deleted are left alone.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use crate::endpoints::drive;
use crate::{Context, Error};

pub const DEFAULT_NAME: &str = "default";

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (namespaces, writer) = reflector::store::<Namespace>();
    let ns_events = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .filter_map(|event| async move {
        match event {
            Ok(watcher::Event::Apply(ns)) | Ok(watcher::Event::InitApply(ns)) => {
                Some(Ok(ObjectRef::from_obj(&ns)))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    });
    // A deleted `default` account is recreated.
    let sa_events = watcher(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|event| async move {
        match event {
            Ok(watcher::Event::Delete(sa)) if sa.name_any() == DEFAULT_NAME => {
                Some(Ok(ObjectRef::new(&sa.namespace().unwrap_or_default())))
            }
            _ => None,
        }
    });
    let queue = futures::stream::select_all([ns_events.boxed(), sa_events.boxed()]).boxed();
    drive("serviceaccount", namespaces, queue, ctx, |ns, ctx| {
        Box::pin(reconcile(ns, ctx))
    })
    .await;
}

/// Whether the namespace takes new objects (not being deleted).
pub fn is_active(ns: &Namespace) -> bool {
    let terminating = ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    ns.metadata.deletion_timestamp.is_none() && !terminating
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !is_active(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if api.get_opt(DEFAULT_NAME).await?.is_some() {
        return Ok(Action::await_change());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_NAME.into()),
            namespace: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => tracing::info!(namespace = %name, "created the default service account"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        // The namespace started terminating between the read and the write.
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {
            tracing::debug!(namespace = %name, reason = %e.message, "default service account not created")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_namespaces_are_skipped() {
        let mut ns = Namespace::default();
        assert!(is_active(&ns));
        ns.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Terminating".into()),
            ..Default::default()
        });
        assert!(!is_active(&ns));
    }
}

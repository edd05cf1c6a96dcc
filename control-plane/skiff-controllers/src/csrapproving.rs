//! CSR approving controller (kube's csrapproving): approves kubelet client certificate
//! requests from joining nodes (bootstrap-token users) and certificate renewals from the node
//! itself. Anything else is left for an administrator (`kubectl certificate approve`); nothing
//! is ever denied here, as kube does.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use crate::endpoints::drive;
use crate::{Context, Error};

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";
const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Approve {
        reason: &'static str,
        message: String,
    },
    /// Not ours to approve (or already decided); why, for the log.
    Leave(String),
}

/// Subject CN, subject O's and whether the request asks for any subject alternative name.
fn request_subject(pem: &[u8]) -> Result<(String, Vec<String>, bool), String> {
    use x509_parser::prelude::FromDer;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| e.to_string())?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err(format!(
            "PEM block is {:?}, not CERTIFICATE REQUEST",
            block.label
        ));
    }
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
            .map_err(|e| e.to_string())?;
    let subject = &csr.certification_request_info.subject;
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_string();
    let orgs = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    let has_sans = csr.requested_extensions().is_some_and(|mut exts| {
        exts.any(|e| {
            matches!(
                e,
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(_)
            )
        })
    });
    Ok((cn, orgs, has_sans))
}

/// kube's rules for a kubelet client certificate: CN `system:node:<name>`, O exactly
/// `system:nodes`, no SANs, usages client auth + digital signature (+ key encipherment).
pub fn decide(csr: &CertificateSigningRequest) -> Decision {
    let decided = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
        });
    if decided {
        return Decision::Leave("already decided".into());
    }
    let spec = &csr.spec;
    if spec.signer_name != KUBELET_CLIENT_SIGNER {
        return Decision::Leave(format!("signer {} is not ours", spec.signer_name));
    }
    let (cn, orgs, has_sans) = match request_subject(&spec.request.0) {
        Ok(s) => s,
        Err(e) => return Decision::Leave(format!("unreadable request: {e}")),
    };
    let Some(node) = cn.strip_prefix(NODE_USER_PREFIX).filter(|n| !n.is_empty()) else {
        return Decision::Leave(format!("subject CN {cn:?} is not system:node:<name>"));
    };
    if orgs != [NODES_GROUP] {
        return Decision::Leave(format!("subject O {orgs:?} is not exactly [system:nodes]"));
    }
    if has_sans {
        return Decision::Leave("a kubelet client certificate carries no SANs".into());
    }
    let mut usages: Vec<&str> = spec
        .usages
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    usages.sort_unstable();
    usages.dedup();
    let allowed = [
        vec!["client auth", "digital signature"],
        vec!["client auth", "digital signature", "key encipherment"],
    ];
    if !allowed.contains(&usages) {
        return Decision::Leave(format!("usages {usages:?} are not a kubelet client's"));
    }
    let user = spec.username.as_deref().unwrap_or("");
    let groups = spec.groups.as_deref().unwrap_or_default();
    let in_group = |g: &str| groups.iter().any(|x| x == g);
    if user.starts_with(BOOTSTRAP_USER_PREFIX) && in_group(BOOTSTRAPPERS_GROUP) {
        return Decision::Approve {
            reason: "AutoApproved",
            message: format!("Auto approving kubelet client certificate for node {node} requested with bootstrap token"),
        };
    }
    if user == cn && in_group(NODES_GROUP) {
        return Decision::Approve {
            reason: "AutoApproved",
            message: format!(
                "Auto approving self kubelet client certificate renewal for node {node}"
            ),
        };
    }
    Decision::Leave(format!(
        "requester {user:?} is neither a bootstrap-token user nor node {node} itself"
    ))
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (store, writer) = reflector::store::<CertificateSigningRequest>();
    let events = watcher(
        Api::<CertificateSigningRequest>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .filter_map(|event| async move {
        match event {
            Ok(watcher::Event::Apply(c)) | Ok(watcher::Event::InitApply(c)) => {
                Some(Ok(ObjectRef::from_obj(&c)))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    })
    .boxed();
    drive("csrapproving", store, events, ctx, |csr, ctx| {
        Box::pin(reconcile(csr, ctx))
    })
    .await;
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (reason, message) = match decide(&csr) {
        Decision::Approve { reason, message } => (reason, message),
        Decision::Leave(why) => {
            tracing::debug!(csr = csr.name_any(), why, "not auto-approving");
            return Ok(Action::await_change());
        }
    };
    let mut approved = (*csr).clone();
    let now = Time(jiff::Timestamp::now());
    approved
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        });
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    api.replace_subresource(
        "approval",
        &csr.name_any(),
        &PostParams::default(),
        &approved,
    )
    .await?;
    tracing::info!(csr = csr.name_any(), "approved");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;
    use k8s_openapi::ByteString;

    fn have_openssl() -> bool {
        std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A real PKCS#10 request made with openssl at test time (no crypto crate here).
    fn openssl_request(subject: &str, san: Option<&str>) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("k.pem");
        let mut cmd = std::process::Command::new("openssl");
        cmd.args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
        ])
        .arg(&key)
        .args(["-subj", subject]);
        if let Some(san) = san {
            cmd.args(["-addext", &format!("subjectAltName={san}")]);
        }
        let out = cmd.output().expect("run openssl");
        assert!(
            out.status.success(),
            "openssl req {subject}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn csr(request: Vec<u8>, user: &str, groups: &[&str]) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(request),
                signer_name: KUBELET_CLIENT_SIGNER.into(),
                usages: Some(vec!["digital signature".into(), "client auth".into()]),
                username: Some(user.into()),
                groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn approval_rules() {
        if !have_openssl() {
            eprintln!("SKIP approval_rules: no openssl binary to make certificate requests with");
            return;
        }
        let node_req = openssl_request("/O=system:nodes/CN=system:node:n1", None);
        let bootstrap = ["system:bootstrappers", "system:authenticated"];
        assert!(matches!(
            decide(&csr(
                node_req.clone(),
                "system:bootstrap:abcdef",
                &bootstrap
            )),
            Decision::Approve { .. }
        ));
        // Renewal by the node itself, but not by another node.
        assert!(matches!(
            decide(&csr(node_req.clone(), "system:node:n1", &["system:nodes"])),
            Decision::Approve { .. }
        ));
        assert!(matches!(
            decide(&csr(node_req.clone(), "system:node:n2", &["system:nodes"])),
            Decision::Leave(_)
        ));
        // An ordinary user does not get a node certificate approved.
        assert!(matches!(
            decide(&csr(node_req.clone(), "alice", &["system:authenticated"])),
            Decision::Leave(_)
        ));
        // A bootstrap user outside system:bootstrappers is not trusted.
        assert!(matches!(
            decide(&csr(node_req.clone(), "system:bootstrap:abcdef", &["x"])),
            Decision::Leave(_)
        ));
        let mut other_signer = csr(node_req.clone(), "system:bootstrap:abcdef", &bootstrap);
        other_signer.spec.signer_name = "kubernetes.io/kube-apiserver-client".into();
        assert!(matches!(decide(&other_signer), Decision::Leave(_)));
        let mut server_usage = csr(node_req.clone(), "system:bootstrap:abcdef", &bootstrap);
        server_usage.spec.usages = Some(vec!["server auth".into(), "digital signature".into()]);
        assert!(matches!(decide(&server_usage), Decision::Leave(_)));
        let mut done = csr(node_req, "system:bootstrap:abcdef", &bootstrap);
        done.status = Some(
            k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus {
                conditions: Some(vec![CertificateSigningRequestCondition {
                    type_: "Denied".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        );
        assert_eq!(decide(&done), Decision::Leave("already decided".into()));

        for (subject, san) in [
            ("/O=system:masters/CN=system:node:n1", None),
            ("/O=system:nodes/O=system:masters/CN=system:node:n1", None),
            ("/O=system:nodes/CN=admin", None),
            ("/O=system:nodes/CN=system:node:", None),
            (
                "/O=system:nodes/CN=system:node:n1",
                Some("DNS:evil.example"),
            ),
        ] {
            let req = openssl_request(subject, san);
            assert!(
                matches!(
                    decide(&csr(req, "system:bootstrap:abcdef", &bootstrap)),
                    Decision::Leave(_)
                ),
                "{subject} {san:?}"
            );
        }
        assert!(matches!(
            decide(&csr(
                b"garbage".to_vec(),
                "system:bootstrap:abcdef",
                &bootstrap
            )),
            Decision::Leave(_)
        ));
    }
}

//! Pulls from a real `docker-registry` on loopback, with images built from busybox-static and
//! pushed with skopeo.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use skiff_images::{
    ClientConfig, ContainerOverrides, DockerConfig, Error, GcPolicy, ImageStore, RegistryClient,
};

/// The client for tests that are not about timeouts: the production defaults, so that a
/// loaded CI machine (the proxy delays blobs on purpose) cannot turn a slow answer into a
/// failed pull. The timeout tests build their own short-fused clients.
fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig::default())
}

fn tools() -> bool {
    have_tools(&["docker-registry", "skopeo"])
}

fn blob_files(store: &ImageStore) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn tmp_is_empty(store: &ImageStore) -> bool {
    std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_busybox_through_an_index_and_merge_config() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    let amd64 = build_and_push(&reg, "busybox:multi", &[&base], true);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let c = client();
    let img = store
        .pull(&c, &format!("{}/busybox:multi", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(img.reference, format!("{}/busybox:multi", reg.host()));
    assert_eq!(
        img.manifest_digest.to_string(),
        amd64,
        "the linux/amd64 manifest of the index"
    );
    let dirs = store.layer_dirs(&img);
    assert_eq!(dirs.len(), 1);
    let bb = dirs[0].join("bin/busybox");
    let meta = std::fs::metadata(&bb).unwrap();
    assert!(meta.is_file() && meta.permissions().mode() & 0o111 != 0);
    assert_eq!(std::fs::read(&bb).unwrap(), std::fs::read(BUSYBOX).unwrap());
    assert_eq!(
        std::fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        std::path::Path::new("busybox")
    );
    // The unpacked busybox runs.
    let out = std::process::Command::new(&bb)
        .args(["echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"hello\n");
    let cfg = store.config(&img).unwrap();
    assert_eq!(cfg.architecture, "amd64");
    let p = skiff_images::merge_config(
        cfg.config.as_ref().unwrap(),
        &ContainerOverrides {
            args: vec!["-c".into(), "true".into()],
            ..Default::default()
        },
    );
    assert_eq!(p.args, vec!["-c", "true"]);
    assert_eq!(p.exposed_ports, vec!["80/tcp"]);
    assert!(p.env.contains(&"IMAGE=skiff-test".to_string()));
    assert_eq!(store.list().len(), 1);
    assert!(store
        .get(&format!("{}/busybox:multi", reg.host()))
        .is_some());
    // By digest, too (same image, no new download).
    let by_digest = format!("{}/busybox@{amd64}", reg.host());
    let img2 = store.pull(&c, &by_digest, None).await.unwrap();
    assert_eq!(img2.config_digest, img.config_digest);
    assert_eq!(store.lowerdir(&img2), dirs[0].display().to_string());
    // A reopened store sees the same images.
    drop(store);
    let store = ImageStore::open(dir.path()).unwrap();
    assert_eq!(store.list().len(), 2);
    assert!(tmp_is_empty(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_one_download_and_layers_are_shared() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    let extra = files_layer(&[("etc/motd", b"second image\n".to_vec())]);
    build_and_push(&reg, "busybox:one", &[&base], false);
    build_and_push(&reg, "app:two", &[&base, &extra], false);
    // Blob responses are delayed so that both pulls are waiting for the base layer at once.
    let proxy = Proxy::start(
        reg.port,
        ProxyMode {
            delay: Some(("/blobs/".to_string(), Duration::from_millis(300))),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let c = Arc::new(client());
    let r1 = format!("{}/busybox:one", proxy.host());
    let (a, b) = tokio::join!(store.pull(&c, &r1, None), store.pull(&c, &r1, None));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    let base_blob = format!("/blobs/{}", base.digest());
    assert_eq!(
        proxy.count(&base_blob),
        1,
        "one download for two concurrent pulls: {:?}",
        proxy.counts.lock().unwrap()
    );
    assert_eq!(proxy.count(&format!("/blobs/{}", a.config_digest)), 1);

    // The second image reuses the base layer: no download of it, same directory.
    proxy.reset();
    let r2 = format!("{}/app:two", proxy.host());
    let two = store.pull(&c, &r2, None).await.unwrap();
    assert_eq!(proxy.count(&base_blob), 0);
    assert_eq!(proxy.count(&format!("/blobs/{}", extra.digest())), 1);
    let d1 = store.layer_dirs(&a);
    let d2 = store.layer_dirs(&two);
    assert_eq!(d1[0], d2[0]);
    assert_eq!(
        std::fs::read(d2[1].join("etc/motd")).unwrap(),
        b"second image\n"
    );
    let layers: Vec<_> = std::fs::read_dir(dir.path().join("layers/sha256"))
        .unwrap()
        .collect();
    assert_eq!(layers.len(), 2);

    // Pulling again is a manifest request only.
    proxy.reset();
    store.pull(&c, &r2, None).await.unwrap();
    assert_eq!(proxy.count("/blobs/"), 0);
    let requests: usize = proxy.counts.lock().unwrap().values().sum();
    assert_eq!(requests, 1);

    // Refcounted removal: the shared layer stays until its last image goes.
    let usage_both = store.disk_usage();
    store.remove(&r1).await.unwrap();
    assert!(d1[0].is_dir(), "base layer still used by {r2}");
    assert!(store.disk_usage() <= usage_both);
    store.remove(&r2).await.unwrap();
    assert!(!d1[0].exists() && !d2[1].exists());
    assert!(blob_files(&store).is_empty(), "{:?}", blob_files(&store));
    assert!(store.list().is_empty());
    let e = store.remove(&r2).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_unused_images_above_threshold() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    let big = files_layer(&[("data", compressible(3 << 20, 7))]);
    let small = files_layer(&[("x", b"x".to_vec())]);
    build_and_push(&reg, "big:1", &[&base, &big], false);
    build_and_push(&reg, "small:1", &[&base, &small], false);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let c = client();
    let rb = format!("{}/big:1", reg.host());
    let rs = format!("{}/small:1", reg.host());
    store.pull(&c, &rb, None).await.unwrap();
    store.pull(&c, &rs, None).await.unwrap();
    let usage = store.disk_usage();
    assert!(usage > 5 << 20, "{usage}");
    // Below the high threshold: nothing happens.
    let r = store
        .gc(
            &[],
            GcPolicy {
                high_bytes: usage,
                low_bytes: 0,
            },
        )
        .await
        .unwrap();
    assert!(r.removed.is_empty());
    // Above: the unused image goes, the used one stays, the shared layer stays.
    let r = store
        .gc(
            std::slice::from_ref(&rs),
            GcPolicy {
                high_bytes: 1 << 20,
                low_bytes: 1 << 20,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.removed, vec![rb.clone()]);
    assert!(r.usage_after < usage - (3 << 20), "{r:?}");
    let s = store.get(&rs).unwrap();
    assert!(store.layer_dirs(&s).iter().all(|d| d.is_dir()));
    assert!(store.get(&rb).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_fails_and_leaves_nothing() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    build_and_push(&reg, "busybox:t", &[&base], false);
    let proxy = Proxy::start(
        reg.port,
        ProxyMode {
            tamper: Some(format!("/blobs/{}", base.digest())),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let e = store
        .pull(&client(), &format!("{}/busybox:t", proxy.host()), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&base.digest()) && msg.contains("expected"),
        "{msg}"
    );
    assert!(!blob_files(&store).contains(&base.digest().trim_start_matches("sha256:").to_string()));
    assert!(std::fs::read_dir(dir.path().join("layers/sha256"))
        .unwrap()
        .next()
        .is_none());
    assert!(tmp_is_empty(&store));
    assert!(store.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_registry_times_out() {
    let port = hanging_registry();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let c = RegistryClient::new(ClientConfig {
        response_timeout: Duration::from_secs(1),
        ..Default::default()
    });
    let t = Instant::now();
    let e = store
        .pull(&c, &format!("127.0.0.1:{port}/busybox:x"), None)
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("timed out after 1s waiting for response headers")
            && msg.contains(&port.to_string()),
        "{msg}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Nothing listening at all: a connect error, quickly.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = store
        .pull(&c, &format!("127.0.0.1:{free}/busybox:x"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_blob_body_times_out() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    build_and_push(&reg, "busybox:s", &[&base], false);
    let proxy = Proxy::start(
        reg.port,
        ProxyMode {
            stall: Some(format!("/blobs/{}", base.digest())),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let c = RegistryClient::new(ClientConfig {
        stall_timeout: Duration::from_secs(1),
        ..Default::default()
    });
    // A pull cancelled mid-download (its future dropped) leaves no partial file.
    let patient = RegistryClient::new(ClientConfig {
        stall_timeout: Duration::from_secs(30),
        ..Default::default()
    });
    let r = format!("{}/busybox:s", proxy.host());
    let blob_path = format!("/blobs/{}", base.digest());
    {
        let pull = store.pull(&patient, &r, None);
        tokio::pin!(pull);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen_at = None;
        loop {
            tokio::select! {
                res = &mut pull => panic!("the pull should still be waiting: {res:?}"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if seen_at.is_none() && proxy.count(&blob_path) == 1 {
                seen_at = Some(Instant::now());
            }
            // Cancel a little after the download started (half the blob has been sent).
            if seen_at.is_some_and(|t| t.elapsed() > Duration::from_millis(300)) {
                break;
            }
            assert!(Instant::now() < deadline, "the blob was never requested");
        }
    } // the pull future is dropped here
    assert!(tmp_is_empty(&store));
    let t = Instant::now();
    let e = store
        .pull(&c, &format!("{}/busybox:s", proxy.host()), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("waiting for body data"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(tmp_is_empty(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_and_basic_auth_from_dockerconfigjson() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    build_and_push(&reg, "busybox:auth", &[&base], false);
    let creds = ("alice".to_string(), "s3cret".to_string());
    for mode in [
        ProxyMode {
            bearer: Some(creds.clone()),
            ..Default::default()
        },
        ProxyMode {
            basic: Some(creds.clone()),
            ..Default::default()
        },
    ] {
        let bearer = mode.bearer.is_some();
        let proxy = Proxy::start(reg.port, mode);
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let c = client();
        let r = format!("{}/busybox:auth", proxy.host());
        // Without credentials: a clear auth error.
        let e = store.pull(&c, &r, None).await.unwrap_err();
        assert!(matches!(e, Error::Auth { .. }), "{e}");
        assert!(e.to_string().contains(&proxy.host()), "{e}");
        // With the secret's JSON.
        let json = format!(
            r#"{{"auths":{{"{}":{{"username":"alice","password":"s3cret","auth":"YWxpY2U6czNjcmV0"}}}}}}"#,
            proxy.host()
        );
        let cfg = DockerConfig::from_json(json.as_bytes()).unwrap();
        let creds = cfg.for_registry(&proxy.host()).unwrap();
        let img = store.pull(&c, &r, Some(creds)).await.unwrap();
        assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());
        if bearer {
            // One token for the whole pull (cached).
            assert_eq!(
                proxy.count("/token"),
                2,
                "one failed, one good: {:?}",
                proxy.counts.lock().unwrap()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_tag_is_repulled_and_old_content_collected() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    let v1 = files_layer(&[("version", b"1".to_vec())]);
    let v2 = files_layer(&[("version", b"2".to_vec())]);
    build_and_push(&reg, "app:latest", &[&base, &v1], false);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let c = client();
    let r = format!("{}/app", reg.host());
    let one = store.pull(&c, &r, None).await.unwrap();
    assert_eq!(one.reference, format!("{}/app:latest", reg.host()));
    let old_dir = store.layer_dirs(&one)[1].clone();
    build_and_push(&reg, "app:latest", &[&base, &v2], false);
    let two = store.pull(&c, &r, None).await.unwrap();
    assert_ne!(one.manifest_digest, two.manifest_digest);
    assert_eq!(
        std::fs::read(store.layer_dirs(&two)[1].join("version")).unwrap(),
        b"2"
    );
    assert_eq!(store.list().len(), 1);
    assert!(old_dir.is_dir(), "kept until gc");
    store
        .gc(
            &[],
            GcPolicy {
                high_bytes: u64::MAX,
                low_bytes: 0,
            },
        )
        .await
        .unwrap();
    assert!(!old_dir.exists());
    assert!(!store.blob_path(&one.manifest_digest).exists());
    assert!(store.layer_dirs(&two).iter().all(|d| d.is_dir()));
    assert!(store.blob_path(&two.manifest_digest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_and_zstd_layers() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    // Docker media types: skopeo converts the OCI image to a schema 2 manifest.
    let t = tempfile::tempdir().unwrap();
    write_oci_layout(t.path(), "v2s2", &[&base], false);
    push_with(
        t.path(),
        "v2s2",
        &format!("{}/docker:v2s2", reg.host()),
        &["--format", "v2s2"],
    );
    // A zstd layer on top of the gzip base.
    let z = Layer::zstd({
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/zstd", &b"zstd\n"[..]).unwrap();
        b.into_inner().unwrap()
    });
    build_and_push(&reg, "zstd:1", &[&base, &z], false);

    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let c = client();
    let img = store
        .pull(&c, &format!("{}/docker:v2s2", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(
        img.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let manifest = std::fs::read_to_string(store.blob_path(&img.manifest_digest)).unwrap();
    assert!(
        manifest.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{manifest}"
    );
    assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());

    let img = store
        .pull(&c, &format!("{}/zstd:1", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(
        img.layers[1].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        std::fs::read(store.layer_dirs(&img)[1].join("etc/zstd")).unwrap(),
        b"zstd\n"
    );
    // The base layer is shared between the Docker-typed and the OCI-typed image.
    assert_eq!(
        std::fs::read_dir(dir.path().join("layers/sha256"))
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_manifest_fails_by_tag_and_by_digest() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    let digest = build_and_push(&reg, "busybox:m", &[&base], false);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    for (path, reference) in [
        ("/manifests/m".to_string(), "busybox:m".to_string()),
        (format!("/manifests/{digest}"), format!("busybox@{digest}")),
    ] {
        let proxy = Proxy::start(
            reg.port,
            ProxyMode {
                tamper: Some(path),
                ..Default::default()
            },
        );
        let e = store
            .pull(&client(), &format!("{}/{reference}", proxy.host()), None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::DigestMismatch { .. }),
            "{reference}: {e}"
        );
        assert!(
            e.to_string().contains("manifest") && e.to_string().contains(&digest),
            "{e}"
        );
        assert_eq!(
            proxy.count("/blobs/"),
            0,
            "nothing fetched after a bad manifest"
        );
    }
    assert!(blob_files(&store).is_empty());
    assert!(store.list().is_empty());
}

/// A CA and a server certificate for 127.0.0.1: (ca_pem, cert_pem, key_pem).
fn test_pki() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "skiff test registry CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server
        .distinguished_name
        .push(DnType::CommonName, "registry");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_over_https_with_a_private_ca() {
    if !tools() {
        return;
    }
    let (ca, cert, key) = test_pki();
    let reg = Registry::start_tls(&cert, &key);
    let base = busybox_layer();
    build_and_push(&reg, "busybox:tls", &[&base], false);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let r = format!("{}/busybox:tls", reg.host());
    let tls_client = |extra_ca_pem: Vec<u8>| {
        RegistryClient::new(ClientConfig {
            tls_registries: vec![reg.host()],
            extra_ca_pem,
            connect_timeout: Duration::from_secs(5),
            ..Default::default()
        })
    };
    // Without the CA: the certificate is refused, clearly.
    let e = store
        .pull(&tls_client(Vec::new()), &r, None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().contains("https://127.0.0.1"), "{e}");
    // With it: a normal pull over TLS.
    let img = store
        .pull(&tls_client(ca.into_bytes()), &r, None)
        .await
        .unwrap();
    assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());
    // Plain HTTP (the loopback default) to a TLS registry fails with the registry's answer.
    let e = store.pull(&client(), &r, None).await.unwrap_err();
    assert!(matches!(e, Error::Status { status: 400, .. }), "{e}");
}

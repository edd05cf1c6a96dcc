//! The shared store cases on a real etcd, plus what only etcd can do: be killed and come
//! back, share one cluster between key prefixes, serve client-certificate TLS.
//!
//! Every test starts its own etcd (`/usr/bin/etcd`, or `$SKIFF_ETCD`) on loopback. Without
//! etcd each test prints "skipped: etcd not installed" on stderr and does nothing.

#[macro_use]
mod common;
#[path = "common/etcd_server.rs"]
mod etcd_server;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_server::{EtcdServer, ServerTls};
use skiff_store::{EtcdStore, EtcdTls, Event, KeyValue, Store, StoreError};

/// Connects, retrying while etcd is still electing itself leader.
async fn connect(server: &EtcdServer, tls: Option<EtcdTls>) -> EtcdStore {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match EtcdStore::connect(&[server.endpoint()], tls.clone()).await {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                eprintln!("etcd not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "cannot connect to the test etcd: {e}\n{}",
                server.log_tail()
            ),
        }
    }
}

async fn setup(test: &str) -> Option<(EtcdServer, Arc<dyn Store>)> {
    let server = EtcdServer::start(test)?;
    let store = connect(&server, None).await;
    Some((server, Arc::new(store)))
}

store_cases!(setup);

/// Retries `op` until it succeeds (etcd coming back); returns the result and the attempts.
async fn retry<T, F, Fut>(what: &str, mut op: F) -> (T, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match op().await {
            Ok(value) => return (value, attempts),
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: attempt {attempts} failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: still failing after 30s: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_an_etcd_kill_and_restart() {
    let Some(mut server) =
        EtcdServer::start("acknowledged_writes_survive_an_etcd_kill_and_restart")
    else {
        return;
    };
    let store = connect(&server, None)
        .await
        .with_request_timeout(Duration::from_secs(2));
    let r0 = store.current_revision().await.unwrap();
    let mut watch = store.watch("/crash/", r0).await.unwrap();

    // Every write below is acknowledged before etcd is killed.
    let mut acked: BTreeMap<String, KeyValue> = BTreeMap::new();
    let mut revisions = Vec::new();
    for i in 0..100 {
        let key = format!("/crash/{i:03}");
        let kv = store
            .create(&key, format!("v{i}").into_bytes())
            .await
            .unwrap();
        revisions.push(kv.mod_revision);
        acked.insert(key, kv);
    }
    for i in (0..100).step_by(2) {
        let key = format!("/crash/{i:03}");
        let old = acked[&key].mod_revision;
        let kv = store
            .update(&key, format!("w{i}").into_bytes(), old)
            .await
            .unwrap();
        revisions.push(kv.mod_revision);
        acked.insert(key, kv);
    }
    for i in (0..100).step_by(5) {
        let key = format!("/crash/{i:03}");
        let (_, rev) = store.delete(&key, None).await.unwrap();
        revisions.push(rev);
        acked.remove(&key);
    }
    let last_acked = *revisions.last().unwrap();

    server.kill();
    // While etcd is down requests fail with a Backend error naming etcd; they do not hang.
    let started = Instant::now();
    match store.create("/crash/while-down", vec![]).await {
        Err(StoreError::Backend { path, message }) => {
            assert!(path.contains(&server.endpoint()), "{path}: {message}");
        }
        other => panic!("expected a backend error while etcd is down, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed in bounded time"
    );

    server.restart();
    let ((list, rev), attempts) = retry("list after restart", || store.list("/crash/")).await;
    let _ = writeln!(
        std::io::stderr(),
        "etcd restarted: the same client answered after {attempts} attempt(s)"
    );
    assert!(
        rev >= last_acked,
        "revision {rev} went back before {last_acked}"
    );
    let found: BTreeMap<String, KeyValue> =
        list.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    assert_eq!(
        found, acked,
        "every acknowledged write is still there, exactly"
    );
    assert!(store.get("/crash/while-down").await.unwrap().is_none());

    // The store keeps working, and the watch opened before the crash resumes where it was.
    let after = store
        .create("/crash/after-restart", b"ok".to_vec())
        .await
        .unwrap();
    assert!(after.mod_revision > last_acked);
    revisions.push(after.mod_revision);
    let mut seen = Vec::new();
    while seen.len() < revisions.len() {
        let event = common::recv(&mut watch)
            .await
            .expect("watch ended")
            .expect("watch error");
        seen.push(event.revision());
    }
    assert_eq!(
        seen, revisions,
        "every change once, in order, across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_that_falls_behind_a_compaction_gets_one_compacted_error() {
    let Some(server) =
        EtcdServer::start("watch_that_falls_behind_a_compaction_gets_one_compacted_error")
    else {
        return;
    };
    let store = Arc::new(connect(&server, None).await);
    let r0 = store.current_revision().await.unwrap();
    let mut watch = store.watch("/flood/", r0).await.unwrap();
    // Nobody reads the watch while thousands of changes are written: the watch buffers and
    // then etcd's own send buffers fill up, and etcd parks the watcher.
    const WRITES: usize = 2400;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (worker..WRITES).step_by(16) {
                store
                    .create(&format!("/flood/{i:05}"), vec![b'x'; 4096])
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let compacted_at = store.current_revision().await.unwrap();
    store.compact(compacted_at).await.unwrap();

    let mut last = r0;
    let mut delivered = 0;
    loop {
        match common::recv(&mut watch).await {
            Some(Ok(event)) => {
                assert!(event.revision() > last, "events in order");
                last = event.revision();
                delivered += 1;
            }
            Some(Err(StoreError::Compacted { requested, oldest })) => {
                assert_eq!(
                    requested, last,
                    "the error names the last delivered revision"
                );
                assert_eq!(oldest, compacted_at);
                break;
            }
            Some(Err(other)) => panic!("expected Compacted, got {other}"),
            None => panic!("watch ended after {delivered} events without reporting compaction"),
        }
    }
    assert!(delivered < WRITES);
    assert!(
        common::recv(&mut watch).await.is_none(),
        "one error, then the end"
    );
    let _ = writeln!(
        std::io::stderr(),
        "slow watcher: {delivered} of {WRITES} events delivered, then Compacted at {compacted_at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_share_one_etcd_without_seeing_each_other() {
    let Some(server) = EtcdServer::start("key_prefixes_share_one_etcd_without_seeing_each_other")
    else {
        return;
    };
    let raw = connect(&server, None).await;
    let a = raw.clone().with_key_prefix("/cluster-a");
    let b = raw.clone().with_key_prefix("/cluster-b");
    let r0 = a.current_revision().await.unwrap();
    let mut watch_b = b.watch("/registry/", r0).await.unwrap();
    let in_a = a
        .create("/registry/ns/default", b"a".to_vec())
        .await
        .unwrap();
    assert_eq!(in_a.key, "/registry/ns/default");
    let in_b = b
        .create("/registry/ns/default", b"b".to_vec())
        .await
        .unwrap();
    assert_eq!(
        in_b.mod_revision,
        in_a.mod_revision + 1,
        "one revision for both"
    );
    assert_eq!(
        &*a.get("/registry/ns/default").await.unwrap().unwrap().value,
        b"a"
    );
    let (list, _) = b.list("/registry/").await.unwrap();
    assert_eq!(list, vec![in_b.clone()]);
    let (all, _) = raw.list("/").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/cluster-a/registry/ns/default",
            "/cluster-b/registry/ns/default"
        ]
    );
    match common::recv(&mut watch_b).await.unwrap().unwrap() {
        Event::Put { kv, prev: None } => assert_eq!(kv, in_b),
        other => panic!("cluster b saw {other:?}"),
    }
}

#[tokio::test]
async fn connect_to_an_unreachable_etcd_fails_fast_naming_it() {
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    match EtcdStore::connect(std::slice::from_ref(&endpoint), None).await {
        Err(StoreError::Backend { path, message }) => {
            assert!(path.contains(&endpoint), "{path}: {message}");
        }
        Err(other) => panic!("expected a backend error, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(12));
}

#[tokio::test]
async fn connect_rejects_malformed_endpoints_and_tls_mismatches() {
    let tls = EtcdTls {
        ca_pem: vec![],
        cert_pem: vec![],
        key_pem: vec![],
    };
    let cases: Vec<(Vec<String>, Option<EtcdTls>)> = vec![
        (vec![], None),
        (vec!["127.0.0.1:2379".into()], None),
        (vec!["https://127.0.0.1:2379".into()], None),
        (vec!["http://127.0.0.1:2379".into()], Some(tls.clone())),
        (
            vec![
                "http://127.0.0.1:2379".into(),
                "https://127.0.0.1:2380".into(),
            ],
            Some(tls),
        ),
    ];
    for (endpoints, tls) in cases {
        let result = EtcdStore::connect(&endpoints, tls).await;
        assert!(
            matches!(result, Err(StoreError::Backend { .. })),
            "{endpoints:?} was accepted"
        );
    }
}

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

/// A CA, a serving certificate for 127.0.0.1 and a client certificate, as files for etcd.
fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "skiff test etcd CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server.distinguished_name.push(DnType::CommonName, "etcd");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "skiff-apiserver");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("server-key.pem"),
        server_key.serialize_pem(),
    )
    .unwrap();
    Pki {
        dir,
        ca_pem: ca_cert.pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_client_certificates() {
    let pki = make_pki();
    let tls_files = ServerTls {
        ca_file: pki.dir.path().join("ca.pem"),
        cert_file: pki.dir.path().join("server.pem"),
        key_file: pki.dir.path().join("server-key.pem"),
    };
    let Some(server) = EtcdServer::start_with("https_with_client_certificates", Some(tls_files))
    else {
        return;
    };
    assert!(server.endpoint().starts_with("https://"));
    let tls = EtcdTls {
        ca_pem: pki.ca_pem.clone().into_bytes(),
        cert_pem: pki.client_cert_pem.clone().into_bytes(),
        key_pem: pki.client_key_pem.clone().into_bytes(),
    };
    let store = connect(&server, Some(tls)).await;
    let kv = store.create("/tls/a", b"secret".to_vec()).await.unwrap();
    assert_eq!(store.get("/tls/a").await.unwrap(), Some(kv));

    // A client certificate from another CA is refused, and reported as such.
    let other = make_pki();
    let stranger = EtcdTls {
        ca_pem: pki.ca_pem.clone().into_bytes(),
        cert_pem: other.client_cert_pem.into_bytes(),
        key_pem: other.client_key_pem.into_bytes(),
    };
    assert!(matches!(
        EtcdStore::connect(&[server.endpoint()], Some(stranger)).await,
        Err(StoreError::Backend { .. })
    ));

    // Trusting another CA than the one that signed etcd's certificate: refused, with the
    // endpoint and the reason in the error.
    let wrong_ca = EtcdTls {
        ca_pem: other.ca_pem.into_bytes(),
        cert_pem: pki.client_cert_pem.clone().into_bytes(),
        key_pem: pki.client_key_pem.clone().into_bytes(),
    };
    match EtcdStore::connect(&[server.endpoint()], Some(wrong_ca)).await {
        Err(StoreError::Backend { path, message }) => {
            println!("wrong CA: {path}: {message}");
            assert!(path.contains(&server.endpoint()), "{path}: {message}");
            assert!(
                message.contains("certificate") && message.contains("the CA file must be"),
                "{path}: {message}"
            );
        }
        Err(other) => panic!("expected a backend error, got {other}"),
        Ok(_) => panic!("connected to an etcd whose certificate the CA did not sign"),
    }
    let _ = server.dir();
}

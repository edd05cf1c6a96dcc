//! Imports of OCI-layout and docker-archive tarballs made by skopeo.

mod common;

use std::process::Command;

use common::*;
use skiff_images::{Error, ImageStore};

fn skopeo(src: String, dst: String) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {src} {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn layout(t: &tempfile::TempDir) -> (std::path::PathBuf, Layer, Layer) {
    let base = busybox_layer();
    let extra = files_layer(&[("etc/motd", b"imported\n".to_vec())]);
    let dir = t.path().join("layout");
    write_oci_layout(&dir, "v1", &[&base, &extra], false);
    (dir, base, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_docker_archive_from_skopeo() {
    if !have_tools(&["skopeo"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (dir, _, _) = layout(&t);
    let archive = t.path().join("img.tar");
    skopeo(
        format!("oci:{}:v1", dir.display()),
        format!("docker-archive:{}:lab/busybox:v1", archive.display()),
    );
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let imgs = store.import(&archive, None).await.unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].reference, "docker.io/lab/busybox:v1");
    let dirs = store.layer_dirs(&imgs[0]);
    assert_eq!(dirs.len(), 2);
    assert!(dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read(dirs[1].join("etc/motd")).unwrap(),
        b"imported\n"
    );
    assert_eq!(
        store.config(&imgs[0]).unwrap().config.unwrap().cmd.unwrap(),
        vec!["/bin/sh"]
    );
    // Importing again is idempotent.
    let again = store.import(&archive, None).await.unwrap();
    assert_eq!(again[0].layers, imgs[0].layers);
    assert_eq!(store.list().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_oci_archive_and_gzipped_tarball() {
    if !have_tools(&["skopeo"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (dir, base, _) = layout(&t);
    let archive = t.path().join("img-oci.tar");
    skopeo(
        format!("oci:{}:v1", dir.display()),
        format!("oci-archive:{}:v1", archive.display()),
    );
    let store = ImageStore::open(t.path().join("store")).unwrap();
    // The archive only carries the tag: a name is needed.
    let e = store.import(&archive, None).await.unwrap_err();
    assert!(
        matches!(e, Error::Import { .. }) && e.to_string().contains("give a name"),
        "{e}"
    );
    let imgs = store
        .import(&archive, Some("registry.lab:5000/tools/busybox"))
        .await
        .unwrap();
    assert_eq!(imgs[0].reference, "registry.lab:5000/tools/busybox:v1");
    assert_eq!(imgs[0].layers[0].digest.to_string(), base.digest());
    assert!(store.layer_dirs(&imgs[0])[0].join("bin/busybox").is_file());

    // The layout directory tarred and gzipped by hand, with a full name annotation.
    let index = std::fs::read_to_string(dir.join("index.json")).unwrap();
    std::fs::write(
        dir.join("index.json"),
        index.replace(
            "\"org.opencontainers.image.ref.name\":\"v1\"",
            "\"io.containerd.image.name\":\"busybox:gz\"",
        ),
    )
    .unwrap();
    let tgz = t.path().join("layout.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let imgs = store.import(&tgz, None).await.unwrap();
    assert_eq!(imgs[0].reference, "docker.io/library/busybox:gz");
    assert_eq!(store.list().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_rejects_corrupt_archives() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path().join("store")).unwrap();
    // Not an image archive.
    let junk = t.path().join("junk.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, "hello.txt", &b"hi\n"[..]).unwrap();
    std::fs::write(&junk, b.into_inner().unwrap()).unwrap();
    let e = store.import(&junk, None).await.unwrap_err();
    assert!(e.to_string().contains("neither an OCI layout"), "{e}");
    // An OCI layout whose layer blob does not match its name.
    let base = busybox_layer();
    let dir = t.path().join("layout");
    write_oci_layout(&dir, "v1", &[&base], false);
    let blob = dir
        .join("blobs/sha256")
        .join(base.digest().trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let tarball = t.path().join("bad.tar");
    assert!(Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let e = store.import(&tarball, Some("x/y")).await.unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(std::fs::read_dir(t.path().join("store/blobs/sha256"))
        .unwrap()
        .all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(base.digest().trim_start_matches("sha256:"))));
    assert!(std::fs::read_dir(t.path().join("store/tmp"))
        .unwrap()
        .next()
        .is_none());
    assert!(store.list().is_empty());
}

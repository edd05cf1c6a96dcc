//! `skiffadm image load FILE`: a docker-archive or OCI-layout tarball into the node's image
//! store, under the name it carries. The running agent keeps the store's index in memory, so
//! while the import runs the supervisor holds the agent stopped (its pods keep running), and
//! the restarted agent reads the new index.

use std::path::Path;
use std::time::{Duration, Instant};

use super::layout::{Layout, Settings};
use super::supervisor::live_pid;
use super::LocalError;

/// Releases the agent when dropped, whatever happened to the import.
struct Hold<'a>(&'a Layout);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.agent_hold());
    }
}

async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Result<(), LocalError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        if Instant::now() > deadline {
            return Err(LocalError::Timeout {
                what: what.into(),
                secs,
                hint: "see the supervisor's log".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub async fn load(root: &Path, file: &Path) -> Result<(), LocalError> {
    let layout = Layout::new(root)?;
    super::require_root()?;
    if Settings::require(&layout)?.nodes.is_some() {
        return Err(LocalError::Invalid(
            "image load feeds the single node of `skiffadm up`; the nodes of a multi-node lab pull from a registry they reach (one on the underlay bridge, e.g. `ip netns exec skiff-lab docker-registry serve …`)".into(),
        ));
    }
    let meta = std::fs::metadata(file).map_err(|e| LocalError::io(file, e))?;
    if !meta.is_file() {
        return Err(LocalError::Invalid(format!(
            "{} is not a file (expected a docker-archive or OCI-layout tarball)",
            file.display()
        )));
    }
    let running = live_pid(&layout.supervisor_pid(), "local-supervise").is_some();
    let hold = if running {
        super::write_atomic(&layout.agent_hold(), b"image load\n", 0o644)?;
        let hold = Hold(&layout);
        wait_for("pausing the agent", 30, || {
            live_pid(&layout.child_pid("agent"), "skiff-agent").is_none()
        })
        .await?;
        Some(hold)
    } else {
        None
    };
    let store =
        skiff_images::ImageStore::open(layout.images_dir()).map_err(|e| LocalError::Image {
            path: layout.images_dir(),
            message: e.to_string(),
        })?;
    let images = store
        .import(file, None)
        .await
        .map_err(|e| LocalError::Image {
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
    drop(hold);
    for img in &images {
        println!("Loaded {} ({})", img.reference, img.config_digest);
    }
    if running {
        wait_for("restarting the agent", 30, || {
            live_pid(&layout.child_pid("agent"), "skiff-agent").is_some()
        })
        .await?;
    }
    Ok(())
}

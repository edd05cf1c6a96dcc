//! `skiff-agent images import|list|rm`: the node's image store from the command line, for
//! air-gapped labs (an OCI-layout or docker-archive tarball instead of a registry). A running
//! agent keeps the store's index in memory, so change the store while the agent is stopped
//! (`skiffadm image load` does this for local mode) — or the agent will not see the change.

use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Parser, Debug)]
#[command(name = "skiff-agent images", about = "The node's image store")]
pub struct ImagesArgs {
    /// The agent's state directory (the store is `<root-dir>/images`).
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    pub root_dir: PathBuf,
    #[command(subcommand)]
    pub command: ImagesCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImagesCmd {
    /// Import every image of an OCI-layout or docker-archive tarball.
    Import {
        file: PathBuf,
        /// Name for an image whose archive carries none (or only a tag).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images: reference, image ID, size of the blobs.
    List,
    /// Remove images (by reference or image ID); layers nobody else uses go too.
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ImagesCliError {
    #[error("image store {root}: {source}")]
    Store {
        root: PathBuf,
        source: skiff_images::Error,
    },
    #[error("importing {file}: {source}")]
    Import {
        file: PathBuf,
        source: skiff_images::Error,
    },
    #[error("removing {reference}: {source}")]
    Remove {
        reference: String,
        source: skiff_images::Error,
    },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

pub async fn run(args: ImagesArgs, out: &mut impl Write) -> Result<(), ImagesCliError> {
    let root = args.root_dir.join("images");
    let store = skiff_images::ImageStore::open(&root).map_err(|source| ImagesCliError::Store {
        root: root.clone(),
        source,
    })?;
    match args.command {
        ImagesCmd::Import { file, name } => {
            let images = store
                .import(&file, name.as_deref())
                .await
                .map_err(|source| ImagesCliError::Import {
                    file: file.clone(),
                    source,
                })?;
            for img in images {
                writeln!(out, "imported {} ({})", img.reference, img.config_digest)?;
            }
        }
        ImagesCmd::List => {
            writeln!(out, "{:<60} {:<12} SIZE", "IMAGE", "IMAGE ID")?;
            for img in store.list() {
                let size: u64 = img.manifest_size
                    + img.config_size
                    + img.layers.iter().map(|l| l.size).sum::<u64>();
                writeln!(
                    out,
                    "{:<60} {:<12} {}",
                    img.reference,
                    short(&img.config_digest.to_string()),
                    size
                )?;
            }
        }
        ImagesCmd::Rm { references } => {
            for reference in references {
                let img =
                    store
                        .remove(&reference)
                        .await
                        .map_err(|source| ImagesCliError::Remove {
                            reference: reference.clone(),
                            source,
                        })?;
                writeln!(out, "removed {}", img.reference)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(v: &[&str]) -> ImagesArgs {
        ImagesArgs::try_parse_from(v).unwrap()
    }

    #[tokio::test]
    async fn empty_store_lists_a_header_and_refuses_unknown_removals() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let mut out = Vec::new();
        run(args(&["images", "--root-dir", root, "list"]), &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("IMAGE"));
        let err = run(
            args(&["images", "--root-dir", root, "rm", "busybox:nope"]),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("busybox:nope"), "{err}");
        let err = run(
            args(&["images", "--root-dir", root, "import", "/nonexistent.tar"]),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent.tar"), "{err}");
    }

    #[test]
    fn rm_needs_a_reference() {
        assert!(ImagesArgs::try_parse_from(["images", "rm"]).is_err());
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }
}

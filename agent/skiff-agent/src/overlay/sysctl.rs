//! The kernel settings the overlay needs, set in the agent's network namespace.

use std::path::{Path, PathBuf};

use super::OverlayError;

const IP_FORWARD: &str = "net/ipv4/ip_forward";
const BRIDGE_NF: &str = "net/bridge/bridge-nf-call-iptables";

/// What [`ensure`] found and did, for the startup log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Settings that were off and were turned on.
    pub changed: Vec<&'static str>,
    /// Settings that could not apply, with why.
    pub missing: Vec<String>,
}

fn set_one(root: &Path, key: &'static str, report: &mut Report) -> Result<(), OverlayError> {
    let path: PathBuf = root.join(key);
    let err = |source| OverlayError::Sysctl {
        path: path.clone(),
        source,
    };
    let now = std::fs::read_to_string(&path).map_err(err)?;
    if now.trim() != "1" {
        std::fs::write(&path, "1\n").map_err(err)?;
        report.changed.push(key);
    }
    Ok(())
}

/// Turns on IPv4 forwarding, and iptables on bridged traffic when br_netfilter is loaded
/// (without it, pod-to-service traffic between pods on one bridge skips the proxy's DNAT).
/// `root` is `/proc/sys` outside tests.
pub fn ensure(root: &Path) -> Result<Report, OverlayError> {
    let mut report = Report::default();
    set_one(root, IP_FORWARD, &mut report)?;
    if root.join(BRIDGE_NF).exists() {
        set_one(root, BRIDGE_NF, &mut report)?;
    } else {
        report.missing.push(format!(
            "{}: br_netfilter is not loaded; services reached from a pod on the same node may \
             not work (modprobe br_netfilter)",
            BRIDGE_NF.replace('/', ".")
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_on_what_is_off_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        std::fs::write(dir.path().join(IP_FORWARD), "0\n").unwrap();
        let r = ensure(dir.path()).unwrap();
        assert_eq!(r.changed, vec![IP_FORWARD]);
        assert_eq!(r.missing.len(), 1);
        assert!(r.missing[0].contains("br_netfilter"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(IP_FORWARD)).unwrap(),
            "1\n"
        );

        std::fs::create_dir_all(dir.path().join("net/bridge")).unwrap();
        std::fs::write(dir.path().join(BRIDGE_NF), "1\n").unwrap();
        let r = ensure(dir.path()).unwrap();
        assert_eq!(r, Report::default());
    }

    #[test]
    fn unreadable_setting_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = ensure(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ip_forward"), "{e}");
    }
}

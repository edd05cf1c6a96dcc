//! iptables rules of the bridge plugin's `ipMasq`: one chain per attachment
//! (`SKIFF-MASQ-<hash>`) jumped to from nat POSTROUTING, applied with
//! `iptables-restore --noflush` so each change is one atomic call.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::cidr::Cidr;
use crate::spec::{code, CniError};

pub const CHAIN_PREFIX: &str = "SKIFF-MASQ-";

/// Host-side operations of the bridge plugin besides netlink.
pub trait Firewall {
    /// Masquerades traffic from `addrs` leaving their subnets.
    fn add_masq(
        &mut self,
        network: &str,
        container_id: &str,
        addrs: &[Cidr],
    ) -> Result<(), CniError>;
    /// Removes the attachment's rules; succeeds when there are none. `known`
    /// is the attachment's addresses when the caller has them (prevResult).
    fn del_masq(
        &mut self,
        network: &str,
        container_id: &str,
        known: Option<&[Cidr]>,
    ) -> Result<(), CniError>;
    /// Removes rules of attachments of `network` whose container is not in `keep`.
    fn gc_masq(&mut self, network: &str, keep: &HashSet<String>) -> Result<(), CniError>;
    /// Turns on IP forwarding for the families given (needed when the bridge is a gateway).
    fn enable_forwarding(&mut self, v4: bool, v6: bool) -> Result<(), CniError>;
}

/// FNV-1a, 64 bit: a stable short name for a chain.
fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Chain name for one attachment; at most 27 characters (iptables allows 28).
pub fn chain_name(network: &str, container_id: &str) -> String {
    let mut key = network.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(container_id.as_bytes());
    format!("{CHAIN_PREFIX}{:016X}", fnv64(&key))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(100)
        .collect()
}

/// The comment that marks an attachment's rules.
pub fn comment(network: &str, container_id: &str) -> String {
    format!(
        "skiff-cni name={} id={}",
        sanitize(network),
        sanitize(container_id)
    )
}

/// Renders the restore input that installs masquerading for `addrs` of one family.
pub fn render_add(network: &str, container_id: &str, addrs: &[Cidr], v6: bool) -> String {
    let chain = chain_name(network, container_id);
    let c = comment(network, container_id);
    let mcast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    let host = if v6 { 128 } else { 32 };
    let mut s = format!("*nat\n:{chain} - [0:0]\n");
    for a in addrs.iter().filter(|a| a.addr.is_ipv6() == v6) {
        s += &format!(
            "-A {chain} -d {} -m comment --comment \"{c}\" -j ACCEPT\n",
            a.masked()
        );
    }
    s += &format!("-A {chain} ! -d {mcast} -m comment --comment \"{c}\" -j MASQUERADE\n");
    for a in addrs.iter().filter(|a| a.addr.is_ipv6() == v6) {
        s += &format!(
            "-A POSTROUTING -s {}/{host} -m comment --comment \"{c}\" -j {chain}\n",
            a.addr
        );
    }
    s += "COMMIT\n";
    s
}

/// From `iptables-save -t nat` output, the restore input removing `chain` and
/// every POSTROUTING jump to it; None when nothing is there.
pub fn render_del(save: &str, chain: &str) -> Option<String> {
    let declared = save
        .lines()
        .any(|l| l == format!(":{chain} - [0:0]") || l.starts_with(&format!(":{chain} ")));
    let jump = format!("-j {chain}");
    let jumps: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A ") && (l.ends_with(&jump) || l.contains(&format!("{jump} "))))
        .filter(|l| !l.starts_with(&format!("-A {chain} ")))
        .collect();
    if !declared && jumps.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for j in jumps {
        s += &format!("-D {}\n", &j[3..]);
    }
    if declared {
        s += &format!("-F {chain}\n-X {chain}\n");
    }
    s += "COMMIT\n";
    Some(s)
}

/// The restore input removing exactly what [`render_add`] installed for `addrs`.
pub fn render_del_known(network: &str, container_id: &str, addrs: &[Cidr], v6: bool) -> String {
    let chain = chain_name(network, container_id);
    let c = comment(network, container_id);
    let host = if v6 { 128 } else { 32 };
    let mut s = String::from("*nat\n");
    for a in addrs.iter().filter(|a| a.addr.is_ipv6() == v6) {
        s += &format!(
            "-D POSTROUTING -s {}/{host} -m comment --comment \"{c}\" -j {chain}\n",
            a.addr
        );
    }
    s += &format!("-F {chain}\n-X {chain}\nCOMMIT\n");
    s
}

/// Attachments (container IDs) of `network` that have rules, read from save output.
pub fn attachments_in(save: &str, network: &str) -> Vec<String> {
    attachments_in_chain(save, "POSTROUTING", network)
}

/// Container IDs named by the comments of `network`'s rules in `chain`.
pub fn attachments_in_chain(save: &str, chain: &str, network: &str) -> Vec<String> {
    let marker = format!("\"skiff-cni name={} id=", sanitize(network));
    let prefix = format!("-A {chain} ");
    let mut out: Vec<String> = save
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let start = l.find(&marker)? + marker.len();
            let rest = &l[start..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The real implementation, calling iptables(-restore|-save) and writing /proc/sys.
#[derive(Default)]
pub struct Iptables;

fn tool(v6: bool, what: &str) -> String {
    format!("{}{what}", if v6 { "ip6tables" } else { "iptables" })
}

pub fn iptables_save(v6: bool) -> Result<String, CniError> {
    let bin = tool(v6, "-save");
    let out = Command::new(&bin)
        .args(["-t", "nat"])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| CniError::new(code::IPTABLES, format!("exec {bin}: {e}")))?;
    if !out.status.success() {
        return Err(CniError::new(
            code::IPTABLES,
            format!(
                "{bin} -t nat failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn iptables_restore(v6: bool, input: &str) -> Result<(), CniError> {
    let bin = tool(v6, "-restore");
    tracing::debug!(%bin, %input, "applying rules");
    let mut child = Command::new(&bin)
        .args(["-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(code::IPTABLES, format!("exec {bin}: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| CniError::new(code::IPTABLES, format!("write to {bin}: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IPTABLES, format!("wait {bin}: {e}")))?;
    if !out.status.success() {
        return Err(CniError::new(
            code::IPTABLES,
            format!(
                "{bin} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .with_details(input.to_string()));
    }
    Ok(())
}

impl Firewall for Iptables {
    fn add_masq(
        &mut self,
        network: &str,
        container_id: &str,
        addrs: &[Cidr],
    ) -> Result<(), CniError> {
        for v6 in [false, true] {
            if addrs.iter().any(|a| a.addr.is_ipv6() == v6) {
                iptables_restore(v6, &render_add(network, container_id, addrs, v6))?;
            }
        }
        Ok(())
    }

    fn del_masq(
        &mut self,
        network: &str,
        container_id: &str,
        known: Option<&[Cidr]>,
    ) -> Result<(), CniError> {
        let chain = chain_name(network, container_id);
        for fam_v6 in [false, true] {
            if let Some(addrs) = known {
                if !addrs.iter().any(|a| a.addr.is_ipv6() == fam_v6) {
                    continue;
                }
                // Fast path: delete exactly what ADD installed. It fails when
                // (some of) the rules are gone already; then look them up.
                if iptables_restore(
                    fam_v6,
                    &render_del_known(network, container_id, addrs, fam_v6),
                )
                .is_ok()
                {
                    continue;
                }
            }
            let save = iptables_save(fam_v6)?;
            if let Some(input) = render_del(&save, &chain) {
                iptables_restore(fam_v6, &input)?;
            }
        }
        Ok(())
    }

    fn gc_masq(&mut self, network: &str, keep: &HashSet<String>) -> Result<(), CniError> {
        for v6 in [false, true] {
            let save = iptables_save(v6)?;
            for id in attachments_in(&save, network) {
                if !keep.contains(&id) {
                    if let Some(input) = render_del(&save, &chain_name(network, &id)) {
                        iptables_restore(v6, &input)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn enable_forwarding(&mut self, v4: bool, v6: bool) -> Result<(), CniError> {
        let mut paths = Vec::new();
        if v4 {
            paths.push("/proc/sys/net/ipv4/ip_forward");
        }
        if v6 {
            paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
        }
        for p in paths {
            if std::fs::read_to_string(p)
                .map(|s| s.trim() == "1")
                .unwrap_or(false)
            {
                continue;
            }
            std::fs::write(p, "1")
                .map_err(|e| CniError::new(code::IO_FAILURE, format!("write {p}: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_short_and_stable() {
        let a = chain_name("net", "abc");
        assert!(a.len() <= 28, "{a}");
        assert_eq!(a, chain_name("net", "abc"));
        assert_ne!(a, chain_name("net", "abd"));
        assert_ne!(a, chain_name("neta", "bc"));
    }

    #[test]
    fn add_then_del_round_trip() {
        let addrs = vec!["10.244.1.5/24".parse().unwrap()];
        let add = render_add("pods", "c1", &addrs, false);
        let chain = chain_name("pods", "c1");
        assert!(add.contains(&format!("-A POSTROUTING -s 10.244.1.5/32 -m comment --comment \"skiff-cni name=pods id=c1\" -j {chain}")));
        assert!(add.contains("-d 10.244.1.0/24"));
        assert!(add.contains("! -d 224.0.0.0/4"));
        // What iptables-save would print after applying it.
        let save = format!(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:{chain} - [0:0]\n-A POSTROUTING -s 10.244.1.5/32 -m comment --comment \"skiff-cni name=pods id=c1\" -j {chain}\n-A {chain} -d 10.244.1.0/24 -m comment --comment \"x\" -j ACCEPT\nCOMMIT\n"
        );
        let del = render_del(&save, &chain).unwrap();
        assert!(del.contains(&format!("-D POSTROUTING -s 10.244.1.5/32 -m comment --comment \"skiff-cni name=pods id=c1\" -j {chain}\n")));
        assert!(del.contains(&format!("-F {chain}\n-X {chain}\n")));
        assert_eq!(render_del("*nat\nCOMMIT\n", &chain), None);
        let known = render_del_known("pods", "c1", &addrs, false);
        assert!(known.starts_with(&format!("*nat\n-D POSTROUTING -s 10.244.1.5/32 -m comment --comment \"skiff-cni name=pods id=c1\" -j {chain}\n")));
        assert_eq!(attachments_in(&save, "pods"), vec!["c1".to_string()]);
        assert!(attachments_in(&save, "other").is_empty());
    }

    #[test]
    fn comment_is_sanitized() {
        assert_eq!(comment("a\"b c", "x;y"), "skiff-cni name=abc id=xy");
    }
}

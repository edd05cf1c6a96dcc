//! The `portmap` plugin (chained after a main plugin): hostPort → pod port by
//! DNAT, in chains of its own.
//!
//! nat table layout:
//! - `SKIFF-HOSTPORTS`, jumped to from PREROUTING and OUTPUT for packets to a
//!   local address, holds one jump per attachment to
//! - `SKIFF-DN-<hash>`, the attachment's DNAT rules;
//! - `SKIFF-HP-MASQ`, jumped to from POSTROUTING, masquerades hairpin traffic
//!   (a pod reaching itself through its host port) and connections from
//!   127.0.0.0/8.
//!
//! Every per-attachment rule carries the comment `skiff-cni name=<net> id=<id>`,
//! which DEL and GC use to find them.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::firewall::{comment, iptables_restore, iptables_save};
use crate::spec::{code, typed_config, valid_attachments, CniError, CniResult, Command, Env};

pub const HOSTPORTS: &str = "SKIFF-HOSTPORTS";
pub const HP_MASQ: &str = "SKIFF-HP-MASQ";
const DN_PREFIX: &str = "SKIFF-DN-";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(rename = "hostIP", default)]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "tcp".to_string()
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(rename = "portMappings", default)]
    port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Clone, Deserialize)]
struct PortmapConf {
    name: String,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: RuntimeConfig,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Value>,
}

fn validate(m: &PortMapping) -> Result<(), CniError> {
    let bad = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
    if m.host_port == 0 || m.container_port == 0 {
        return Err(bad(format!(
            "invalid port mapping {m:?}: ports must be 1-65535"
        )));
    }
    match m.protocol.to_ascii_lowercase().as_str() {
        "tcp" | "udp" | "sctp" => {}
        p => return Err(bad(format!("invalid port mapping protocol {p:?}"))),
    }
    if let Some(ip) = &m.host_ip {
        if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
            return Err(bad(format!("invalid hostIP {ip:?}")));
        }
    }
    Ok(())
}

/// The per-attachment DNAT chain.
pub fn dnat_chain(network: &str, container_id: &str) -> String {
    let masq = crate::firewall::chain_name(network, container_id);
    // Same hash as the bridge's masquerade chain, other prefix.
    format!(
        "{DN_PREFIX}{}",
        &masq[crate::firewall::CHAIN_PREFIX.len()..]
    )
}

/// Restore input for one family: shared chains and jumps when `save` lacks
/// them, then the attachment's chain and rules.
pub fn render_add(
    save: &str,
    network: &str,
    container_id: &str,
    ips: &[IpAddr],
    maps: &[PortMapping],
    v6: bool,
) -> String {
    let chain = dnat_chain(network, container_id);
    let c = comment(network, container_id);
    let has_chain = |name: &str| save.lines().any(|l| l.starts_with(&format!(":{name} ")));
    let has_rule = |rule: &str| save.lines().any(|l| l == rule);
    let mut s = String::from("*nat\n");
    for shared in [HOSTPORTS, HP_MASQ] {
        if !has_chain(shared) {
            s += &format!(":{shared} - [0:0]\n");
        }
    }
    s += &format!(":{chain} - [0:0]\n");
    for hook in ["PREROUTING", "OUTPUT"] {
        let jump = format!("-A {hook} -m addrtype --dst-type LOCAL -j {HOSTPORTS}");
        if !has_rule(&jump) {
            s += &jump;
            s.push('\n');
        }
    }
    let masq_jump = format!("-A POSTROUTING -j {HP_MASQ}");
    if !has_rule(&masq_jump) {
        s += &masq_jump;
        s.push('\n');
    }
    s += &format!("-A {HOSTPORTS} -m comment --comment \"{c}\" -j {chain}\n");
    let host = if v6 { 128 } else { 32 };
    for ip in ips.iter().filter(|ip| ip.is_ipv6() == v6) {
        for m in maps {
            if let Some(hip) = m.host_ip.as_deref().filter(|h| !h.is_empty()) {
                if hip.contains(':') != v6 {
                    continue;
                }
            }
            let proto = m.protocol.to_ascii_lowercase();
            let dst = match m.host_ip.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => format!(" -d {h}/{host}"),
                None => String::new(),
            };
            let to = if v6 {
                format!("[{ip}]:{}", m.container_port)
            } else {
                format!("{ip}:{}", m.container_port)
            };
            s += &format!(
                "-A {chain}{dst} -p {proto} -m {proto} --dport {} -m comment --comment \"{c}\" -j DNAT --to-destination {to}\n",
                m.host_port
            );
            s += &format!(
                "-A {HP_MASQ} -s {ip}/{host} -d {ip}/{host} -p {proto} -m {proto} --dport {} -m comment --comment \"{c}\" -j MASQUERADE\n",
                m.container_port
            );
            if !v6 {
                s += &format!(
                    "-A {HP_MASQ} -s 127.0.0.0/8 -d {ip}/32 -p {proto} -m {proto} --dport {} -m comment --comment \"{c}\" -j MASQUERADE\n",
                    m.container_port
                );
            }
        }
    }
    s += "COMMIT\n";
    s
}

/// Restore input removing every rule of one attachment and its chain; None
/// when `save` has nothing of it.
pub fn render_del(save: &str, network: &str, container_id: &str) -> Option<String> {
    let chain = dnat_chain(network, container_id);
    let marker = format!("--comment \"{}\"", comment(network, container_id));
    let declared = save.lines().any(|l| l.starts_with(&format!(":{chain} ")));
    let rules: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(&marker))
        .filter(|l| !l.starts_with(&format!("-A {chain} ")))
        .collect();
    if !declared && rules.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for r in rules {
        s += &format!("-D {}\n", &r[3..]);
    }
    if declared {
        s += &format!("-F {chain}\n-X {chain}\n");
    }
    s += "COMMIT\n";
    Some(s)
}

fn prev_ips(prev: &CniResult) -> Vec<IpAddr> {
    let sandbox_idx: HashSet<usize> = prev
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| !i.sandbox.is_empty())
        .map(|(n, _)| n)
        .collect();
    prev.ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) => sandbox_idx.contains(&i) || sandbox_idx.is_empty(),
            None => true,
        })
        .map(|ip| ip.address.addr)
        .collect()
}

fn del_all(network: &str, container_id: &str) -> Result<(), CniError> {
    for v6 in [false, true] {
        let save = iptables_save(v6)?;
        if let Some(input) = render_del(&save, network, container_id) {
            iptables_restore(v6, &input)?;
        }
    }
    Ok(())
}

/// Runs one command; ADD returns prevResult as given.
pub fn run(env: &Env, conf_v: &Value) -> Result<Option<Value>, CniError> {
    let conf: PortmapConf = typed_config(conf_v)?;
    for m in &conf.runtime_config.port_mappings {
        validate(m)?;
    }
    let maps = &conf.runtime_config.port_mappings;
    match env.command {
        Command::Add => {
            let prev_v = conf.prev_result.as_ref().ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "portmap must be chained: prevResult missing",
                )
            })?;
            let prev = CniResult::from_value(prev_v)?;
            if maps.is_empty() {
                return Ok(Some(prev_v.clone()));
            }
            let ips = prev_ips(&prev);
            if ips.is_empty() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "portmap: prevResult has no container address",
                ));
            }
            for v6 in [false, true] {
                if ips.iter().any(|ip| ip.is_ipv6() == v6) {
                    let save = iptables_save(v6)?;
                    iptables_restore(
                        v6,
                        &render_add(&save, &conf.name, &env.container_id, &ips, maps, v6),
                    )?;
                }
            }
            Ok(Some(prev_v.clone()))
        }
        Command::Del => {
            del_all(&conf.name, &env.container_id)?;
            Ok(None)
        }
        Command::Check => {
            if maps.is_empty() {
                return Ok(None);
            }
            let chain = dnat_chain(&conf.name, &env.container_id);
            let save = iptables_save(false)? + &iptables_save(true)?;
            let dnats = save
                .lines()
                .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("-j DNAT"))
                .count();
            if dnats < maps.len() {
                return Err(CniError::new(
                    code::CHECK_MISMATCH,
                    format!(
                        "portmap: {chain} has {dnats} DNAT rules, {} port mappings expected",
                        maps.len()
                    ),
                ));
            }
            Ok(None)
        }
        Command::Gc => {
            let keep: HashSet<String> = valid_attachments(conf_v)?
                .into_iter()
                .map(|a| a.container_id)
                .collect();
            for v6 in [false, true] {
                let save = iptables_save(v6)?;
                for id in crate::firewall::attachments_in_chain(&save, HOSTPORTS, &conf.name) {
                    if !keep.contains(&id) {
                        if let Some(input) = render_del(&save, &conf.name, &id) {
                            iptables_restore(v6, &input)?;
                        }
                    }
                }
            }
            Ok(None)
        }
        Command::Status | Command::Version => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> Vec<PortMapping> {
        vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        }]
    }

    #[test]
    fn first_add_creates_shared_chains_later_ones_reuse_them() {
        let ip: IpAddr = "10.244.1.5".parse().unwrap();
        let first = render_add("*nat\nCOMMIT\n", "pods", "c1", &[ip], &maps(), false);
        assert!(first.contains(&format!(":{HOSTPORTS} - [0:0]")));
        assert!(first.contains(&format!(
            "-A PREROUTING -m addrtype --dst-type LOCAL -j {HOSTPORTS}"
        )));
        assert!(first.contains("-j DNAT --to-destination 10.244.1.5:80"));
        assert!(first.contains("--dport 8080"));
        // What iptables-save shows once the first is applied.
        let save = format!(
            "*nat\n:{HOSTPORTS} - [0:0]\n:{HP_MASQ} - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j {HOSTPORTS}\n-A OUTPUT -m addrtype --dst-type LOCAL -j {HOSTPORTS}\n-A POSTROUTING -j {HP_MASQ}\nCOMMIT\n"
        );
        let second = render_add(&save, "pods", "c2", &[ip], &maps(), false);
        assert!(
            !second.contains(&format!(":{HOSTPORTS} ")),
            "shared chain would be flushed"
        );
        assert!(!second.contains("-A PREROUTING"));
        assert!(second.contains(&format!(":{} - [0:0]", dnat_chain("pods", "c2"))));
    }

    #[test]
    fn del_removes_only_that_attachment() {
        let chain = dnat_chain("pods", "c1");
        let other = dnat_chain("pods", "c2");
        let save = format!(
            "*nat\n:{chain} - [0:0]\n:{other} - [0:0]\n-A {HOSTPORTS} -m comment --comment \"skiff-cni name=pods id=c1\" -j {chain}\n-A {HOSTPORTS} -m comment --comment \"skiff-cni name=pods id=c2\" -j {other}\n-A {HP_MASQ} -s 10.0.0.1/32 -m comment --comment \"skiff-cni name=pods id=c1\" -j MASQUERADE\n-A {chain} -p tcp -m comment --comment \"skiff-cni name=pods id=c1\" -j DNAT\nCOMMIT\n"
        );
        let del = render_del(&save, "pods", "c1").unwrap();
        assert_eq!(del.matches("-D ").count(), 2);
        assert!(!del.contains("id=c2"));
        assert!(del.contains(&format!("-X {chain}")));
        assert_eq!(render_del("*nat\nCOMMIT\n", "pods", "c1"), None);
    }

    #[test]
    fn mappings_are_validated() {
        let mut m = maps()[0].clone();
        m.protocol = "icmp".into();
        assert_eq!(validate(&m).unwrap_err().code, code::INVALID_CONFIG);
        let mut m = maps()[0].clone();
        m.host_port = 0;
        assert!(validate(&m).is_err());
        let mut m = maps()[0].clone();
        m.host_ip = Some("nope".into());
        assert!(validate(&m).is_err());
    }

    #[test]
    fn host_ip_and_ipv6() {
        let v6: IpAddr = "fd00::5".parse().unwrap();
        let mut m = maps();
        m[0].host_ip = Some("fd00::1".into());
        let r = render_add("", "pods", "c1", &[v6], &m, true);
        assert!(r.contains("-d fd00::1/128"));
        assert!(r.contains("--to-destination [fd00::5]:80"));
        // A v4 hostIP is skipped for the v6 family.
        m[0].host_ip = Some("10.0.0.1".into());
        assert!(!render_add("", "pods", "c1", &[v6], &m, true).contains("DNAT"));
    }
}

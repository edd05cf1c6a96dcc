//! The `loopback` plugin: brings `lo` up in the container's namespace.

use std::path::Path;

use crate::cidr::Cidr;
use crate::netlink::{NetOps, NetlinkError};
use crate::netns;
use crate::spec::{code, CniError, CniResult, Command, Env, Interface, IpConfig};

fn nl(e: NetlinkError) -> CniError {
    CniError::new(code::NETLINK, e.to_string())
}

/// ADD/DEL/CHECK against the namespace's netlink.
pub fn apply(env: &Env, ns: &mut dyn NetOps) -> Result<Option<CniResult>, CniError> {
    let lo = ns
        .link_by_name("lo")
        .map_err(nl)?
        .ok_or_else(|| CniError::new(code::NETLINK, format!("no lo in {}", env.netns)))?;
    match env.command {
        Command::Add => {
            ns.set_up(lo.index, true).map_err(nl)?;
            let addrs = ns.addrs(lo.index).map_err(nl)?;
            let ips = addrs
                .into_iter()
                .map(|a: Cidr| IpConfig {
                    interface: Some(0),
                    address: a,
                    gateway: None,
                })
                .collect();
            Ok(Some(CniResult {
                cni_version: String::new(),
                interfaces: vec![Interface {
                    name: "lo".into(),
                    mac: "00:00:00:00:00:00".into(),
                    mtu: None,
                    sandbox: env.netns.clone(),
                }],
                ips,
                ..Default::default()
            }))
        }
        Command::Del => {
            ns.set_up(lo.index, false).map_err(nl)?;
            Ok(None)
        }
        Command::Check => {
            if !lo.up {
                return Err(CniError::new(code::CHECK_MISMATCH, "lo is down"));
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

pub fn run(env: &Env) -> Result<Option<CniResult>, CniError> {
    match env.command {
        Command::Add | Command::Check | Command::Del => {}
        // Nothing to collect or report: loopback holds no state.
        _ => return Ok(None),
    }
    let path = Path::new(&env.netns);
    let ns = match netns::open(path) {
        Ok(ns) => ns,
        Err(netns::NetnsError::Open { source, .. })
            if env.command == Command::Del
                && (env.netns.is_empty() || source.kind() == std::io::ErrorKind::NotFound) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(CniError::new(code::NETNS, e.to_string())),
    };
    let mut nl =
        netns::netlink_in(&ns, path).map_err(|e| CniError::new(code::NETNS, e.to_string()))?;
    apply(env, &mut nl)
}

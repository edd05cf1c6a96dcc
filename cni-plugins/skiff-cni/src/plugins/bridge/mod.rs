//! The `bridge` plugin: a Linux bridge on the host, one veth pair per
//! attachment with its container end in the pod's namespace, addresses from
//! the IPAM plugin.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::cidr::Cidr;
use crate::firewall::{Firewall, Iptables};
use crate::ipam::delegate::{self, Ipam};
use crate::netlink::{Link, NetOps, Netlink, NetlinkError};
use crate::netns;
mod teardown;

use teardown::defer_delete;
pub use teardown::{reap_link, Reaper, SpawnReaper, REAP_ARG};

use crate::spec::{
    code, typed_config, valid_attachments, CniError, CniResult, Command, Dns, Env, Interface, Route,
};

#[derive(Debug, Clone, Deserialize)]
pub struct IpamRef {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BridgeConf {
    pub name: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(rename = "isGateway", default)]
    pub is_gateway: bool,
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gateway: bool,
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: bool,
    #[serde(rename = "promiscMode", default)]
    pub promisc_mode: bool,
    /// Skiff extension: delete the veth within DEL instead of handing the
    /// kernel's slow part of it to a detached helper.
    #[serde(rename = "syncTeardown", default)]
    pub sync_teardown: bool,
    #[serde(default)]
    pub ipam: Option<IpamRef>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

impl BridgeConf {
    pub fn parse(v: &Value) -> Result<BridgeConf, CniError> {
        let mut c: BridgeConf = typed_config(v)?;
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        crate::spec::validate_ifname(&c.bridge).map_err(|_| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid bridge name {:?}", c.bridge),
            )
        })?;
        if c.hairpin_mode && c.promisc_mode {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        if let Some(mtu) = c.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("invalid mtu {mtu}"),
                ));
            }
        }
        Ok(c)
    }

    fn ipam_type(&self) -> Result<&str, CniError> {
        match &self.ipam {
            Some(i) if !i.kind.is_empty() => Ok(&i.kind),
            _ => Err(CniError::new(
                code::INVALID_CONFIG,
                "bridge: ipam.type is required",
            )),
        }
    }
}

fn nl(e: NetlinkError) -> CniError {
    CniError::new(code::NETLINK, e.to_string())
}

fn ns_err(e: netns::NetnsError) -> CniError {
    CniError::new(code::NETNS, e.to_string())
}

/// Finds or creates the bridge and brings it up.
pub fn ensure_bridge(host: &mut dyn NetOps, conf: &BridgeConf) -> Result<Link, CniError> {
    let existing = host.link_by_name(&conf.bridge).map_err(nl)?;
    let link = match existing {
        Some(l) => l,
        None => {
            match host.add_bridge(&conf.bridge, conf.mtu) {
                Ok(()) => {}
                // Another ADD created it meanwhile.
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(e)),
            }
            host.link_by_name(&conf.bridge)
                .map_err(nl)?
                .ok_or_else(|| {
                    CniError::new(
                        code::NETLINK,
                        format!("bridge {} vanished after creation", conf.bridge),
                    )
                })?
        }
    };
    if !link.is_bridge {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{} already exists but is not a bridge", conf.bridge),
        ));
    }
    if conf.promisc_mode {
        host.set_promisc(link.index).map_err(nl)?;
    }
    if !link.up {
        host.set_up(link.index, true).map_err(nl)?;
    }
    Ok(link)
}

fn random_veth_name() -> String {
    format!("veth{:08x}", rand::random::<u32>())
}

/// The host's and the container's ends of a new veth pair.
struct Pair {
    host: Link,
    cont: Link,
}

fn create_pair(
    host: &mut dyn NetOps,
    cont: &mut dyn NetOps,
    cont_fd: i32,
    conf: &BridgeConf,
    br: &Link,
    ifname: &str,
) -> Result<Pair, CniError> {
    if cont.link_by_name(ifname).map_err(nl)?.is_some() {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!("container interface {ifname} already exists"),
        ));
    }
    let mut host_name = random_veth_name();
    let mut attempts = 0;
    loop {
        match host.add_veth(
            &host_name,
            ifname,
            cont_fd,
            conf.mtu.or(Some(br.mtu)).filter(|m| *m > 0),
        ) {
            Ok(()) => break,
            Err(e) if e.errno() == Some(libc::EEXIST) && attempts < 3 => {
                attempts += 1;
                host_name = random_veth_name();
            }
            Err(e) => return Err(nl(e)),
        }
    }
    let cont_link = cont.link_by_name(ifname).map_err(nl)?.ok_or_else(|| {
        CniError::new(
            code::NETLINK,
            format!("{ifname} missing in container after veth creation"),
        )
    })?;
    let wire = (|| -> Result<Link, NetlinkError> {
        let h = host
            .link_by_name(&host_name)?
            .ok_or_else(|| NetlinkError::Decode {
                op: "find host veth",
                msg: format!("{host_name} not found"),
            })?;
        host.set_master(h.index, br.index)?;
        if conf.hairpin_mode {
            host.set_hairpin(h.index, true)?;
        }
        host.set_up(h.index, true)?;
        Ok(h)
    })();
    match wire {
        Ok(h) => Ok(Pair {
            host: h,
            cont: cont_link,
        }),
        Err(e) => {
            let _ = cont.del_link(cont_link.index);
            Err(nl(e))
        }
    }
}

fn gateway_for(ips: &[crate::spec::IpConfig], v6: bool) -> Option<IpAddr> {
    ips.iter()
        .filter(|i| i.address.addr.is_ipv6() == v6)
        .find_map(|i| i.gateway)
}

fn default_dst(v6: bool) -> Cidr {
    if v6 {
        "::/0".parse().expect("valid")
    } else {
        "0.0.0.0/0".parse().expect("valid")
    }
}

/// Configures addresses and routes inside the container; returns the routes
/// for the result.
fn configure_container(
    cont: &mut dyn NetOps,
    link: &Link,
    conf: &BridgeConf,
    ipam: &CniResult,
) -> Result<Vec<Route>, CniError> {
    cont.set_up(link.index, true).map_err(nl)?;
    for ip in &ipam.ips {
        cont.add_addr(link.index, ip.address).map_err(nl)?;
    }
    let mut routes = ipam.routes.clone();
    if conf.is_default_gateway {
        for v6 in [false, true] {
            let Some(gw) = gateway_for(&ipam.ips, v6) else {
                continue;
            };
            let dst = default_dst(v6);
            if !routes.iter().any(|r| r.dst.masked() == dst) {
                routes.push(Route {
                    dst,
                    gw: Some(gw),
                    mtu: None,
                    priority: None,
                });
            }
        }
    }
    let mut seen = HashSet::new();
    for r in &routes {
        if !seen.insert(r.dst.masked()) {
            continue;
        }
        let gw =
            r.gw.or_else(|| gateway_for(&ipam.ips, r.dst.addr.is_ipv6()));
        match cont.add_route(link.index, r.dst, gw) {
            Ok(()) => {}
            // The kernel already made this one (the subnet route of an address).
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(nl(e)),
        }
    }
    Ok(routes)
}

/// Puts the gateway addresses on the bridge.
fn configure_gateway(
    host: &mut dyn NetOps,
    fw: &mut dyn Firewall,
    br: &Link,
    ipam: &CniResult,
) -> Result<(), CniError> {
    let present = host.addrs(br.index).map_err(nl)?;
    let (mut v4, mut v6) = (false, false);
    for ip in &ipam.ips {
        let Some(gw) = ip.gateway else {
            continue;
        };
        let want = Cidr {
            addr: gw,
            prefix: ip.address.prefix,
        };
        if gw.is_ipv6() {
            v6 = true;
        } else {
            v4 = true;
        }
        if present.iter().any(|p| p.addr == gw) {
            continue;
        }
        match host.add_addr(br.index, want) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(nl(e)),
        }
    }
    fw.enable_forwarding(v4, v6)
}

/// ADD with every dependency passed in.
#[allow(clippy::too_many_arguments)]
pub fn add(
    env: &Env,
    conf: &BridgeConf,
    host: &mut dyn NetOps,
    cont: &mut dyn NetOps,
    cont_fd: i32,
    ipam: &mut dyn Ipam,
    fw: &mut dyn Firewall,
) -> Result<CniResult, CniError> {
    conf.ipam_type()?;
    let br = ensure_bridge(host, conf)?;
    let pair = create_pair(host, cont, cont_fd, conf, &br, &env.ifname)?;
    tracing::debug!(bridge = %br.name, host_veth = %pair.host.name, ifname = %env.ifname, "veth pair created");
    let undo_link = |cont: &mut dyn NetOps| {
        if let Err(e) = cont.del_link(pair.cont.index) {
            tracing::warn!(error = %e, "cleanup: deleting container veth failed");
        }
    };
    let ipam_res = match ipam.add() {
        Ok(r) => r,
        Err(e) => {
            undo_link(cont);
            return Err(e);
        }
    };
    tracing::debug!(ips = ?ipam_res.ips, "IPAM answered");
    let rest = (|| -> Result<CniResult, CniError> {
        if ipam_res.ips.is_empty() {
            return Err(CniError::new(
                code::INTERNAL,
                "IPAM plugin returned no IP addresses",
            ));
        }
        let routes = configure_container(cont, &pair.cont, conf, &ipam_res)?;
        if conf.is_gateway {
            configure_gateway(host, fw, &br, &ipam_res)?;
        }
        if conf.ip_masq {
            let addrs: Vec<Cidr> = ipam_res.ips.iter().map(|i| i.address).collect();
            fw.add_masq(&conf.name, &env.container_id, &addrs)?;
        }
        // The bridge takes a port's MAC when it has none of its own: read it now.
        let br_now = host
            .link_by_name(&conf.bridge)
            .map_err(nl)?
            .unwrap_or(br.clone());
        let mut ips = ipam_res.ips.clone();
        for ip in &mut ips {
            ip.interface = Some(2);
        }
        Ok(CniResult {
            cni_version: String::new(),
            interfaces: vec![
                Interface {
                    name: br_now.name.clone(),
                    mac: br_now.mac.clone(),
                    ..Default::default()
                },
                Interface {
                    name: pair.host.name.clone(),
                    mac: pair.host.mac.clone(),
                    ..Default::default()
                },
                Interface {
                    name: env.ifname.clone(),
                    mac: pair.cont.mac.clone(),
                    mtu: Some(pair.cont.mtu),
                    sandbox: env.netns.clone(),
                },
            ],
            ips,
            routes,
            dns: if conf.dns.is_empty() {
                ipam_res.dns.clone()
            } else {
                conf.dns.clone()
            },
        })
    })();
    match rest {
        Ok(r) => Ok(r),
        Err(e) => {
            if conf.ip_masq {
                let addrs: Vec<Cidr> = ipam_res.ips.iter().map(|i| i.address).collect();
                let _ = fw.del_masq(&conf.name, &env.container_id, Some(&addrs));
            }
            if let Err(de) = ipam.del() {
                tracing::warn!(error = %de, "cleanup: IPAM DEL failed");
            }
            undo_link(cont);
            Err(e)
        }
    }
}

/// The addresses a prevResult names, if it names any.
fn prev_addrs(prev: Option<&Value>) -> Option<Vec<Cidr>> {
    let r = CniResult::from_value(prev?).ok()?;
    let addrs: Vec<Cidr> = r.ips.iter().map(|i| i.address).collect();
    (!addrs.is_empty()).then_some(addrs)
}

/// DEL: releases the address, removes the veth when the namespace is still
/// there, removes the masquerade rules. Missing pieces are not errors.
pub fn del(
    env: &Env,
    conf: &BridgeConf,
    host: &mut dyn NetOps,
    cont: Option<&mut dyn NetOps>,
    ipam: &mut dyn Ipam,
    fw: &mut dyn Firewall,
    reaper: &mut dyn Reaper,
) -> Result<(), CniError> {
    // Every step runs even when an earlier one failed, so one stuck piece
    // does not keep the others allocated; the first error is reported, with
    // the rest in its details.
    let mut errors: Vec<CniError> = Vec::new();
    if conf.ipam.is_some() {
        if let Err(e) = ipam.del() {
            errors.push(e);
        }
    }
    if let Some(cont) = cont {
        if let Err(e) = del_link(env, conf, host, cont, reaper) {
            errors.push(e);
        }
    }
    if let Err(e) = del_rules(env, conf, fw) {
        errors.push(e);
    }
    let mut it = errors.into_iter();
    match it.next() {
        None => Ok(()),
        Some(first) => {
            let rest: Vec<String> = it.map(|e| e.to_string()).collect();
            if rest.is_empty() {
                Err(first)
            } else {
                let details = if first.details.is_empty() {
                    format!("also: {}", rest.join("; "))
                } else {
                    format!("{}; also: {}", first.details, rest.join("; "))
                };
                Err(first.with_details(details))
            }
        }
    }
}

fn del_link(
    env: &Env,
    conf: &BridgeConf,
    host: &mut dyn NetOps,
    cont: &mut dyn NetOps,
    reaper: &mut dyn Reaper,
) -> Result<(), CniError> {
    let Some(l) = cont.link_by_name(&env.ifname).map_err(nl)? else {
        return Ok(());
    };
    let bridge = host
        .link_by_name(&conf.bridge)
        .map_err(nl)?
        .map(|b| b.index);
    if !conf.sync_teardown && defer_delete(cont, host, &l, bridge, reaper) {
        tracing::debug!(ifname = %env.ifname, "container interface parked, pair deletion deferred");
        return Ok(());
    }
    match cont.del_link(l.index) {
        Err(e) if e.errno() != Some(libc::ENODEV) => Err(nl(e)),
        _ => Ok(()),
    }
}

fn del_rules(env: &Env, conf: &BridgeConf, fw: &mut dyn Firewall) -> Result<(), CniError> {
    if conf.ip_masq {
        let known = prev_addrs(conf.prev_result.as_ref());
        fw.del_masq(&conf.name, &env.container_id, known.as_deref())?;
    }
    Ok(())
}

/// CHECK: the bridge, the container interface, its addresses and routes are as
/// prevResult says.
pub fn check(
    env: &Env,
    conf: &BridgeConf,
    host: &mut dyn NetOps,
    cont: &mut dyn NetOps,
    ipam: &mut dyn Ipam,
) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "bridge CHECK: required prevResult missing",
        )
    })?;
    let prev = CniResult::from_value(prev)?;
    ipam.check()?;
    let mismatch = |m: String| CniError::new(code::CHECK_MISMATCH, m);
    let br = host
        .link_by_name(&conf.bridge)
        .map_err(nl)?
        .ok_or_else(|| mismatch(format!("bridge {} not found", conf.bridge)))?;
    if !br.is_bridge {
        return Err(mismatch(format!("{} is not a bridge", conf.bridge)));
    }
    let link = cont.link_by_name(&env.ifname).map_err(nl)?.ok_or_else(|| {
        mismatch(format!(
            "interface {} not found in {}",
            env.ifname, env.netns
        ))
    })?;
    let cont_idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && !i.sandbox.is_empty());
    if let Some(i) = cont_idx {
        let want = &prev.interfaces[i].mac;
        if !want.is_empty() && !want.eq_ignore_ascii_case(&link.mac) {
            return Err(mismatch(format!(
                "interface {} has MAC {}, expected {want}",
                env.ifname, link.mac
            )));
        }
    }
    let have = cont.addrs(link.index).map_err(nl)?;
    for ip in &prev.ips {
        if ip.interface.is_some() && ip.interface != cont_idx {
            continue;
        }
        if !have.contains(&ip.address) {
            return Err(mismatch(format!(
                "address {} not found on interface {}",
                ip.address, env.ifname
            )));
        }
    }
    let routes = cont.routes(link.index).map_err(nl)?;
    for r in &prev.routes {
        if !routes.iter().any(|x| x.dst.masked() == r.dst.masked()) {
            return Err(mismatch(format!(
                "route to {} not found on {}",
                r.dst, env.ifname
            )));
        }
    }
    Ok(())
}

/// Entry point with the real netlink, IPAM binary and iptables.
pub fn run(env: &Env, conf_v: &Value, raw: &[u8]) -> Result<Option<CniResult>, CniError> {
    let conf = BridgeConf::parse(conf_v)?;
    let ipam_type = conf
        .ipam
        .as_ref()
        .map(|i| i.kind.clone())
        .unwrap_or_default();
    let mut ipam = delegate::for_plugin(&ipam_type, env, conf_v, raw);
    let ipam = ipam.as_mut();
    let mut fw = Iptables;
    match env.command {
        Command::Add => {
            conf.ipam_type()?;
            let path = Path::new(&env.netns);
            let ns = netns::open(path).map_err(ns_err)?;
            let mut cont = netns::netlink_in(&ns, path).map_err(ns_err)?;
            let mut host = Netlink::open().map_err(nl)?;
            add(
                env,
                &conf,
                &mut host,
                &mut cont,
                ns.as_raw_fd(),
                ipam,
                &mut fw,
            )
            .map(Some)
        }
        Command::Del => {
            let path = Path::new(&env.netns);
            let mut cont = None;
            if !env.netns.is_empty() {
                match netns::open(path) {
                    Ok(ns) => cont = Some(netns::netlink_in(&ns, path).map_err(ns_err)?),
                    Err(netns::NetnsError::Open { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ns_err(e)),
                }
            }
            let mut host = Netlink::open().map_err(nl)?;
            del(
                env,
                &conf,
                &mut host,
                cont.as_mut().map(|c| c as &mut dyn NetOps),
                ipam,
                &mut fw,
                &mut SpawnReaper,
            )?;
            Ok(None)
        }
        Command::Check => {
            conf.ipam_type()?;
            let path = Path::new(&env.netns);
            let ns = netns::open(path).map_err(ns_err)?;
            let mut cont = netns::netlink_in(&ns, path).map_err(ns_err)?;
            let mut host = Netlink::open().map_err(nl)?;
            check(env, &conf, &mut host, &mut cont, ipam)?;
            Ok(None)
        }
        Command::Status => {
            conf.ipam_type()?;
            ipam.status()?;
            Ok(None)
        }
        Command::Gc => {
            if conf.ipam.is_some() {
                ipam.gc()?;
            }
            if conf.ip_masq {
                let keep: HashSet<String> = valid_attachments(conf_v)?
                    .into_iter()
                    .map(|a| a.container_id)
                    .collect();
                fw.gc_masq(&conf.name, &keep)?;
            }
            Ok(None)
        }
        Command::Version => Ok(None),
    }
}

#[cfg(test)]
mod tests;

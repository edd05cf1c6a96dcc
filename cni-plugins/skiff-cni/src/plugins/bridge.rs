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

/// Deletes a host link after this process has answered.
pub trait Reaper {
    fn delete_later(&mut self, index: u32, name: &str) -> Result<(), CniError>;
}

/// Argument that makes the binary act as the deferred deleter.
pub const REAP_ARG: &str = "--skiff-reap-link";

/// Spawns this binary, detached in its own process group, to delete the link.
pub struct SpawnReaper;

impl Reaper for SpawnReaper {
    fn delete_later(&mut self, index: u32, name: &str) -> Result<(), CniError> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()
            .map_err(|e| CniError::new(code::INTERNAL, format!("current_exe: {e}")))?;
        std::process::Command::new(&exe)
            .args([REAP_ARG, &index.to_string(), name])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| CniError::new(code::INTERNAL, format!("spawn {}: {e}", exe.display())))?;
        Ok(())
    }
}

/// The deferred deleter's work: delete `name` if it still has `index`.
pub fn reap_link(index: u32, name: &str) -> Result<(), CniError> {
    let mut h = Netlink::open().map_err(nl)?;
    match h.link_by_index(index).map_err(nl)? {
        Some(l) if l.name == name => match h.del_link(index) {
            Err(e) if e.errno() != Some(libc::ENODEV) => Err(nl(e)),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Takes the container's interface out of service at once (down, renamed so
/// the name is free for a new ADD) and leaves the deletion of the pair,
/// which the kernel makes slow, to the reaper. False when that cannot be done
/// safely; the caller then deletes synchronously.
fn defer_delete(
    cont: &mut dyn NetOps,
    host: &mut dyn NetOps,
    link: &Link,
    bridge: Option<u32>,
    reaper: &mut dyn Reaper,
) -> bool {
    let Some(peer) = link.peer_index else {
        return false;
    };
    let Ok(Some(h)) = host.link_by_index(peer) else {
        return false;
    };
    // Only a veth whose other end is this very interface, on our bridge.
    if h.peer_index != Some(link.index) || bridge.is_none() || h.master != bridge {
        return false;
    }
    if cont.set_up(link.index, false).is_err() {
        return false;
    }
    let parked = format!("skdel{:08x}", rand::random::<u32>());
    if cont.rename(link.index, &parked).is_err() {
        return false;
    }
    reaper.delete_later(h.index, &h.name).is_ok()
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
mod tests {
    use super::*;
    use crate::netlink::InstalledRoute;
    use crate::spec::IpConfig;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    /// veth peers created by the host fake, to appear in the container fake,
    /// and the (host index → container index) pairs once they have.
    #[derive(Default)]
    struct Shared {
        pending: Vec<(String, Option<u32>, u32)>,
        pairs: HashMap<u32, u32>,
    }
    type Pending = Rc<RefCell<Shared>>;

    /// An in-memory namespace: links, addresses and routes.
    #[derive(Default)]
    struct FakeNs {
        links: HashMap<String, Link>,
        addrs: HashMap<u32, Vec<Cidr>>,
        routes: HashMap<u32, Vec<InstalledRoute>>,
        next: u32,
        hairpin: HashSet<u32>,
        fail_route: bool,
        pending: Pending,
        /// True for the container side: it absorbs pending peers.
        container: bool,
    }

    impl FakeNs {
        fn new_link(&mut self, name: &str, bridge: bool, mtu: u32) -> Link {
            self.next += 1;
            let l = Link {
                index: self.next + 1,
                name: name.into(),
                mac: format!("02:00:00:00:00:{:02x}", self.next),
                mtu,
                up: false,
                is_bridge: bridge,
                master: None,
                peer_index: None,
            };
            self.links.insert(name.into(), l.clone());
            l
        }
        fn absorb(&mut self) {
            if !self.container {
                return;
            }
            let peers: Vec<_> = self.pending.borrow_mut().pending.drain(..).collect();
            for (name, mtu, host_idx) in peers {
                let l = self.new_link(&name, false, mtu.unwrap_or(1500));
                self.links.get_mut(&name).unwrap().peer_index = Some(host_idx);
                self.pending.borrow_mut().pairs.insert(host_idx, l.index);
            }
        }
        fn with_peer(&self, mut l: Link) -> Link {
            if !self.container {
                if let Some(c) = self.pending.borrow().pairs.get(&l.index) {
                    l.peer_index = Some(*c);
                }
            }
            l
        }
        fn by_index(&mut self, i: u32) -> Result<&mut Link, NetlinkError> {
            self.links
                .values_mut()
                .find(|l| l.index == i)
                .ok_or(errno(libc::ENODEV))
        }
    }

    fn errno(e: i32) -> NetlinkError {
        NetlinkError::Request {
            op: "fake",
            target: String::new(),
            source: std::io::Error::from_raw_os_error(e),
        }
    }

    impl NetOps for FakeNs {
        fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
            self.absorb();
            Ok(self.links.get(name).cloned().map(|l| self.with_peer(l)))
        }
        fn link_by_index(&mut self, i: u32) -> Result<Option<Link>, NetlinkError> {
            self.absorb();
            let l = self.links.values().find(|l| l.index == i).cloned();
            Ok(l.map(|l| self.with_peer(l)))
        }
        fn rename(&mut self, i: u32, name: &str) -> Result<(), NetlinkError> {
            let old = self.by_index(i)?.name.clone();
            let mut l = self.links.remove(&old).unwrap();
            l.name = name.into();
            self.links.insert(name.into(), l);
            Ok(())
        }
        fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<(), NetlinkError> {
            if self.links.contains_key(name) {
                return Err(errno(libc::EEXIST));
            }
            self.new_link(name, true, mtu.unwrap_or(1500));
            Ok(())
        }
        fn add_veth(
            &mut self,
            host: &str,
            peer: &str,
            _fd: i32,
            mtu: Option<u32>,
        ) -> Result<(), NetlinkError> {
            let h = self.new_link(host, false, mtu.unwrap_or(1500));
            self.pending
                .borrow_mut()
                .pending
                .push((peer.into(), mtu, h.index));
            Ok(())
        }
        fn set_up(&mut self, i: u32, up: bool) -> Result<(), NetlinkError> {
            self.by_index(i)?.up = up;
            Ok(())
        }
        fn set_promisc(&mut self, i: u32) -> Result<(), NetlinkError> {
            self.by_index(i).map(drop)
        }
        fn set_master(&mut self, i: u32, m: u32) -> Result<(), NetlinkError> {
            self.by_index(i)?.master = Some(m);
            Ok(())
        }
        fn set_hairpin(&mut self, i: u32, on: bool) -> Result<(), NetlinkError> {
            if on {
                self.hairpin.insert(i);
            }
            Ok(())
        }
        fn del_link(&mut self, i: u32) -> Result<(), NetlinkError> {
            let name = self.by_index(i)?.name.clone();
            self.links.remove(&name);
            self.addrs.remove(&i);
            self.routes.remove(&i);
            Ok(())
        }
        fn addrs(&mut self, i: u32) -> Result<Vec<Cidr>, NetlinkError> {
            Ok(self.addrs.get(&i).cloned().unwrap_or_default())
        }
        fn add_addr(&mut self, i: u32, a: Cidr) -> Result<(), NetlinkError> {
            let v = self.addrs.entry(i).or_default();
            if v.contains(&a) {
                return Err(errno(libc::EEXIST));
            }
            v.push(a);
            Ok(())
        }
        fn routes(&mut self, i: u32) -> Result<Vec<InstalledRoute>, NetlinkError> {
            Ok(self.routes.get(&i).cloned().unwrap_or_default())
        }
        fn add_route(&mut self, i: u32, dst: Cidr, gw: Option<IpAddr>) -> Result<(), NetlinkError> {
            if self.fail_route {
                return Err(errno(libc::ENETUNREACH));
            }
            self.routes
                .entry(i)
                .or_default()
                .push(InstalledRoute { dst, gw });
            Ok(())
        }
    }

    /// A fake IPAM handing out one fixed address.
    #[derive(Default)]
    struct FakeIpam {
        allocated: bool,
        dels: u32,
        fail: Option<u32>,
    }

    impl Ipam for FakeIpam {
        fn add(&mut self) -> Result<CniResult, CniError> {
            if let Some(c) = self.fail {
                return Err(CniError::new(c, "fake ipam failure"));
            }
            self.allocated = true;
            Ok(CniResult {
                ips: vec![IpConfig {
                    interface: None,
                    address: "10.244.0.5/24".parse().unwrap(),
                    gateway: Some("10.244.0.1".parse().unwrap()),
                }],
                routes: vec![Route {
                    dst: "10.96.0.0/12".parse().unwrap(),
                    gw: None,
                    mtu: None,
                    priority: None,
                }],
                ..Default::default()
            })
        }
        fn del(&mut self) -> Result<(), CniError> {
            self.allocated = false;
            self.dels += 1;
            Ok(())
        }
        fn check(&mut self) -> Result<(), CniError> {
            if self.allocated {
                Ok(())
            } else {
                Err(CniError::new(code::CHECK_MISMATCH, "not allocated"))
            }
        }
        fn gc(&mut self) -> Result<(), CniError> {
            Ok(())
        }
        fn status(&mut self) -> Result<(), CniError> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct FakeFw {
        masq: HashMap<String, Vec<Cidr>>,
        forwarding: bool,
    }

    impl Firewall for FakeFw {
        fn add_masq(&mut self, n: &str, id: &str, a: &[Cidr]) -> Result<(), CniError> {
            self.masq.insert(format!("{n}/{id}"), a.to_vec());
            Ok(())
        }
        fn del_masq(&mut self, n: &str, id: &str, _known: Option<&[Cidr]>) -> Result<(), CniError> {
            self.masq.remove(&format!("{n}/{id}"));
            Ok(())
        }
        fn gc_masq(&mut self, _n: &str, _k: &HashSet<String>) -> Result<(), CniError> {
            Ok(())
        }
        fn enable_forwarding(&mut self, v4: bool, _v6: bool) -> Result<(), CniError> {
            self.forwarding |= v4;
            Ok(())
        }
    }

    #[derive(Default)]
    struct FakeReaper(Vec<(u32, String)>);

    impl Reaper for FakeReaper {
        fn delete_later(&mut self, index: u32, name: &str) -> Result<(), CniError> {
            self.0.push((index, name.into()));
            Ok(())
        }
    }

    fn env() -> Env {
        Env {
            command: Command::Add,
            container_id: "c1".into(),
            netns: "/run/netns/c1".into(),
            ifname: "eth0".into(),
            args: vec![],
            path: vec![],
        }
    }

    fn conf(extra: Value) -> BridgeConf {
        let mut v = json!({"cniVersion": "1.0.0", "name": "pods", "type": "bridge", "bridge": "skiff0",
            "ipam": {"type": "host-local"}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        BridgeConf::parse(&v).unwrap()
    }

    struct World {
        host: FakeNs,
        cont: FakeNs,
        ipam: FakeIpam,
        fw: FakeFw,
    }

    impl World {
        fn new() -> World {
            let pending = Pending::default();
            World {
                host: FakeNs {
                    pending: pending.clone(),
                    ..Default::default()
                },
                cont: FakeNs {
                    pending,
                    container: true,
                    ..Default::default()
                },
                ipam: FakeIpam::default(),
                fw: FakeFw::default(),
            }
        }
        fn add(&mut self, c: &BridgeConf) -> Result<CniResult, CniError> {
            add(
                &env(),
                c,
                &mut self.host,
                &mut self.cont,
                -1,
                &mut self.ipam,
                &mut self.fw,
            )
        }
    }

    #[test]
    fn add_builds_bridge_veth_addresses_routes() {
        let mut w = World::new();
        let c = conf(
            json!({"isDefaultGateway": true, "ipMasq": true, "hairpinMode": true, "mtu": 1400}),
        );
        let r = w.add(&c).unwrap();
        let br = w.host.links["skiff0"].clone();
        assert!(br.is_bridge && br.up);
        assert_eq!(br.mtu, 1400);
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[0].name, "skiff0");
        assert!(r.interfaces[1].name.starts_with("veth"));
        let hv = w.host.links[&r.interfaces[1].name].clone();
        assert_eq!(hv.master, Some(br.index));
        assert!(hv.up && w.host.hairpin.contains(&hv.index));
        assert_eq!(r.interfaces[2].sandbox, "/run/netns/c1");
        let eth0 = w.cont.links["eth0"].clone();
        assert!(eth0.up);
        assert_eq!(eth0.mtu, 1400);
        assert_eq!(
            w.cont.addrs[&eth0.index],
            vec!["10.244.0.5/24".parse().unwrap()]
        );
        // IPAM route with the gateway filled in, plus the default route.
        let routes = &w.cont.routes[&eth0.index];
        assert!(routes
            .iter()
            .any(|x| x.dst.to_string() == "10.96.0.0/12"
                && x.gw.unwrap().to_string() == "10.244.0.1"));
        assert!(routes.iter().any(|x| x.dst.to_string() == "0.0.0.0/0"));
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.ips[0].interface, Some(2));
        // isDefaultGateway implies the gateway address on the bridge.
        assert_eq!(
            w.host.addrs[&br.index],
            vec!["10.244.0.1/24".parse().unwrap()]
        );
        assert!(w.fw.forwarding);
        assert!(w.fw.masq.contains_key("pods/c1"));
    }

    #[test]
    fn second_add_reuses_bridge_and_gateway() {
        let mut w = World::new();
        let c = conf(json!({"isGateway": true}));
        w.add(&c).unwrap();
        w.cont = FakeNs {
            pending: w.host.pending.clone(),
            container: true,
            ..Default::default()
        };
        w.add(&c).unwrap();
        let br = w.host.links["skiff0"].clone();
        assert_eq!(w.host.addrs[&br.index].len(), 1);
        assert_eq!(w.host.links.values().filter(|l| l.is_bridge).count(), 1);
    }

    #[test]
    fn existing_ifname_is_refused_without_side_effects() {
        let mut w = World::new();
        w.cont.new_link("eth0", false, 1500);
        let e = w.add(&conf(json!({}))).unwrap_err();
        assert_eq!(e.code, code::INTERFACE_EXISTS);
        assert!(!w.ipam.allocated);
        assert!(!w.host.links.keys().any(|k| k.starts_with("veth")));
    }

    #[test]
    fn non_bridge_with_bridge_name_is_invalid_config() {
        let mut w = World::new();
        w.host.new_link("skiff0", false, 1500);
        assert_eq!(
            w.add(&conf(json!({}))).unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn ipam_failure_removes_veth_and_keeps_code() {
        let mut w = World::new();
        w.ipam.fail = Some(code::RANGE_EXHAUSTED);
        let e = w.add(&conf(json!({}))).unwrap_err();
        assert_eq!(e.code, code::RANGE_EXHAUSTED);
        assert!(!w.cont.links.contains_key("eth0"));
    }

    #[test]
    fn late_failure_releases_ip_and_veth() {
        let mut w = World::new();
        w.cont.fail_route = true;
        let e = w.add(&conf(json!({"ipMasq": true}))).unwrap_err();
        assert_eq!(e.code, code::NETLINK);
        assert!(!w.ipam.allocated);
        assert_eq!(w.ipam.dels, 1);
        assert!(!w.cont.links.contains_key("eth0"));
        assert!(w.fw.masq.is_empty());
    }

    #[test]
    fn del_is_idempotent_and_works_without_netns() {
        let mut w = World::new();
        let mut r = FakeReaper::default();
        let c = conf(json!({"ipMasq": true, "syncTeardown": true}));
        w.add(&c).unwrap();
        del(
            &env(),
            &c,
            &mut w.host,
            Some(&mut w.cont),
            &mut w.ipam,
            &mut w.fw,
            &mut r,
        )
        .unwrap();
        assert!(!w.cont.links.contains_key("eth0"));
        assert!(w.fw.masq.is_empty());
        del(
            &env(),
            &c,
            &mut w.host,
            Some(&mut w.cont),
            &mut w.ipam,
            &mut w.fw,
            &mut r,
        )
        .unwrap();
        del(
            &env(),
            &c,
            &mut w.host,
            None,
            &mut w.ipam,
            &mut w.fw,
            &mut r,
        )
        .unwrap();
        assert_eq!(w.ipam.dels, 3);
        assert!(r.0.is_empty());
    }

    #[test]
    fn del_keeps_going_after_an_ipam_failure() {
        let mut w = World::new();
        let mut r = FakeReaper::default();
        let c = conf(json!({"ipMasq": true, "syncTeardown": true}));
        w.add(&c).unwrap();
        struct Failing;
        impl Ipam for Failing {
            fn add(&mut self) -> Result<CniResult, CniError> {
                unreachable!("DEL only")
            }
            fn del(&mut self) -> Result<(), CniError> {
                Err(CniError::new(code::TRY_AGAIN_LATER, "store busy"))
            }
            fn check(&mut self) -> Result<(), CniError> {
                Ok(())
            }
            fn gc(&mut self) -> Result<(), CniError> {
                Ok(())
            }
            fn status(&mut self) -> Result<(), CniError> {
                Ok(())
            }
        }
        let e = del(
            &env(),
            &c,
            &mut w.host,
            Some(&mut w.cont),
            &mut Failing,
            &mut w.fw,
            &mut r,
        )
        .unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(!w.cont.links.contains_key("eth0"), "link removed anyway");
        assert!(w.fw.masq.is_empty(), "rules removed anyway");
    }

    #[test]
    fn del_defers_pair_deletion_to_reaper() {
        let mut w = World::new();
        let mut r = FakeReaper::default();
        let c = conf(json!({"ipMasq": true}));
        let res = w.add(&c).unwrap();
        del(
            &env(),
            &c,
            &mut w.host,
            Some(&mut w.cont),
            &mut w.ipam,
            &mut w.fw,
            &mut r,
        )
        .unwrap();
        // eth0's name is free at once, the interface is down, the host end is queued.
        assert!(!w.cont.links.contains_key("eth0"));
        let parked: Vec<&Link> = w
            .cont
            .links
            .values()
            .filter(|l| l.name.starts_with("skdel"))
            .collect();
        assert_eq!(parked.len(), 1);
        assert!(!parked[0].up);
        assert_eq!(r.0.len(), 1);
        assert_eq!(r.0[0].1, res.interfaces[1].name);
        assert!(w.fw.masq.is_empty());
        assert!(!w.ipam.allocated);
    }

    #[test]
    fn del_does_not_defer_for_a_foreign_pair() {
        let mut w = World::new();
        let mut r = FakeReaper::default();
        let c = conf(json!({}));
        w.add(&c).unwrap();
        // The host end left the bridge: not ours to hand over.
        let hv = w
            .host
            .links
            .values_mut()
            .find(|l| l.name.starts_with("veth"))
            .unwrap();
        hv.master = None;
        del(
            &env(),
            &c,
            &mut w.host,
            Some(&mut w.cont),
            &mut w.ipam,
            &mut w.fw,
            &mut r,
        )
        .unwrap();
        assert!(r.0.is_empty());
        assert!(w
            .cont
            .links
            .values()
            .all(|l| !l.name.starts_with("skdel") && l.name != "eth0"));
    }

    #[test]
    fn check_detects_removed_address_and_route() {
        let mut w = World::new();
        let base = json!({"isDefaultGateway": true});
        let r = w.add(&conf(base.clone())).unwrap();
        let mut with_prev = base.clone();
        with_prev["prevResult"] = r.to_value("1.0.0");
        let c = conf(with_prev);
        check(&env(), &c, &mut w.host, &mut w.cont, &mut w.ipam).unwrap();
        let idx = w.cont.links["eth0"].index;
        w.cont
            .routes
            .get_mut(&idx)
            .unwrap()
            .retain(|x| x.dst.prefix != 0);
        let e = check(&env(), &c, &mut w.host, &mut w.cont, &mut w.ipam).unwrap_err();
        assert_eq!(e.code, code::CHECK_MISMATCH);
        assert!(e.msg.contains("route"), "{e}");
        w.cont.addrs.get_mut(&idx).unwrap().clear();
        let e = check(&env(), &c, &mut w.host, &mut w.cont, &mut w.ipam).unwrap_err();
        assert!(e.msg.contains("10.244.0.5/24"), "{e}");
        let no_prev = conf(base);
        assert_eq!(
            check(&env(), &no_prev, &mut w.host, &mut w.cont, &mut w.ipam)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn config_validation() {
        let bad = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge", "mtu": "x"});
        assert_eq!(
            BridgeConf::parse(&bad).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let bad = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge", "mtu": 10});
        assert_eq!(
            BridgeConf::parse(&bad).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let bad = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge", "bridge": "a/b"});
        assert_eq!(
            BridgeConf::parse(&bad).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let both = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge", "hairpinMode": true, "promiscMode": true});
        assert_eq!(
            BridgeConf::parse(&both).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let ok = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge"});
        let c = BridgeConf::parse(&ok).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert_eq!(c.ipam_type().unwrap_err().code, code::INVALID_CONFIG);
    }
}

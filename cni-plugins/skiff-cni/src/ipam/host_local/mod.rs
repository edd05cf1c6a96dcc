//! `host-local` IPAM: ranges of addresses handed out from files under a data
//! directory, one file per allocated address, guarded by a lock file.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::cidr::Cidr;
use crate::spec::{
    code, typed_config, valid_attachments, Attachment, CniError, CniResult, Command, Dns, Env,
    IpConfig, Route,
};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

mod range;
mod store;

pub use range::{range_sets, Range, RangeSet};
pub use store::{Allocation, Store, StoreError};

#[derive(Debug, Clone, Deserialize)]
pub struct RangeConfig {
    pub subnet: Cidr,
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IpamConfig {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConfig>>,
    /// Older single-range form.
    #[serde(default)]
    pub subnet: Option<Cidr>,
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(rename = "dataDir", default)]
    pub data_dir: Option<PathBuf>,
    #[serde(rename = "resolvConf", default)]
    pub resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
struct NetConf {
    name: String,
    ipam: IpamConfig,
}

/// Allocates one address from each range set for an attachment; returns the
/// existing addresses when the attachment already has them.
pub fn allocate(
    store: &Store,
    sets: &[RangeSet],
    id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>, CniError> {
    allocate_with(store, sets, id, ifname, &[])
}

/// Like [`allocate`], with specific addresses requested (CNI_ARGS `IP=`,
/// `runtimeConfig.ips`, `args.cni.ips`); each must fall in one range set and
/// be free or already this attachment's.
pub fn allocate_with(
    store: &Store,
    sets: &[RangeSet],
    id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<Vec<IpConfig>, CniError> {
    for ip in requested {
        if !sets.iter().any(|s| s.contains(*ip)) {
            return Err(CniError::new(
                code::ADDRESS_UNAVAILABLE,
                format!("requested IP address {ip} is not in any configured range"),
            ));
        }
    }
    let existing = store.find(id, ifname)?;
    let mut fresh: Vec<IpAddr> = Vec::new();
    let mut out = Vec::new();
    let fail = |fresh: &[IpAddr], e: CniError| {
        for ip in fresh {
            let _ = store.release(*ip);
        }
        Err(e)
    };
    for (idx, set) in sets.iter().enumerate() {
        if let Some(ip) = existing.iter().copied().find(|ip| set.contains(*ip)) {
            let r = set.range_of(ip).expect("contained");
            out.push(ip_config(r, ip));
            continue;
        }
        if let Some(ip) = requested.iter().copied().find(|ip| set.contains(*ip)) {
            let r = set.range_of(ip).expect("contained").clone();
            match store.reserve(ip, id, ifname, idx) {
                Ok(true) if ip != r.gateway => {
                    fresh.push(ip);
                    out.push(ip_config(&r, ip));
                    continue;
                }
                Ok(true) => {
                    let _ = store.release(ip);
                    return fail(
                        &fresh,
                        CniError::new(
                            code::ADDRESS_UNAVAILABLE,
                            format!("requested IP address {ip} is the gateway"),
                        ),
                    );
                }
                Ok(false) => {
                    return fail(
                        &fresh,
                        CniError::new(
                            code::ADDRESS_UNAVAILABLE,
                            format!("requested IP address {ip} is already allocated"),
                        ),
                    );
                }
                Err(e) => return fail(&fresh, e.into()),
            }
        }
        match allocate_in_set(store, set, idx, id, ifname) {
            Ok(Some((ip, r))) => {
                fresh.push(ip);
                out.push(ip_config(&r, ip));
            }
            Ok(None) => {
                return fail(
                    &fresh,
                    CniError::new(
                        code::RANGE_EXHAUSTED,
                        format!(
                            "failed to allocate for range {idx}: no IP addresses available in range set: {}",
                            set.describe()
                        ),
                    ),
                );
            }
            Err(e) => return fail(&fresh, e.into()),
        }
    }
    Ok(out)
}

/// Addresses asked for by the runtime, from every place the spec conventions allow.
pub fn requested_ips(env: &Env, conf: &Value) -> Result<Vec<IpAddr>, CniError> {
    let mut raw: Vec<String> = Vec::new();
    for (k, v) in &env.args {
        if k == "IP" {
            raw.extend(v.split(',').map(str::to_string));
        }
    }
    for path in [&["runtimeConfig", "ips"][..], &["args", "cni", "ips"][..]] {
        let mut cur = conf;
        for key in path {
            cur = cur.get(key).unwrap_or(&Value::Null);
        }
        if let Some(list) = cur.as_array() {
            raw.extend(list.iter().filter_map(|v| v.as_str().map(str::to_string)));
        }
    }
    let mut out = Vec::new();
    for r in raw.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        // Either "10.1.2.3" or "10.1.2.3/24".
        let ip = r.split('/').next().unwrap_or(r);
        let ip: IpAddr = ip.parse().map_err(|_| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("requested IP {r:?} is not an address"),
            )
        })?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

fn ip_config(r: &Range, ip: IpAddr) -> IpConfig {
    IpConfig {
        interface: None,
        address: Cidr {
            addr: ip,
            prefix: r.subnet.prefix,
        },
        gateway: Some(r.gateway),
    }
}

fn allocate_in_set(
    store: &Store,
    set: &RangeSet,
    idx: usize,
    id: &str,
    ifname: &str,
) -> Result<Option<(IpAddr, Range)>, StoreError> {
    let mut ip = match store.last_reserved(idx) {
        Some(last) if set.contains(last) => set.next(last),
        _ => set.0[0].start,
    };
    // Bounded by the set's size; huge IPv6 sets are capped, since a set that
    // large cannot be exhausted by files in one directory anyway.
    let limit = set.size().min(1 << 20);
    let mut tried = 0u128;
    while tried < limit {
        let r = set.range_of(ip).expect("iterator stays in set").clone();
        if ip != r.gateway && store.reserve(ip, id, ifname, idx)? {
            return Ok(Some((ip, r)));
        }
        ip = set.next(ip);
        tried += 1;
    }
    Ok(None)
}

/// Reads nameserver/search/domain/options from a resolv.conf file.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("nameserver") => dns.nameservers.extend(parts.next().map(str::to_string)),
            Some("domain") => dns.domain = parts.next().unwrap_or("").to_string(),
            Some("search") => dns.search = parts.map(str::to_string).collect(),
            Some("options") => dns.options.extend(parts.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

fn validate_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("network name {name:?} cannot be used as a directory name"),
        ));
    }
    Ok(())
}

/// Runs one host-local command. Returns the result for ADD, None otherwise.
pub fn run(env: &Env, conf: &Value) -> Result<Option<CniResult>, CniError> {
    let nc: NetConf = typed_config(conf)?;
    validate_name(&nc.name)?;
    let data_dir = nc
        .ipam
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    match env.command {
        Command::Add => {
            let sets = range_sets(&nc.ipam)?;
            let store = Store::open(&data_dir, &nc.name)?;
            let requested = requested_ips(env, conf)?;
            let ips = allocate_with(&store, &sets, &env.container_id, &env.ifname, &requested)?;
            tracing::debug!(network = %nc.name, ?ips, "host-local allocated");
            let mut dns = nc.ipam.dns.clone();
            if dns.is_empty() {
                if let Some(p) = &nc.ipam.resolv_conf {
                    let text = fs::read_to_string(p).map_err(|e| {
                        CniError::new(
                            code::IO_FAILURE,
                            format!("read resolvConf {}: {e}", p.display()),
                        )
                    })?;
                    dns = parse_resolv_conf(&text);
                }
            }
            Ok(Some(CniResult {
                cni_version: String::new(),
                interfaces: vec![],
                ips,
                routes: nc.ipam.routes.clone(),
                dns,
            }))
        }
        Command::Del => {
            let store = Store::open(&data_dir, &nc.name)?;
            let released = store.release_attachment(&env.container_id, &env.ifname)?;
            tracing::debug!(?released, "host-local released");
            Ok(None)
        }
        Command::Check => {
            let store = Store::open(&data_dir, &nc.name)?;
            if store.find(&env.container_id, &env.ifname)?.is_empty() {
                return Err(CniError::new(
                    code::CHECK_MISMATCH,
                    format!(
                        "host-local: no address allocated to {}/{} in network {}",
                        env.container_id, env.ifname, nc.name
                    ),
                ));
            }
            Ok(None)
        }
        Command::Gc => {
            let keep = valid_attachments(conf)?;
            let store = Store::open(&data_dir, &nc.name)?;
            let removed = gc(&store, &keep)?;
            tracing::debug!(?removed, "host-local gc");
            Ok(None)
        }
        Command::Status => {
            range_sets(&nc.ipam)?;
            let store = Store::open(&data_dir, &nc.name).map_err(|e| {
                CniError::new(
                    code::NOT_AVAILABLE,
                    format!("host-local store not usable: {e}"),
                )
            })?;
            drop(store);
            Ok(None)
        }
        Command::Version => Ok(None),
    }
}

/// Releases every allocation whose attachment is not in `keep`.
pub fn gc(store: &Store, keep: &[Attachment]) -> Result<Vec<IpAddr>, StoreError> {
    let keep: HashSet<(&str, &str)> = keep
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let mut removed = Vec::new();
    for a in store.all()? {
        if !keep.contains(&(a.container_id.as_str(), a.ifname.as_str())) {
            store.release(a.ip)?;
            removed.push(a.ip);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;

//! `host-local` IPAM: ranges of addresses handed out from files under a data
//! directory, one file per allocated address, guarded by a lock file.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use serde_json::Value;

use crate::cidr::{offset, to_u128, Cidr};
use crate::spec::{
    code, typed_config, valid_attachments, Attachment, CniError, CniResult, Command, Dns, Env,
    IpConfig, Route,
};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// Errors of the allocation store; each carries the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
}

impl From<StoreError> for CniError {
    fn from(e: StoreError) -> Self {
        CniError::new(code::IO_FAILURE, e.to_string())
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

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

/// A validated range: every address from `start` to `end` except the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: Cidr,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn from_config(rc: &RangeConfig) -> Result<Range, CniError> {
        let subnet = rc.subnet.masked();
        let invalid = |m: String| CniError::new(code::INVALID_CONFIG, m);
        let host_bits = if subnet.is_ipv4() { 32 } else { 128 } - u32::from(subnet.prefix);
        if host_bits < 2 {
            return Err(invalid(format!(
                "subnet {subnet} is too small to allocate from"
            )));
        }
        let first = offset(subnet.network(), 1).expect("subnet has room");
        let last = if subnet.is_ipv4() {
            offset(subnet.last(), -1).expect("subnet has room")
        } else {
            subnet.last()
        };
        let start = rc.range_start.unwrap_or(first);
        let end = rc.range_end.unwrap_or(last);
        for (what, ip) in [("rangeStart", start), ("rangeEnd", end)] {
            if !subnet.contains(ip) || to_u128(ip) < to_u128(first) || to_u128(ip) > to_u128(last) {
                return Err(invalid(format!(
                    "{what} {ip} is not a usable address of {subnet}"
                )));
            }
        }
        if to_u128(start) > to_u128(end) {
            return Err(invalid(format!(
                "rangeStart {start} is after rangeEnd {end}"
            )));
        }
        let gateway = rc.gateway.unwrap_or(first);
        if gateway.is_ipv4() != subnet.is_ipv4() {
            return Err(invalid(format!(
                "gateway {gateway} is not of the family of {subnet}"
            )));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.start.is_ipv4() == other.start.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
}

/// A list of ranges that together give one address to each attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }

    fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// The address after `ip` in allocation order, wrapping to the first range.
    fn next(&self, ip: IpAddr) -> IpAddr {
        for (i, r) in self.0.iter().enumerate() {
            if r.contains(ip) {
                if ip == r.end {
                    return self.0[(i + 1) % self.0.len()].start;
                }
                return offset(ip, 1).expect("inside range");
            }
        }
        self.0[0].start
    }

    fn size(&self) -> u128 {
        self.0
            .iter()
            .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
            .fold(0u128, |a, b| a.saturating_add(b))
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Validates all range sets of a config (the `ranges` form or the single-range form).
pub fn range_sets(conf: &IpamConfig) -> Result<Vec<RangeSet>, CniError> {
    let mut raw = conf.ranges.clone();
    if let Some(subnet) = conf.subnet {
        raw.push(vec![RangeConfig {
            subnet,
            range_start: conf.range_start,
            range_end: conf.range_end,
            gateway: conf.gateway,
        }]);
    }
    if raw.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "host-local: no IP ranges specified",
        ));
    }
    let mut sets: Vec<RangeSet> = Vec::new();
    for (i, set) in raw.iter().enumerate() {
        if set.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("host-local: range set {i} is empty"),
            ));
        }
        let ranges = set
            .iter()
            .map(Range::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        let fam = ranges[0].start.is_ipv4();
        if ranges.iter().any(|r| r.start.is_ipv4() != fam) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("host-local: range set {i} mixes address families"),
            ));
        }
        let all_prev: Vec<&Range> = sets.iter().flat_map(|s| s.0.iter()).collect();
        for (j, r) in ranges.iter().enumerate() {
            if ranges[..j]
                .iter()
                .chain(all_prev.iter().copied())
                .any(|o| o.overlaps(r))
            {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "host-local: range {}-{} overlaps another range",
                        r.start, r.end
                    ),
                ));
            }
        }
        sets.push(RangeSet(ranges));
    }
    Ok(sets)
}

/// One allocation as persisted: the address file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// The per-network allocation directory, held under an exclusive lock for the
/// lifetime of the value.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

const LAST_RESERVED: &str = "last_reserved_ip.";

impl Store {
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, StoreError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let lock_path = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let lock =
            Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, source)| StoreError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Claims `ip`; false when it is already taken.
    pub fn reserve(
        &self,
        ip: IpAddr,
        id: &str,
        ifname: &str,
        set: usize,
    ) -> Result<bool, StoreError> {
        let p = self.ip_path(ip);
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("create", &p)(e)),
        };
        f.write_all(format!("{id}\r\n{ifname}").as_bytes())
            .map_err(io_err("write", &p))?;
        let lr = self.dir.join(format!("{LAST_RESERVED}{set}"));
        fs::write(&lr, ip.to_string()).map_err(io_err("write", &lr))?;
        Ok(true)
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every allocation in the directory.
    pub fn all(&self) -> Result<Vec<Allocation>, StoreError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(io_err("read dir", &self.dir))?;
        for entry in rd {
            let entry = entry.map_err(io_err("read dir", &self.dir))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let p = entry.path();
            let content = match fs::read_to_string(&p) {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &p)(e)),
            };
            let mut lines = content.lines().map(str::trim);
            let container_id = lines.next().unwrap_or("").to_string();
            let ifname = lines.next().unwrap_or("").to_string();
            out.push(Allocation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|a| (a.ip.is_ipv6(), to_u128(a.ip)));
        Ok(out)
    }

    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|a| a.container_id == id && a.ifname == ifname)
            .map(|a| a.ip)
            .collect())
    }

    pub fn release(&self, ip: IpAddr) -> Result<(), StoreError> {
        let p = self.ip_path(ip);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &p)(e)),
        }
    }

    /// Releases every address of one attachment; returns them.
    pub fn release_attachment(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        let ips = self.find(id, ifname)?;
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
    }
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
mod tests {
    use super::*;
    use serde_json::json;

    fn env(cmd: Command, id: &str) -> Env {
        Env {
            command: cmd,
            container_id: id.into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![],
            path: vec![],
        }
    }

    fn conf(dir: &Path, ranges: Value) -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "testnet", "type": "bridge",
            "ipam": {"type": "host-local", "dataDir": dir, "ranges": ranges,
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dns": {"nameservers": ["10.96.0.10"], "search": ["cluster.local"]}}
        })
    }

    fn add(c: &Value, id: &str) -> Result<CniResult, CniError> {
        run(&env(Command::Add, id), c).map(|r| r.unwrap())
    }

    #[test]
    fn allocates_sequentially_skipping_gateway() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(d.path(), json!([[{"subnet": "10.244.1.0/24"}]]));
        let r = add(&c, "a").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.2/24");
        assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.244.1.1");
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.dns.nameservers, vec!["10.96.0.10"]);
        assert_eq!(
            add(&c, "b").unwrap().ips[0].address.to_string(),
            "10.244.1.3/24"
        );
        let content = fs::read_to_string(d.path().join("testnet/10.244.1.2")).unwrap();
        assert_eq!(content, "a\r\neth0");
    }

    #[test]
    fn same_attachment_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(d.path(), json!([[{"subnet": "10.244.1.0/24"}]]));
        let first = add(&c, "a").unwrap();
        let again = add(&c, "a").unwrap();
        assert_eq!(first.ips, again.ips);
        let store = Store::open(d.path(), "testnet").unwrap();
        assert_eq!(store.all().unwrap().len(), 1);
    }

    #[test]
    fn range_bounds_and_exhaustion() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(
            d.path(),
            json!([[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10", "rangeEnd": "10.9.0.12", "gateway": "10.9.0.11"}]]),
        );
        assert_eq!(
            add(&c, "a").unwrap().ips[0].address.addr.to_string(),
            "10.9.0.10"
        );
        assert_eq!(
            add(&c, "b").unwrap().ips[0].address.addr.to_string(),
            "10.9.0.12"
        );
        let e = add(&c, "c").unwrap_err();
        assert_eq!(e.code, code::RANGE_EXHAUSTED);
        assert!(e.msg.contains("no IP addresses available"));
    }

    #[test]
    fn release_and_round_robin() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(d.path(), json!([[{"subnet": "10.9.0.0/29"}]]));
        for id in ["a", "b", "c"] {
            add(&c, id).unwrap();
        }
        run(&env(Command::Del, "a"), &c).unwrap();
        run(&env(Command::Del, "a"), &c).unwrap();
        // Round robin continues after the last reserved (.4), not the freed .2.
        assert_eq!(
            add(&c, "d").unwrap().ips[0].address.addr.to_string(),
            "10.9.0.5"
        );
        assert_eq!(
            add(&c, "e").unwrap().ips[0].address.addr.to_string(),
            "10.9.0.6"
        );
        // Wraps around to the freed address.
        assert_eq!(
            add(&c, "f").unwrap().ips[0].address.addr.to_string(),
            "10.9.0.2"
        );
        assert_eq!(add(&c, "g").unwrap_err().code, code::RANGE_EXHAUSTED);
    }

    #[test]
    fn dual_stack_and_multi_range_sets() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(
            d.path(),
            json!([
                [{"subnet": "fd00::/120"}],
                [{"subnet": "10.1.0.0/30"}, {"subnet": "10.2.0.0/30"}]
            ]),
        );
        let a = add(&c, "a").unwrap();
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.ips[0].address.to_string(), "fd00::2/120");
        assert_eq!(a.ips[1].address.to_string(), "10.1.0.2/30");
        // 10.1.0.0/30 has just .2 once the gateway .1 is skipped; next comes the second range.
        assert_eq!(
            add(&c, "b").unwrap().ips[1].address.addr.to_string(),
            "10.2.0.2"
        );
        // The v4 set is exhausted: the v6 address reserved first must be rolled back.
        assert_eq!(add(&c, "c").unwrap_err().code, code::RANGE_EXHAUSTED);
        let store = Store::open(d.path(), "testnet").unwrap();
        assert!(store.find("c", "eth0").unwrap().is_empty());
    }

    #[test]
    fn invalid_ranges_are_code_7() {
        let d = tempfile::tempdir().unwrap();
        for ranges in [
            json!([]),
            json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]]),
            json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]),
            json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}]]),
            json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]),
            json!([[{"subnet": "10.0.0.0/32"}]]),
        ] {
            let e = add(&conf(d.path(), ranges.clone()), "a").unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{ranges}: {e}");
        }
        let bad = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local", "ranges": "x"}});
        assert_eq!(add(&bad, "a").unwrap_err().code, code::INVALID_CONFIG);
    }

    #[test]
    fn check_and_gc() {
        let d = tempfile::tempdir().unwrap();
        let mut c = conf(d.path(), json!([[{"subnet": "10.9.0.0/24"}]]));
        for id in ["a", "b", "c"] {
            add(&c, id).unwrap();
        }
        run(&env(Command::Check, "a"), &c).unwrap();
        assert_eq!(
            run(&env(Command::Check, "zz"), &c).unwrap_err().code,
            code::CHECK_MISMATCH
        );
        c["cni.dev/valid-attachments"] = json!([{"containerID": "b", "ifname": "eth0"}]);
        run(&env(Command::Gc, ""), &c).unwrap();
        let store = Store::open(d.path(), "testnet").unwrap();
        let left = store.all().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].container_id, "b");
    }

    #[test]
    fn legacy_subnet_and_resolv_conf() {
        let d = tempfile::tempdir().unwrap();
        let rc = d.path().join("resolv.conf");
        fs::write(&rc, "nameserver 1.1.1.1\nsearch a.b c.d\noptions ndots:5\n").unwrap();
        let c = json!({"cniVersion": "0.3.1", "name": "n", "ipam": {
            "type": "host-local", "subnet": "10.5.0.0/16", "dataDir": d.path(), "resolvConf": rc}});
        let r = add(&c, "a").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.5.0.2/16");
        assert_eq!(r.dns.search, vec!["a.b", "c.d"]);
        assert_eq!(r.dns.options, vec!["ndots:5"]);
    }

    #[test]
    fn concurrent_adds_get_distinct_addresses() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(d.path(), json!([[{"subnet": "10.9.0.0/26"}]]));
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..3)
                        .map(|i| add(&c, &format!("t{t}-{i}")).unwrap().ips[0].address.addr)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 48);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 48, "an address was handed out twice");
        // 62 usable minus the gateway: 61; 13 left.
        for i in 0..13 {
            add(&c, &format!("rest-{i}")).unwrap();
        }
        assert_eq!(
            add(&c, "one-too-many").unwrap_err().code,
            code::RANGE_EXHAUSTED
        );
    }

    #[test]
    fn status_and_gc_with_empty_keep_list() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(d.path(), json!([[{"subnet": "10.9.0.0/24"}]]));
        run(&env(Command::Status, ""), &c).unwrap();
        add(&c, "a").unwrap();
        add(&c, "b").unwrap();
        run(&env(Command::Gc, ""), &c).unwrap();
        let store = Store::open(d.path(), "testnet").unwrap();
        assert!(store.all().unwrap().is_empty());
    }

    #[test]
    fn requested_addresses() {
        let d = tempfile::tempdir().unwrap();
        let mut c = conf(
            d.path(),
            json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00::/120"}]]),
        );
        c["runtimeConfig"] = json!({"ips": ["10.9.0.50/24"]});
        let r = add(&c, "a").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.50/24");
        assert_eq!(
            r.ips[1].address.to_string(),
            "fd00::2/120",
            "the other set allocates as usual"
        );
        // Same attachment again: same answer; another one: taken.
        assert_eq!(add(&c, "a").unwrap().ips, r.ips);
        assert_eq!(add(&c, "b").unwrap_err().code, code::ADDRESS_UNAVAILABLE);
        let store = Store::open(d.path(), "testnet").unwrap();
        assert!(
            store.find("b", "eth0").unwrap().is_empty(),
            "b's v6 address rolled back"
        );
        drop(store);
        let mut e = env(Command::Add, "c");
        e.args = vec![("IP".into(), "fd00::77".into())];
        c.as_object_mut().unwrap().remove("runtimeConfig");
        let r = run(&e, &c).unwrap().unwrap();
        assert_eq!(r.ips[1].address.addr.to_string(), "fd00::77");
        c["args"] = json!({"cni": {"ips": ["10.10.0.1"]}});
        assert_eq!(add(&c, "d").unwrap_err().code, code::ADDRESS_UNAVAILABLE);
        c["args"] = json!({"cni": {"ips": ["10.9.0.1"]}});
        assert_eq!(
            add(&c, "d").unwrap_err().code,
            code::ADDRESS_UNAVAILABLE,
            "gateway"
        );
        c["args"] = json!({"cni": {"ips": ["nonsense"]}});
        assert_eq!(add(&c, "d").unwrap_err().code, code::INVALID_CONFIG);
    }

    #[test]
    fn bad_network_name_rejected() {
        let d = tempfile::tempdir().unwrap();
        let mut c = conf(d.path(), json!([[{"subnet": "10.9.0.0/24"}]]));
        c["name"] = json!("../etc");
        assert_eq!(add(&c, "a").unwrap_err().code, code::INVALID_CONFIG);
    }
}

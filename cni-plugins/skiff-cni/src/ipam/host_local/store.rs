//! The allocation store: one file per address under `dataDir/<network>`,
//! named by the address and holding `containerID\r\nifname`, plus
//! `last_reserved_ip.<set>` files, all behind an exclusive `flock` on `lock`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::cidr::to_u128;
use crate::spec::{code, CniError};

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

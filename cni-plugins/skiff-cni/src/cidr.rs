//! A small IP prefix type ("10.244.1.5/24") used in configs, results and the IPAM store.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address together with a prefix length. The address is kept as given
/// (it is not masked), so it can describe both a subnet and an interface address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrError {
    pub input: String,
    pub reason: &'static str,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > max_prefix(addr) {
            return Err(CidrError {
                input: format!("{addr}/{prefix}"),
                reason: "prefix length too long",
            });
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The first address of the prefix (all host bits zero).
    pub fn network(&self) -> IpAddr {
        from_u128(self.addr, to_u128(self.addr) & self.mask())
    }

    /// The last address of the prefix (all host bits one).
    pub fn last(&self) -> IpAddr {
        from_u128(
            self.addr,
            to_u128(self.addr) | !self.mask() & family_max(self.addr),
        )
    }

    /// This prefix with its host bits cleared.
    pub fn masked(&self) -> Cidr {
        Cidr {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && (to_u128(ip) & self.mask()) == (to_u128(self.addr) & self.mask())
    }

    fn mask(&self) -> u128 {
        let bits = u32::from(max_prefix(self.addr));
        let host_bits = bits - u32::from(self.prefix);
        let all = family_max(self.addr);
        if host_bits >= 128 {
            0
        } else {
            (all >> host_bits) << host_bits & all
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn family_max(ip: IpAddr) -> u128 {
    if ip.is_ipv4() {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    }
}

/// The address as an integer (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Builds an address of the same family as `like` from an integer.
pub fn from_u128(like: IpAddr, value: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// `ip + delta` within its family, or None on overflow.
pub fn offset(ip: IpAddr, delta: i64) -> Option<IpAddr> {
    let v = to_u128(ip);
    let next = if delta >= 0 {
        v.checked_add(delta as u128)?
    } else {
        v.checked_sub(delta.unsigned_abs() as u128)?
    };
    if next > family_max(ip) {
        return None;
    }
    Some(from_u128(ip, next))
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let (a, p) = s.split_once('/').ok_or_else(|| err("missing '/'"))?;
        let addr: IpAddr = a.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| err("bad prefix length"))?;
        Cidr::new(addr, prefix).map_err(|_| err("prefix length too long"))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let c: Cidr = "10.244.3.17/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.244.3.0");
        assert_eq!(c.last().to_string(), "10.244.3.255");
        assert!(c.contains("10.244.3.200".parse().unwrap()));
        assert!(!c.contains("10.244.4.1".parse().unwrap()));
        assert_eq!(c.masked().to_string(), "10.244.3.0/24");
        let v6: Cidr = "fd00::5/120".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::");
        assert_eq!(v6.last().to_string(), "fd00::ff");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_input() {
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("x/3".parse::<Cidr>().is_err());
    }

    #[test]
    fn offsets() {
        let ip: IpAddr = "10.0.0.255".parse().unwrap();
        assert_eq!(offset(ip, 1).unwrap().to_string(), "10.0.1.0");
        assert!(offset("255.255.255.255".parse().unwrap(), 1).is_none());
    }
}

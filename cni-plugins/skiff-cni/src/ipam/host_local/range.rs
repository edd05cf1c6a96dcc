//! Address ranges and range sets of host-local, validated from the config.

use std::net::IpAddr;

use crate::cidr::{offset, to_u128, Cidr};
use crate::spec::{code, CniError};

use super::{IpamConfig, RangeConfig};

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

    pub(super) fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// The address after `ip` in allocation order, wrapping to the first range.
    pub(super) fn next(&self, ip: IpAddr) -> IpAddr {
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

    pub(super) fn size(&self) -> u128 {
        self.0
            .iter()
            .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
            .fold(0u128, |a, b| a.saturating_add(b))
    }

    pub(super) fn describe(&self) -> String {
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

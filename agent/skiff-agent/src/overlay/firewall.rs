//! Forwarding and masquerade for pod traffic, in chains of the overlay's own (the service
//! proxy owns the KUBE-* chains): pods reach each other without NAT and the rest of the world
//! with it, as Flannel's masquerade rules do.

use std::collections::BTreeSet;

use crate::proxy::kernel::{Kernel, KernelError};
use crate::proxy::render::Table;

use super::desired::Subnet;

pub const POSTROUTING_CHAIN: &str = "SKIFF-OVERLAY-POSTRTG";
pub const FORWARD_CHAIN: &str = "SKIFF-OVERLAY-FWD";

/// The rule lines (`-A CHAIN …`, in `iptables -S` form so they compare with what the kernel
/// shows) of the NAT and filter chains for the cluster's pod network `net` and this node's
/// pod subnet `own`.
pub fn rules(net: Subnet, own: Subnet) -> (Vec<String>, Vec<String>) {
    let c = POSTROUTING_CHAIN;
    let nat = vec![
        // Pod to pod, on this node or another: the source address stays.
        format!("-A {c} -s {net} -d {net} -j RETURN"),
        // Pod to outside the cluster (multicast excepted): NAT to the node's address.
        format!("-A {c} -s {net} ! -d 224.0.0.0/4 -j MASQUERADE"),
        // Outside (or the node) to a local pod: keep the source.
        format!("-A {c} ! -s {net} -d {own} -j RETURN"),
        // Outside to a pod on another node through this one: NAT so replies come back here.
        format!("-A {c} ! -s {net} -d {net} -j MASQUERADE"),
    ];
    let f = FORWARD_CHAIN;
    // FORWARD's policy may be DROP (Docker sets it); pod traffic must pass anyway.
    let filter = vec![
        format!("-A {f} -s {net} -j ACCEPT"),
        format!("-A {f} -d {net} -j ACCEPT"),
    ];
    (nat, filter)
}

/// Writes the chains and the jumps to them unless they are already exactly so. Returns
/// whether anything was written.
pub fn ensure(k: &mut dyn Kernel, net: Subnet, own: Subnet) -> Result<bool, KernelError> {
    let (nat, filter) = rules(net, own);
    let mut text = String::new();
    for (table, chain, hook, lines) in [
        (Table::Nat, POSTROUTING_CHAIN, "POSTROUTING", &nat),
        (Table::Filter, FORWARD_CHAIN, "FORWARD", &filter),
    ] {
        // A save of the table rather than `iptables -S CHAIN`: iptables-nft 1.8.9 calls a
        // missing chain "incompatible" instead of missing, which reads as a failure.
        let dump = k.dump(table)?;
        let prefix = format!("-A {chain} ");
        let current: BTreeSet<&String> = dump
            .rules
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .collect();
        let want: BTreeSet<&String> = lines.iter().collect();
        let jump = format!("-j {chain}");
        let hooked = dump.rules.contains(&format!("-A {hook} {jump}"));
        if dump.chains.contains(chain) && current == want && hooked {
            continue;
        }
        text.push_str(&format!("*{}\n:{chain} - [0:0]\n", table.name()));
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        if !hooked {
            text.push_str(&format!("-A {hook} {jump}\n"));
        }
        text.push_str("COMMIT\n");
    }
    if text.is_empty() {
        return Ok(false);
    }
    k.restore(&text)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::kernel::FakeKernel;

    fn sub(s: &str) -> Subnet {
        Subnet::parse(s).unwrap()
    }

    #[test]
    fn pod_traffic_stays_unnatted_inside_the_network() {
        let (nat, filter) = rules(sub("10.244.0.0/16"), sub("10.244.3.0/24"));
        assert_eq!(
            nat[0],
            "-A SKIFF-OVERLAY-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN"
        );
        assert!(nat[1].contains("-s 10.244.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE"));
        assert!(nat[2].contains("! -s 10.244.0.0/16 -d 10.244.3.0/24 -j RETURN"));
        assert_eq!(filter.len(), 2);
    }

    #[test]
    fn ensure_writes_once_then_only_after_a_flush() {
        let mut k = FakeKernel::default();
        let (net, own) = (sub("10.244.0.0/16"), sub("10.244.3.0/24"));
        assert!(ensure(&mut k, net, own).unwrap());
        let chain = k
            .chain_rules(Table::Nat, POSTROUTING_CHAIN)
            .unwrap()
            .unwrap();
        assert_eq!(chain, rules(net, own).0);
        let hook = k.chain_rules(Table::Nat, "POSTROUTING").unwrap().unwrap();
        assert_eq!(hook, vec!["-A POSTROUTING -j SKIFF-OVERLAY-POSTRTG"]);
        let restores = k.restores.len();
        assert!(!ensure(&mut k, net, own).unwrap());
        assert_eq!(k.restores.len(), restores);
        // Someone flushes the filter table: only it is rewritten, and the jump comes back once.
        k.tables.remove(&Table::Filter);
        assert!(ensure(&mut k, net, own).unwrap());
        assert!(!k.restores.last().unwrap().contains("*nat"));
        let fwd = k.chain_rules(Table::Filter, "FORWARD").unwrap().unwrap();
        assert_eq!(fwd, vec!["-A FORWARD -j SKIFF-OVERLAY-FWD"]);
        // A changed own subnet rewrites the NAT chain without a second jump.
        assert!(ensure(&mut k, net, sub("10.244.4.0/24")).unwrap());
        let hook = k.chain_rules(Table::Nat, "POSTROUTING").unwrap().unwrap();
        assert_eq!(hook.len(), 1);
    }
}

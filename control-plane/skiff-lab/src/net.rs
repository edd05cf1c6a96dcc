//! The lab's network, made with iproute2: named network namespaces (so `ip netns exec` and
//! `nsenter --net=/run/netns/…` reach them), the underlay bridge and one veth pair per node.
//! Creating is idempotent, so `skiffadm up` can resume a lab whose namespaces survived;
//! deleting keeps going past errors and reports all of them.

use std::path::Path;
use std::process::Command;

use crate::spec::{Spec, BRIDGE, NODE_IF};
use crate::LabError;

fn run(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LabError::Tool {
            command: format!("ip {}", args.join(" ")),
            message: format!("{e} (Debian package iproute2)"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Tool {
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn link_exists(netns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", "dev", dev])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn has_address(netns: &str, dev: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "-4", "-o", "addr", "show", "dev", dev])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(ip))
        })
}

fn ensure_netns(name: &str) -> Result<(), LabError> {
    if !netns_exists(name) {
        run(&["netns", "add", name])?;
    }
    run(&["-n", name, "link", "set", "lo", "up"])
}

/// Builds (or completes) the underlay namespace with its bridge and every node namespace
/// attached to it, each node with its address and a default route via the bridge (without
/// any route, a connection to a ClusterIP fails before the service proxy's DNAT is seen).
pub fn create(spec: &Spec) -> Result<(), LabError> {
    spec.validate()?;
    let under = spec.underlay_netns();
    ensure_netns(&under)?;
    if !link_exists(&under, BRIDGE) {
        run(&["-n", &under, "link", "add", BRIDGE, "type", "bridge"])?;
    }
    let bridge_ip = spec.bridge_ip().to_string();
    if !has_address(&under, BRIDGE, &bridge_ip) {
        run(&[
            "-n",
            &under,
            "addr",
            "add",
            &format!("{bridge_ip}/24"),
            "dev",
            BRIDGE,
        ])?;
    }
    run(&["-n", &under, "link", "set", BRIDGE, "up"])?;
    for i in 1..=spec.nodes {
        let ns = spec.node_netns(i);
        ensure_netns(&ns)?;
        let outer = spec.underlay_if(i);
        if !link_exists(&ns, NODE_IF) {
            // A half-made pair from an interrupted run would block the name.
            if link_exists(&under, &outer) {
                run(&["-n", &under, "link", "del", &outer])?;
            }
            run(&[
                "-n", &under, "link", "add", &outer, "type", "veth", "peer", "name", NODE_IF,
                "netns", &ns,
            ])?;
        }
        run(&["-n", &under, "link", "set", &outer, "master", BRIDGE, "up"])?;
        let ip = spec.node_ip(i).to_string();
        if !has_address(&ns, NODE_IF, &ip) {
            run(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                NODE_IF,
            ])?;
        }
        run(&["-n", &ns, "link", "set", NODE_IF, "up"])?;
        run(&[
            "-n", &ns, "route", "replace", "default", "via", &bridge_ip, "dev", NODE_IF,
        ])?;
    }
    Ok(())
}

/// Deletes node `i`'s namespace (its veth pair, pod bridge, VxLAN device and iptables go
/// with it once no process is left inside).
pub fn delete_node(spec: &Spec, i: usize, errors: &mut Vec<String>) {
    let ns = spec.node_netns(i);
    if netns_exists(&ns) {
        if let Err(e) = run(&["netns", "delete", &ns]) {
            errors.push(e.to_string());
        }
    }
}

/// Deletes every namespace of the lab, nodes first. Processes must be gone already: a
/// namespace lives on as long as something runs in it.
pub fn delete(spec: &Spec, errors: &mut Vec<String>) {
    for i in 1..=spec.nodes {
        delete_node(spec, i, errors);
    }
    let under = spec.underlay_netns();
    if netns_exists(&under) {
        if let Err(e) = run(&["netns", "delete", &under]) {
            errors.push(e.to_string());
        }
    }
}

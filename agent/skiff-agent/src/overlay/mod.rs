//! The pod network between nodes: a Flannel-style VxLAN overlay (DESIGN.md §3). Each node owns
//! the VxLAN device `skiff.1` and publishes its VTEP MAC and underlay address as Node
//! annotations; every agent programs, per other node, an onlink route to that node's podCIDR,
//! a permanent neighbour entry and an FDB entry, so no flooding or learning is needed.
//!
//! - [`desired`]: Node list → entries, and the diff against the kernel (pure).
//! - [`kernel`]: the operations as a trait, device reconciliation, and an in-memory fake.
//! - [`netlink`]: the trait over rtnetlink.
//! - [`firewall`]: forwarding and masquerade chains.
//! - [`sysctl`]: ip_forward and bridge-nf-call-iptables.
//! - [`controller`]: the watch loop in the agent.

pub mod controller;
pub mod desired;
pub mod firewall;
pub mod kernel;
pub mod netlink;
pub mod sysctl;

use std::path::PathBuf;

/// The device name, VNI and UDP port of the overlay (Flannel's defaults for the last two).
pub const DEVICE: &str = "skiff.1";
pub const VNI: u32 = 1;
pub const PORT: u16 = 8472;
/// Bytes VxLAN adds to each packet: outer IPv4 (20) + UDP (8) + VxLAN (8) + inner Ethernet
/// (14).
pub const OVERHEAD: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: skiff_cni::netlink::NetlinkError,
    },
    #[error("the device {name} vanished right after it was created")]
    Vanished { name: String },
    #[error("no interface holds the node IP {ip}; the overlay needs it as its VxLAN source")]
    NoUnderlay { ip: std::net::Ipv4Addr },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("iptables: {0}")]
    Firewall(#[from] crate::proxy::kernel::KernelError),
    #[error("node {node}: {source}")]
    Api {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("--cluster-cidr {0:?} is not an IPv4 CIDR")]
    BadClusterCidr(String),
    #[error("fake kernel: {msg}")]
    Fake { msg: String },
}

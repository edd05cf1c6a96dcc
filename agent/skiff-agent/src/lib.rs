//! skiff-agent: Skiff's node agent. Today it checks the host, registers the node and keeps it
//! alive (status and Lease); running pods arrives with the runtime integration.

pub mod bootstrap;
pub mod bundle;
pub mod cgroups;
pub mod cni;
pub mod dns;
pub mod env;
pub mod images_cli;
pub mod node;
pub mod nodeapi;
pub mod overlay;
pub mod pods;
pub mod preflight;
pub mod proxy;
pub mod quantity;
pub mod sandbox;
pub mod subnet;
pub mod volumes;

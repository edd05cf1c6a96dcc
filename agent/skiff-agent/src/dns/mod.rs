//! Cluster DNS served by the agent on its node: the names of Services, endpoints and pods
//! (`records`), answered from memory (`query`) over UDP and TCP with forwarding of other names
//! (`server`), kept current by watches (`controller`), and announced as endpoints of the
//! `kube-system/kube-dns` Service so the proxy sends 10.96.0.10 here (`publish`).

pub mod query;
pub mod records;
pub mod server;

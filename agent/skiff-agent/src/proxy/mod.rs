//! The service proxy (kube-proxy's iptables mode): Services, EndpointSlices and this Node are
//! watched (`controller`), turned into a pure model (`model`), rendered into kube-proxy's
//! chain layout (`render`) and applied atomically with `iptables-restore --noflush`, fully
//! first and then only the chains that changed (`apply`), through a small kernel trait with a
//! real and a fake implementation (`kernel`).

pub mod apply;
pub mod controller;
pub mod kernel;
pub mod model;
pub mod render;

//! IP address management: the host-local allocator and the delegation of IPAM
//! to another plugin binary.

pub mod delegate;
pub mod host_local;

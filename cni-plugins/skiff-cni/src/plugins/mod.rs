//! The plugins this binary answers as, chosen by the name it was run under.

pub mod bridge;
pub mod loopback;
pub mod overlay;
pub mod portmap;

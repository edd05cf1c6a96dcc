//! Pieces that both skiff-server and skiff-agent need as services: telling systemd they are
//! ready, and TLS clients for peers whose serving certificates are not verifiable (node
//! agents' self-signed certificates, pods' HTTPS probe endpoints).

pub mod sd_notify;
pub mod tls;

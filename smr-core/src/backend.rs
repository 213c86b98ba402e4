//! The cluster network's backend, fixed by the node that creates the cluster.

use std::fmt;
use std::str::FromStr;

/// How nodes reach each other's replica subnets (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetworkBackend {
    /// Encrypted WireGuard tunnels; works across NAT.
    WireGuard,
    /// A VXLAN device; works across routed underlays (clear text).
    Vxlan,
    /// Plain routes via the peers' addresses; one L2 segment (clear text).
    HostGw,
    /// No overlay: replicas use the engine's default network.
    None,
}

impl NetworkBackend {
    /// A new cluster's backend when none is asked for.
    pub const DEFAULT: NetworkBackend = NetworkBackend::WireGuard;
    pub const ALL: [NetworkBackend; 4] = [
        NetworkBackend::WireGuard,
        NetworkBackend::Vxlan,
        NetworkBackend::HostGw,
        NetworkBackend::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkBackend::WireGuard => "wireguard",
            NetworkBackend::Vxlan => "vxlan",
            NetworkBackend::HostGw => "host-gw",
            NetworkBackend::None => "none",
        }
    }
}

impl fmt::Display for NetworkBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name that is none of [`NetworkBackend::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network backend {0:?} (wireguard, vxlan, host-gw or none)")]
pub struct UnknownBackend(pub String);

impl FromStr for NetworkBackend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        NetworkBackend::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for b in NetworkBackend::ALL {
            assert_eq!(b.as_str().parse::<NetworkBackend>(), Ok(b));
        }
        assert_eq!(
            "vxlan2".parse::<NetworkBackend>(),
            Err(UnknownBackend("vxlan2".into()))
        );
        assert!("".parse::<NetworkBackend>().is_err());
    }
}

//! Subnet leases: carving one per-node subnet out of the cluster CIDR.
//!
//! Pure logic (moved from the overlay crate in issue 13: the state machine is its only caller).
//! The state keeps the taken leases and asks
//! [`allocate_subnet`] for the lowest free one when a node joins; a subnet freed by a
//! removed node is simply absent from `taken` and is handed out again.

use ipnet::Ipv4Net;

/// Why a lease could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Every subnet of the cluster CIDR is taken.
    #[error("no free /{subnet_len} subnet left in cluster CIDR {cluster}")]
    Exhausted { cluster: Ipv4Net, subnet_len: u8 },
    /// The requested subnet length does not fit the cluster CIDR.
    #[error(
        "invalid subnet length /{subnet_len} for cluster CIDR {cluster}: it must be longer than /{} and at most /30",
        cluster.prefix_len()
    )]
    InvalidSubnetLen { cluster: Ipv4Net, subnet_len: u8 },
}

/// The lowest subnet of length `subnet_len` inside `cluster` that overlaps none of `taken`.
pub fn allocate_subnet(
    cluster: Ipv4Net,
    subnet_len: u8,
    taken: &[Ipv4Net],
) -> Result<Ipv4Net, LeaseError> {
    let cluster = cluster.trunc();
    if subnet_len <= cluster.prefix_len() || subnet_len > 30 {
        return Err(LeaseError::InvalidSubnetLen {
            cluster,
            subnet_len,
        });
    }
    let Ok(mut subnets) = cluster.subnets(subnet_len) else {
        return Err(LeaseError::InvalidSubnetLen {
            cluster,
            subnet_len,
        });
    };
    subnets
        .find(|candidate| !taken.iter().any(|t| overlaps(candidate, t)))
        .ok_or(LeaseError::Exhausted {
            cluster,
            subnet_len,
        })
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_first() {
        let c = net("10.10.0.0/16");
        assert_eq!(allocate_subnet(c, 24, &[]).unwrap(), net("10.10.0.0/24"));
        assert_eq!(
            allocate_subnet(c, 24, &[net("10.10.0.0/24"), net("10.10.2.0/24")]).unwrap(),
            net("10.10.1.0/24")
        );
    }

    #[test]
    fn exhaustion_names_the_cidr() {
        let c = net("10.10.0.0/23");
        let taken = [net("10.10.0.0/24"), net("10.10.1.0/24")];
        let err = allocate_subnet(c, 24, &taken).unwrap_err();
        assert_eq!(
            err,
            LeaseError::Exhausted {
                cluster: c,
                subnet_len: 24
            }
        );
        assert_eq!(
            err.to_string(),
            "no free /24 subnet left in cluster CIDR 10.10.0.0/23"
        );
    }

    #[test]
    fn freed_subnet_is_reused() {
        let c = net("10.10.0.0/22");
        let mut taken: Vec<Ipv4Net> = Vec::new();
        for _ in 0..4 {
            taken.push(allocate_subnet(c, 24, &taken).unwrap());
        }
        assert!(allocate_subnet(c, 24, &taken).is_err());
        taken.retain(|n| *n != net("10.10.2.0/24"));
        assert_eq!(allocate_subnet(c, 24, &taken).unwrap(), net("10.10.2.0/24"));
    }

    #[test]
    fn no_duplicates_over_many_allocations() {
        let c = net("10.10.0.0/16");
        let mut taken: Vec<Ipv4Net> = Vec::new();
        for _ in 0..256 {
            let n = allocate_subnet(c, 24, &taken).unwrap();
            assert!(!taken.contains(&n), "{n} handed out twice");
            assert!(c.contains(&n));
            taken.push(n);
        }
        assert!(matches!(
            allocate_subnet(c, 24, &taken),
            Err(LeaseError::Exhausted { .. })
        ));
    }

    #[test]
    fn overlapping_taken_ranges_are_skipped() {
        let c = net("10.10.0.0/16");
        // A foreign /23 covers two /24 slots.
        let taken = [net("10.10.0.0/23")];
        assert_eq!(allocate_subnet(c, 24, &taken).unwrap(), net("10.10.2.0/24"));
    }

    #[test]
    fn validates_subnet_len() {
        let c = net("10.10.0.0/16");
        for bad in [8, 16, 31, 32] {
            assert_eq!(
                allocate_subnet(c, bad, &[]),
                Err(LeaseError::InvalidSubnetLen {
                    cluster: c,
                    subnet_len: bad
                })
            );
        }
        assert_eq!(allocate_subnet(c, 30, &[]).unwrap(), net("10.10.0.0/30"));
    }
}

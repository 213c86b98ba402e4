//! The two hickory zone handlers the server's `Catalog` holds.
//!
//! - [`PrivateZone`], authoritative for `private.`: answers from the current [`RecordSet`]
//!   snapshot, which [`Shared`] lets the handle swap atomically (a short `RwLock` around an
//!   `Arc`; readers clone the `Arc` and never hold the lock across an await).
//!   Known name: A (or ANY) -> the addresses; other types -> NOERROR/NODATA. Empty
//!   non-terminals -> NOERROR/NODATA. Anything else -> NXDOMAIN. The catalog adds our SOA to
//!   the authority section of every negative answer.
//! - [`ForwardZone`], for `.`: hickory's `ForwardZoneHandler` with a hard deadline around
//!   every lookup, so a dead upstream yields SERVFAIL within `upstream_timeout`.
//!
//! ```text
//! query --> Server --> Catalog --+-- *.private --> PrivateZone --> Shared (Arc<Snapshot>)
//!                                |                                    ^ set_records()
//!                                +-- everything else --> ForwardZone --> upstreams
//! ```

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{
    LowerName, Name, RData, Record, RecordSet as RrSet, RecordType, TSigResponseContext,
};
use hickory_server::server::{Request, RequestInfo};
use hickory_server::store::forwarder::ForwardZoneHandler;
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
    ZoneHandler, ZoneType,
};

use crate::records::{RecordSet, name_key_from_labels};

/// What the private zone serves right now.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) records: RecordSet,
    /// SOA serial, bumped on every swap.
    pub(crate) serial: u32,
}

/// The swappable state shared by the zone handler and the [`crate::DnsHandle`].
#[derive(Debug)]
pub(crate) struct Shared {
    current: RwLock<Arc<Snapshot>>,
}

impl Shared {
    pub(crate) fn new(records: RecordSet) -> Self {
        Self {
            current: RwLock::new(Arc::new(Snapshot { records, serial: 1 })),
        }
    }

    pub(crate) fn load(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn store(&self, records: RecordSet) {
        let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let serial = guard.serial.wrapping_add(1).max(1);
        *guard = Arc::new(Snapshot { records, serial });
    }
}

/// Authoritative handler for `private.`.
pub(crate) struct PrivateZone {
    origin: LowerName,
    shared: Arc<Shared>,
    ttl: u32,
    mname: Name,
    rname: Name,
}

impl PrivateZone {
    pub(crate) fn new(origin: Name, shared: Arc<Shared>, ttl: u32) -> Result<Self, String> {
        let mname = Name::from_ascii("ns")
            .and_then(|n| n.append_domain(&origin))
            .map_err(|e| e.to_string())?;
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&origin))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            origin: LowerName::new(&origin),
            shared,
            ttl,
            mname,
            rname,
        })
    }

    fn soa(&self, serial: u32, lookup_options: LookupOptions) -> AuthLookup {
        let soa = SOA::new(
            self.mname.clone(),
            self.rname.clone(),
            serial,
            3600,
            600,
            86400,
            self.ttl,
        );
        let name = Name::from(&self.origin);
        let mut set = RrSet::with_ttl(name.clone(), RecordType::SOA, self.ttl);
        set.set_records(vec![Record::from_rdata(name, self.ttl, RData::SOA(soa))]);
        AuthLookup::from(LookupRecords::new(lookup_options, Arc::new(set)))
    }

    fn addresses(
        &self,
        name: &LowerName,
        ips: &[std::net::Ipv4Addr],
        lookup_options: LookupOptions,
    ) -> AuthLookup {
        let name = Name::from(name);
        let mut set = RrSet::with_ttl(name.clone(), RecordType::A, self.ttl);
        set.set_records(
            ips.iter()
                .map(|ip| Record::from_rdata(name.clone(), self.ttl, RData::A(A(*ip))))
                .collect(),
        );
        AuthLookup::from(LookupRecords::new(lookup_options, Arc::new(set)))
    }

    /// The answer to one question; `internal` marks the catalog's own follow-up lookups.
    fn answer(
        &self,
        name: &LowerName,
        rtype: RecordType,
        lookup_options: LookupOptions,
        internal: bool,
    ) -> Result<AuthLookup, LookupError> {
        let snapshot = self.shared.load();
        if *name == self.origin {
            return match rtype {
                RecordType::SOA | RecordType::ANY => Ok(self.soa(snapshot.serial, lookup_options)),
                // The catalog asks for the apex NS after a SOA answer; we publish none.
                RecordType::NS if internal => Ok(AuthLookup::Empty),
                _ => Err(LookupError::NameExists),
            };
        }
        let Some(key) = name_key_from_labels(name.iter()) else {
            return Err(LookupError::from(ResponseCode::NXDomain));
        };
        match snapshot.records.get(&key) {
            Some(ips) => match rtype {
                RecordType::A | RecordType::ANY => Ok(self.addresses(name, ips, lookup_options)),
                _ => Err(LookupError::NameExists),
            },
            None if snapshot.records.is_empty_non_terminal(&key) => Err(LookupError::NameExists),
            None => Err(LookupError::from(ResponseCode::NXDomain)),
        }
    }
}

#[async_trait::async_trait]
impl ZoneHandler for PrivateZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Break(self.answer(name, rtype, lookup_options, request_info.is_none()))
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        let info = match request.request_info() {
            Ok(info) => info,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        let result = match info.query.query_type() {
            RecordType::AXFR | RecordType::IXFR => Err(LookupError::from(ResponseCode::Refused)),
            rtype => self.answer(info.query.name(), rtype, lookup_options, false),
        };
        (LookupControlFlow::Break(result), None)
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Break(Err(LookupError::from(ResponseCode::NotImp)))
    }
}

/// Forwarding handler for `.` with a hard per-query deadline.
pub(crate) struct ForwardZone {
    inner: ForwardZoneHandler,
    timeout: Duration,
}

impl ForwardZone {
    pub(crate) fn new(inner: ForwardZoneHandler, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

#[async_trait::async_trait]
impl ZoneHandler for ForwardZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::External
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        self.inner.origin()
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let lookup = self.inner.lookup(name, rtype, request_info, lookup_options);
        match tokio::time::timeout(self.timeout, lookup).await {
            Ok(result) => result,
            Err(_) => {
                tracing::debug!(%name, %rtype, "upstream timed out");
                LookupControlFlow::Break(Err(LookupError::from(ResponseCode::ServFail)))
            }
        }
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        let info = match request.request_info() {
            Ok(info) => info,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        let result = self
            .lookup(
                info.query.name(),
                info.query.query_type(),
                Some(&info),
                lookup_options,
            )
            .await;
        (result, None)
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Break(Err(LookupError::from(ResponseCode::NotImp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{NodeInfo, ReplicaInfo, compute_records};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::net::Ipv4Addr;

    fn zone() -> (PrivateZone, Arc<Shared>) {
        let records = compute_records(
            &[ReplicaInfo {
                group: "g".into(),
                name: "n".into(),
                index: 1,
                ip: Ipv4Addr::new(10, 0, 0, 1),
                ready: true,
            }],
            &[NodeInfo {
                name: "vm1".into(),
                ip: Ipv4Addr::new(10, 0, 9, 9),
            }],
        );
        let shared = Arc::new(Shared::new(records));
        let origin = Name::from_ascii("private.").unwrap();
        (PrivateZone::new(origin, shared.clone(), 7).unwrap(), shared)
    }

    fn ask(zone: &PrivateZone, name: &str, rtype: RecordType) -> Result<Vec<String>, String> {
        let name = LowerName::new(&Name::from_ascii(name).unwrap());
        match zone.answer(&name, rtype, LookupOptions::default(), false) {
            Ok(lookup) => Ok(lookup.iter().map(|r| r.to_string()).collect()),
            Err(LookupError::NameExists) => Err("NODATA".into()),
            Err(e) if e.is_nx_domain() => Err("NXDOMAIN".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn answers_by_name_and_type() {
        let (zone, shared) = zone();
        assert_eq!(
            ask(&zone, "cluster.g.g-n-1.private.", RecordType::A),
            Ok(vec!["cluster.g.g-n-1.private. 7 IN A 10.0.0.1".to_owned()])
        );
        assert_eq!(
            ask(&zone, "VM1.node.PRIVATE.", RecordType::ANY),
            Ok(vec!["vm1.node.private. 7 IN A 10.0.9.9".to_owned()])
        );
        assert_eq!(
            ask(&zone, "vm1.node.private.", RecordType::AAAA),
            Err("NODATA".into())
        );
        assert_eq!(
            ask(&zone, "node.private.", RecordType::A),
            Err("NODATA".into())
        );
        assert_eq!(
            ask(&zone, "vm2.node.private.", RecordType::A),
            Err("NXDOMAIN".into())
        );
        assert_eq!(
            ask(&zone, "private.", RecordType::SOA),
            Ok(vec![
                "private. 7 IN SOA ns.private. hostmaster.private. 1 3600 600 86400 7".to_owned()
            ])
        );
        assert_eq!(ask(&zone, "private.", RecordType::A), Err("NODATA".into()));

        shared.store(RecordSet::default());
        assert_eq!(
            ask(&zone, "cluster.g.g-n-1.private.", RecordType::A),
            Err("NXDOMAIN".into())
        );
        assert_eq!(
            ask(&zone, "private.", RecordType::SOA),
            Ok(vec![
                "private. 7 IN SOA ns.private. hostmaster.private. 2 3600 600 86400 7".to_owned()
            ])
        );
    }

    #[test]
    fn never_panics_on_generated_query_names() {
        let (zone, _) = zone();
        let mut rng = StdRng::seed_from_u64(7);
        let types = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::ANY,
            RecordType::NS,
        ];
        for _ in 0..5_000 {
            let labels: Vec<Vec<u8>> = (0..rng.random_range(0..6))
                .map(|_| {
                    (0..rng.random_range(1..20))
                        .map(|_| match rng.random_range(0..4) {
                            0 => rng.random(),
                            _ => b"abz09-."[rng.random_range(0..7)],
                        })
                        .collect()
                })
                .chain(std::iter::once(b"private".to_vec()))
                .collect();
            let Ok(mut name) = Name::from_labels(labels) else {
                continue;
            };
            name.set_fqdn(true);
            let lower = LowerName::new(&name);
            let rtype = types[rng.random_range(0..types.len())];
            let _ = zone.answer(&lower, rtype, LookupOptions::default(), false);
        }
    }
}

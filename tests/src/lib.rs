//! Test harness for smr's end-to-end suites: [`testbed`] emulates several VMs (network
//! namespaces with their own dockerd) on one machine; [`etcd`] runs a real etcd cluster on loopback.

pub mod etcd;
pub mod testbed;

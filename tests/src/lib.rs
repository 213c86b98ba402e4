//! Test harness for smr's end-to-end suites: [`testbed`] emulates several VMs (network
//! namespaces with their own dockerd) on one machine.

pub mod testbed;

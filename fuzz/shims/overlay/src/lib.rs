//! `overlay::allocate_subnet` and its error, compiled from overlay's own `lease.rs`.
#[path = "../../../../overlay/src/lease.rs"]
mod lease;
pub use lease::{LeaseError, allocate_subnet};

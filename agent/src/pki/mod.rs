//! PKI (skeleton).

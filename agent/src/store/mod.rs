//! Raft store (skeleton).

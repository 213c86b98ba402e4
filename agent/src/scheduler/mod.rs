//! Scheduler (placeholder).

//! TLS handshake tests.

//! The running overlay as the node holds it: set up by the network loop
//! (`controllers::network`), read by the API (peer statistics) and used for key rotation.

use std::sync::Arc;

use overlay::Overlay;
use overlay::PeerStats;
use overlay::wireguard::{WgKey, WgPublicKey};

/// The running overlay, shared between the network loop (which sets it up) and the API (peer
/// statistics, key rotation).
#[derive(Default)]
pub struct OverlaySlot {
    overlay: std::sync::RwLock<Option<Arc<Overlay>>>,
    /// The WireGuard key the device runs with, and its port; held while a rotation runs so the
    /// loop never publishes a key half-way through one.
    pub(crate) wireguard: tokio::sync::Mutex<Option<(WgKey, u16)>>,
}

/// Why a key rotation failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("this node runs no WireGuard overlay (the cluster's backend is {0})")]
    NotWireguard(String),
    #[error("the overlay of this node is not set up yet; try again")]
    NotReady,
    #[error("{0}")]
    Key(#[from] overlay::WgError),
    #[error("{0}")]
    Overlay(#[from] overlay::OverlayError),
}

impl OverlaySlot {
    pub(crate) fn get(&self) -> Option<Arc<Overlay>> {
        self.overlay
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set(&self, overlay: Option<Arc<Overlay>>) {
        *self.overlay.write().unwrap_or_else(|e| e.into_inner()) = overlay;
    }

    /// The WireGuard device's view of its peers (empty when no WireGuard overlay runs).
    pub async fn peer_stats(&self) -> Result<Vec<PeerStats>, overlay::OverlayError> {
        match self.get() {
            Some(overlay) => overlay.peer_stats().await,
            None => Ok(Vec::new()),
        }
    }

    /// Replaces this node's key: a new key is written to `key_path` (0600), published through
    /// the state with `publish` (which must succeed, or the old key is written back), then
    /// applied to the running device. Peers drop the old key when they reconcile.
    pub async fn rotate<F, Fut, E>(
        &self,
        key_path: &std::path::Path,
        publish: F,
    ) -> Result<WgPublicKey, RotateOutcome<E>>
    where
        F: FnOnce(WgPublicKey, u16) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let mut current = self.wireguard.lock().await;
        let overlay = self
            .get()
            .ok_or(RotateOutcome::Rotate(RotateError::NotReady))?;
        let backend = overlay.config().backend;
        let Some((old, port)) = current.clone() else {
            return Err(RotateOutcome::Rotate(RotateError::NotWireguard(
                backend.to_string(),
            )));
        };
        let new = WgKey::generate();
        let public = new.public_key();
        overlay::wireguard::write_key(key_path, &new)
            .map_err(|e| RotateOutcome::Rotate(e.into()))?;
        if let Err(e) = publish(public, port).await {
            if let Err(undo) = overlay::wireguard::write_key(key_path, &old) {
                tracing::error!("rotate-key: writing the old key back failed: {undo}");
            }
            return Err(RotateOutcome::Publish(e));
        }
        overlay
            .set_private_key(new.clone())
            .await
            .map_err(|e| RotateOutcome::Rotate(e.into()))?;
        *current = Some((new, port));
        tracing::info!(public_key = %public, "WireGuard key rotated");
        Ok(public)
    }
}

/// A failed rotation: the new key could not be made or applied, or not published.
#[derive(Debug)]
pub enum RotateOutcome<E> {
    Rotate(RotateError),
    Publish(E),
}

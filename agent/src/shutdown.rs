//! The node's shutdown flag, which every loop, server and store task watches.

use tokio::sync::watch;

/// Resolves once the shutdown flag is true (or its sender is gone).
pub async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

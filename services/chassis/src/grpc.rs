//! Serving a tonic router: bind first (so a taken port fails start-up with a
//! clear error instead of inside a background task), then serve until shutdown.

use std::net::SocketAddr;

use tokio::task::JoinHandle;
use tonic::transport::server::{Router, TcpIncoming};

use crate::shutdown::Shutdown;
use crate::ChassisError;

pub fn spawn(
    addr: SocketAddr,
    router: Router,
    mut shutdown: Shutdown,
) -> Result<JoinHandle<Result<(), tonic::transport::Error>>, ChassisError> {
    let incoming = TcpIncoming::bind(addr)
        .map_err(|e| ChassisError::Grpc {
            addr: addr.to_string(),
            message: e.to_string(),
        })?
        .with_nodelay(Some(true));
    tracing::info!(%addr, "gRPC listening");
    Ok(tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move { shutdown.recv().await })
            .await
    }))
}

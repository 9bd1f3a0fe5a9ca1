//! The accept loop: takes TCP connections, bounds how many are open at once, completes
//! the TLS handshake and hands each established connection to a session task.
//!
//! A connection over the budget is closed at once, before its handshake, so a flood of
//! connections costs no TLS work. This module must not read or write frames, and must
//! not block the loop on one peer: each handshake runs in its own task.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::driver;
use super::shared::VatInner;
use crate::transport;

/// How long the loop waits after a failed accept (out of file descriptors, say)
/// before the next, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections until the vat shuts down, at most
/// [`Limits::max_connections`](crate::Limits::max_connections) open at once.
pub(crate) async fn listen(vat: Arc<VatInner>, listener: TcpListener, acceptor: TlsAcceptor) {
    let permits = Arc::new(Semaphore::new(vat.limits.max_connections));
    let mut shutdown = vat.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let vat2 = vat.clone();
                        let acceptor = acceptor.clone();
                        vat.spawn(async move {
                            serve_inbound(vat2, tcp, acceptor).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(%addr, limit = vat.limits.max_connections,
                            "connection limit reached; refusing a connection");
                        drop(tcp);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Completes the handshake of one accepted connection and serves its session.
async fn serve_inbound(vat: Arc<VatInner>, tcp: TcpStream, acceptor: TlsAcceptor) {
    match transport::accept(tcp, &acceptor, vat.limits.handshake_timeout).await {
        Ok((stream, peer)) => {
            let (handle, rx) = vat.new_session(peer, true);
            driver::run(vat, handle, rx, stream).await;
        }
        Err(e) => tracing::debug!(error = %e, "inbound handshake failed"),
    }
}

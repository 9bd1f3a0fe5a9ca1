//! The accept loop: takes TCP connections, admits them against the vat's connection
//! budgets ([`super::admission`]), completes the TLS handshake and hands each connection
//! to a session task.
//!
//! A connection over a budget is closed at once, before its handshake, so a flood of
//! connections costs no TLS work. A connection cut during its handshake (to make room
//! for a newcomer, or at the shortened deadline under pressure) is dropped wherever it
//! is, TLS or the wait for `hello`. This module must not read or write frames, and must
//! not block the loop on one peer: each connection runs in its own task.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::admission::{Admitted, Ticket, Waiter};
use super::driver;
use super::handle::SessionHandle;
use super::shared::VatInner;
use crate::broken::Broken;
use crate::transport;

/// How long the loop waits after a failed accept (out of file descriptors, say)
/// before the next, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections until the vat shuts down, within the budgets of
/// [`Limits::max_connections`](crate::Limits::max_connections),
/// [`Limits::max_handshaking`](crate::Limits::max_handshaking) and
/// [`Limits::max_handshaking_per_address`](crate::Limits::max_handshaking_per_address).
pub(crate) async fn listen(vat: Arc<VatInner>, listener: TcpListener, acceptor: TlsAcceptor) {
    let mut shutdown = vat.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => match vat.admission.admit(addr.ip(), Instant::now()) {
                    Ok(Admitted::Now(ticket)) => {
                        vat.spawn(serve_inbound(vat.clone(), tcp, acceptor.clone(), ticket));
                    }
                    Ok(Admitted::Wait(waiter)) => {
                        vat.spawn(wait_and_serve(vat.clone(), tcp, acceptor.clone(), waiter));
                    }
                    Err(refusal) => {
                        drop(tcp);
                        // A flood would flood the log too: warn at the 1st, 2nd, 4th,
                        // 8th... refusal, and count them all in `Vat::stats`.
                        let refused = vat.admission.refused();
                        if refused.is_power_of_two() {
                            tracing::warn!(%addr, %refusal, refused,
                                "refused a connection before TLS");
                        } else {
                            tracing::debug!(%addr, %refusal, "refused a connection before TLS");
                        }
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

/// Holds an accepted connection, unread, until admission hands it a handshake slot,
/// then serves it; closes it if none comes in time or the vat shuts down.
async fn wait_and_serve(vat: Arc<VatInner>, tcp: TcpStream, acceptor: TlsAcceptor, waiter: Waiter) {
    let mut shutdown = vat.shutdown.subscribe();
    let ticket = tokio::select! {
        ticket = waiter.admitted() => ticket,
        _ = shutdown.wait_for(|down| *down) => None,
    };
    match ticket {
        Some(ticket) => serve_inbound(vat, tcp, acceptor, ticket).await,
        None => tracing::debug!("closed a connection that found no handshake slot in time"),
    }
}

/// Completes the handshake of one accepted connection and serves its session, unless
/// admission cuts it before the peer's `hello`. The ticket gives its place back when
/// this ends.
async fn serve_inbound(vat: Arc<VatInner>, tcp: TcpStream, acceptor: TlsAcceptor, ticket: Ticket) {
    // One span per session (see `driver::outbound_session`); the peer's vat ID is
    // recorded once the handshake proves it.
    let span = tracing::info_span!(
        "session",
        peer = tracing::field::Empty,
        direction = "inbound",
        address = tracing::field::Empty,
    );
    if let Ok(addr) = tcp.peer_addr() {
        span.record("address", tracing::field::display(addr));
    }
    serve_inbound_in_span(vat, tcp, acceptor, ticket)
        .instrument(span)
        .await;
}

/// [`serve_inbound`], inside the session's span.
async fn serve_inbound_in_span(
    vat: Arc<VatInner>,
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    mut ticket: Ticket,
) {
    // The handshake's state is gone before the session is awaited, so this task holds
    // no slot for it (nor for the TLS stream) for the session's whole life.
    let Some((handle, session)) = handshake(&vat, tcp, &acceptor, &mut ticket).await else {
        return;
    };
    let why = tokio::select! {
        biased;
        why = ticket.cut() => why,
        () = session => return,
    };
    // Cut before the peer's `hello`: the session task is dropped with the connection.
    // The peer had no `hello` from it answered, so it holds nothing of ours and we
    // nothing of its; only the vat's session list still names it.
    tracing::debug!(peer = %handle.peer(), why, "inbound connection cut before hello");
    handle.mark_closed(&Broken::disconnected(why));
    vat.forget_session(&handle);
}

/// The TLS handshake of an admitted connection; on success, its session registered
/// with the vat and the future that serves it. `None` if the handshake failed or
/// admission cut it.
async fn handshake(
    vat: &Arc<VatInner>,
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    ticket: &mut Ticket,
) -> Option<(SessionHandle, impl Future<Output = ()> + Send + 'static)> {
    let timeout = ticket.tls_timeout(Instant::now());
    // `biased`: a cut connection is dropped before any more of its bytes are handled.
    let accepted = tokio::select! {
        biased;
        why = ticket.cut() => {
            tracing::debug!(why, "inbound connection cut during TLS");
            return None;
        }
        accepted = transport::accept(tcp, acceptor, timeout) => accepted,
    };
    let (stream, peer) = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::debug!(error = %e, "inbound handshake failed");
            return None;
        }
    };
    tracing::Span::current().record("peer", tracing::field::display(peer));
    let (handle, rx) = vat.new_session(peer, true);
    handle.on_established(ticket.promotion());
    let session = driver::run(vat.clone(), handle.clone(), rx, stream);
    Some((handle, session))
}

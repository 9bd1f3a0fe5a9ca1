//! Flow control of a program's own sends to one session: the streaming window behind
//! [`Ref::send_streaming`](super::Ref::send_streaming), and the count of bytes posted
//! and not yet written that bounds every other send (`Limits::max_unsent`).
//!
//! In the spirit of Cap'n Proto's streaming calls: a streaming send asks a question, so
//! the callee's answer acknowledges it; the bytes of streaming calls sent and not yet
//! answered are the window's, and a producer that awaits each streaming send never has
//! more than the window plus the call it just made in flight. Nothing here touches the
//! network or spawns a task: the window is released by the call's resolver
//! ([`StreamAck`]), and waiters wait on a [`Notify`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::Notify;

use crate::broken::{Broken, BrokenKind};

/// Bytes a call is counted for, against the window and `max_unsent`: its method name,
/// its arguments, and a fixed allowance for the message around them (so that even an
/// empty call counts).
pub(crate) fn call_bytes(method: &str, data: &[u8]) -> usize {
    const MESSAGE_ALLOWANCE: usize = 64;
    MESSAGE_ALLOWANCE + method.len() + data.len()
}

/// The streaming window of one session: bytes of streaming calls sent and not yet
/// answered, at most `limit` before the next `send_streaming` waits.
#[derive(Debug)]
pub(crate) struct Window {
    limit: usize,
    in_flight: Mutex<usize>,
    room: Notify,
}

impl Window {
    pub(crate) fn new(limit: usize) -> Arc<Window> {
        Arc::new(Window {
            limit,
            in_flight: Mutex::new(0),
            room: Notify::new(),
        })
    }

    /// Counts a streaming call of `bytes` as in flight; `ack` releases it.
    pub(crate) fn open(
        self: &Arc<Window>,
        bytes: usize,
        errors: &Arc<OnceLock<Broken>>,
    ) -> StreamAck {
        *self.lock() += bytes;
        StreamAck {
            window: self.clone(),
            bytes,
            errors: errors.clone(),
        }
    }

    /// Waits until the bytes in flight are within the window.
    pub(crate) async fn room(&self) {
        loop {
            // Registered before the check, so an answer arriving in between still wakes.
            let notified = self.room.notified();
            if *self.lock() <= self.limit {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The acknowledgement of one streaming call: given to the call's resolver, it gives
/// the call's bytes back to the window when the answer arrives (or the call breaks),
/// and records the first failure for the next streaming send on the same reference.
#[derive(Debug)]
pub(crate) struct StreamAck {
    window: Arc<Window>,
    bytes: usize,
    errors: Arc<OnceLock<Broken>>,
}

impl StreamAck {
    /// The call was answered: `failure` is its error, if it failed.
    pub(crate) fn done(self, failure: Option<Broken>) {
        if let Some(b) = failure {
            // The first failure wins; later ones are consequences of it as often as not.
            let _ = self.errors.set(b);
        }
        // Dropping `self` releases the bytes (see `Drop`).
    }
}

impl Drop for StreamAck {
    /// A resolver dropped unanswered (its session ended) releases the bytes too, so a
    /// waiting producer wakes and learns of the end on its next send.
    fn drop(&mut self) {
        let mut in_flight = self.window.lock();
        *in_flight = in_flight.saturating_sub(self.bytes);
        drop(in_flight);
        self.window.room.notify_waiters();
    }
}

/// Bytes of calls posted to one session and not yet written to its connection, within
/// `max_unsent` (one call larger than the bound goes alone).
#[derive(Debug)]
pub(crate) struct Unsent {
    bytes: AtomicUsize,
    peak: AtomicUsize,
    limit: usize,
}

impl Unsent {
    pub(crate) fn new(limit: usize) -> Unsent {
        Unsent {
            bytes: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limit,
        }
    }

    /// Counts `bytes` more, or refuses them when they would pass the bound: the error
    /// says how to wait for room instead.
    pub(crate) fn reserve(&self, bytes: usize) -> Result<(), Broken> {
        let counted = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now == 0 || now.saturating_add(bytes) <= self.limit).then_some(now + bytes)
            });
        match counted {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(now) => Err(Broken::new(
                BrokenKind::TooLarge,
                format!(
                    "{now} bytes of calls are already waiting to be written to this peer, \
                     and {bytes} more would pass the limit of {} (Limits::max_unsent): the \
                     peer reads more slowly than this vat sends; use Ref::send_streaming, \
                     which waits for room, or send less at a time",
                    self.limit
                ),
            )),
        }
    }

    /// Counts `bytes` more without a check (streaming calls, bounded by their window).
    pub(crate) fn add(&self, bytes: usize) {
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.peak.fetch_max(before + bytes, Ordering::Relaxed);
    }

    /// `bytes` were written (or will never be).
    pub(crate) fn release(&self, bytes: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_sub(bytes))
            });
    }

    /// Bytes now counted.
    pub(crate) fn now(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// The most bytes ever counted at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_refuses_past_the_limit_but_lets_one_large_call_go_alone() {
        let u = Unsent::new(100);
        u.reserve(1_000).unwrap();
        let e = u.reserve(1).unwrap_err();
        assert_eq!(e.kind(), BrokenKind::TooLarge);
        assert!(e.message().contains("send_streaming"), "{e}");
        u.release(1_000);
        u.reserve(60).unwrap();
        u.reserve(40).unwrap();
        assert!(u.reserve(1).is_err());
        assert_eq!((u.now(), u.peak()), (100, 1_000));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn window_waits_for_acknowledgements_and_records_the_first_failure() {
        let w = Window::new(100);
        let errors = Arc::new(OnceLock::new());
        let first = w.open(80, &errors);
        w.room().await;
        let second = w.open(80, &errors);
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        first.done(Some(Broken::new(BrokenKind::Failed, "disk full")));
        waiting.await.unwrap();
        second.done(Some(Broken::new(BrokenKind::Failed, "later")));
        assert_eq!(errors.get().map(Broken::message), Some("disk full"));
        assert_eq!(*w.lock(), 0);
    }
}

//! [`ReconnectingRef`]: a reference made from a sturdy ref that, once its connection
//! has broken, enlivens the sturdy ref again on the next send, with bounded exponential
//! backoff ([`Reconnect`]).
//!
//! Live references stay fail-stop, as E specifies: a call already sent when the
//! connection breaks breaks too, and is never sent again (it may or may not have run).
//! Only the next send reconnects. This module must not retry a call, keep the vat
//! running (it holds the vat's shared state, not a [`crate::Vat`]), or hold its lock
//! while a call is awaited.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::reference::Ref;
use super::shared::VatInner;
use crate::broken::{Broken, BrokenKind};
use crate::sturdy::SturdyRef;

/// How a [`ReconnectingRef`] retries: the first attempt after a break is immediate,
/// then each waits twice as long as the one before, from `initial_delay` up to
/// `max_delay`, for at most `max_attempts` attempts in all.
///
/// The defaults (100 ms, 5 s, 8 attempts) wait 11.3 s in all (0.1 + 0.2 + 0.4 + 0.8 +
/// 1.6 + 3.2 + 5 s) before giving up.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let patient = captp::Reconnect {
///     max_attempts: 20,
///     ..captp::Reconnect::default()
/// };
/// assert_eq!(patient.initial_delay, Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// The wait before the second attempt. Default 100 ms.
    pub initial_delay: Duration,
    /// The longest wait between two attempts. Default 5 s.
    pub max_delay: Duration,
    /// Attempts per outage, the first (immediate) one included; 0 counts as 1.
    /// Default 8.
    pub max_attempts: u32,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: 8,
        }
    }
}

/// A reference to the object a sturdy ref designates that reconnects: when its
/// connection has broken (the server restarted, the network came back), the next
/// [`send`](ReconnectingRef::send) enlivens the sturdy ref again, retrying with the
/// backoff of its [`Reconnect`] policy, and then sends.
///
/// Made by [`crate::Vat::enliven_reconnecting`]. Cheap to clone; clones share the
/// connection and reconnect once for all.
///
/// # Fail-stop
///
/// Calls in flight when the connection breaks still break (with
/// [`BrokenKind::Disconnected`]): they may have run, so they are never sent again. Only
/// sends made after the break reconnect. Pipelined references obtained from an earlier
/// connection ([`Ref::send_ref`] on [`current`](ReconnectingRef::current)) stay broken.
///
/// # Giving up
///
/// When the server stays away for `max_attempts` attempts, the send breaks with
/// [`BrokenKind::Unreachable`] and a message saying how many attempts over how long
/// ("gave up reconnecting after 8 attempts over 11.3s: ..."), and the reference stays
/// broken like a plain [`Ref`]: make a new one to try again. An answer that no
/// reconnection can change ([`BrokenKind::UnknownObject`]: revoked or never exported;
/// [`BrokenKind::VatIdMismatch`]) breaks it at once, and so does the local vat shutting
/// down.
///
/// # Examples
///
/// ```
/// use captp::{Args, Reply, Vat};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Vat::builder().listen("127.0.0.1:0").start().await?;
/// let uri = server.export_named("echo", |_: &str, args: Args| match args.decode::<(u32,)>() {
///     Ok((n,)) => Reply::ok(n),
///     Err(e) => Reply::err(e),
/// })?;
///
/// let client = Vat::builder().start().await?;
/// let echo = client.enliven_reconnecting(&uri);
/// let n: u32 = echo.send("echo", (7,)).await?;
/// assert_eq!(n, 7);
/// assert_eq!(echo.reconnects(), 0);
/// client.shutdown().await;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReconnectingRef {
    shared: Arc<Shared>,
}

struct Shared {
    vat: Arc<VatInner>,
    sturdy: SturdyRef,
    policy: Reconnect,
    state: tokio::sync::Mutex<State>,
    /// Successful connections after the first.
    reconnects: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The live reference of the current connection, once there has been one.
    current: Option<Ref>,
    /// Set when the reference has given up for good; every later send breaks with it.
    dead: Option<Broken>,
    /// Whether a connection ever succeeded.
    connected_once: bool,
}

impl ReconnectingRef {
    pub(crate) fn new(vat: Arc<VatInner>, sturdy: SturdyRef, policy: Reconnect) -> Self {
        ReconnectingRef {
            shared: Arc::new(Shared {
                vat,
                sturdy,
                policy,
                state: tokio::sync::Mutex::new(State::default()),
                reconnects: AtomicU64::new(0),
            }),
        }
    }

    /// Sends `method` with `args` and awaits the result, decoded as `T`: first
    /// connecting (or reconnecting, with backoff) if there is no live connection.
    ///
    /// # Errors
    ///
    /// The call's [`Broken`], as for [`Ref::send`]; [`BrokenKind::Unreachable`] when
    /// reconnecting gave up (see [Giving up](ReconnectingRef#giving-up)).
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<T, Broken> {
        let live = self.current().await?;
        live.send(method, args).await
    }

    /// The live reference of the current connection, connecting or reconnecting first
    /// if there is none. Use it for what [`ReconnectingRef::send`] does not offer
    /// (pipelining, one-way sends, watching for the break with [`Ref::when_broken`]);
    /// it does not reconnect by itself.
    ///
    /// # Errors
    ///
    /// As for [`ReconnectingRef::send`], without the call.
    pub async fn current(&self) -> Result<Ref, Broken> {
        let mut state = self.shared.state.lock().await;
        if let Some(dead) = &state.dead {
            return Err(dead.clone());
        }
        if let Some(live) = &state.current {
            if live.broken_reason().is_none() {
                return Ok(live.clone());
            }
        }
        match self.connect().await {
            Ok(live) => {
                if state.connected_once {
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                state.connected_once = true;
                state.current = Some(live.clone());
                Ok(live)
            }
            Err(broken) => {
                state.current = None;
                state.dead = Some(broken.clone());
                Err(broken)
            }
        }
    }

    /// How many times this reference has connected again after a break.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// The sturdy ref this reference enlivens.
    pub fn sturdy_ref(&self) -> &SturdyRef {
        &self.shared.sturdy
    }

    /// Enlivens the sturdy ref until the fetch answers, with backoff between attempts.
    async fn connect(&self) -> Result<Ref, Broken> {
        let policy = self.shared.policy;
        let attempts = policy.max_attempts.max(1);
        let started = Instant::now();
        let mut delay = policy.initial_delay;
        let mut last = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(policy.max_delay);
            }
            if *self.shared.vat.shutdown.borrow() {
                return Err(Broken::disconnected("the local vat has shut down"));
            }
            let promise = super::enliven(&self.shared.vat, &self.shared.sturdy);
            match promise.when_settled::<Ref>().await {
                Ok(live) => return Ok(live),
                Err(b)
                    if matches!(b.kind(), BrokenKind::Unreachable | BrokenKind::Disconnected) =>
                {
                    tracing::debug!(attempt, error = %b, "reconnecting: attempt failed");
                    last = Some(b);
                }
                Err(b) => return Err(b),
            }
        }
        let last = last.map_or_else(String::new, |b| format!(": {b}"));
        Err(Broken::new(
            BrokenKind::Unreachable,
            format!(
                "gave up reconnecting after {attempts} attempts over {:.1?}{last}",
                started.elapsed()
            ),
        ))
    }
}

impl std::fmt::Debug for ReconnectingRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sturdy ref's `Debug` is redacted.
        f.debug_struct("ReconnectingRef")
            .field("sturdy", &self.shared.sturdy)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

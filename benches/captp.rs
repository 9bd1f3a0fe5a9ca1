//! The captp benchmark: captp against a plain TLS echo "floor", in one process run.
//!
//! ```sh
//! cargo bench --bench captp              # the full run (about 30 s on two cores)
//! cargo bench --bench captp -- --quick   # every count shrunk: a smoke run of seconds
//! cargo bench --bench captp -- rtt       # only the phases whose name contains "rtt"
//! cargo bench --bench captp -- typed     # only the typed ones (no dynamic figure to divide by)
//! cargo bench --bench captp -- --awake   # keep idle CPUs polling (needs root; see below)
//! cargo bench --bench captp -- --rounds 5  # rounds per phase (full run: 3, quick: 1)
//! ```
//!
//! Two peers answer the same calls on 127.0.0.1, and captp answers some of them twice:
//!
//! - **captp**: a server [`Vat`] exporting one object (`echo`, `blob`, `next`, `value`),
//!   called from client vats through [`Ref::send`] / [`Ref::send_ref`].
//! - **typed**: the same server vat and the same calls, written with
//!   `#[captp::interface]` (the trait [`Chain`]): client vats call the generated stub
//!   `ChainRef` (`echo`, `next`, `value`), and the object is the generated adapter
//!   `ChainServer` around a plain `impl Chain`. A typed call with one argument sends it
//!   as an array of one where the dynamic call sends the value alone (one byte more);
//!   otherwise the messages are the same. Measured in the `rtt` and `chain` phases, to
//!   show what the typed layer costs over the dynamic one.
//! - **handoff**: the same server vat and dynamic calls, on a reference a client vat got
//!   from a third vat (an introducer in the server runtime, holding a reference to the
//!   server's object) and picked up at the server by three-party handoff; measured
//!   once calls go to the server directly. In the `rtt` phase.
//! - **floor**: tokio-rustls with *captp's own* TLS configuration
//!   ([`transport::server_config`], [`transport::client_config`], [`transport::connect`]
//!   and [`transport::accept`]: TLS 1.3, mutual authentication, aws-lc-rs, no
//!   resumption), carrying the same serde values as CBOR (ciborium) in length-prefixed
//!   frames. The floor server decodes each request and encodes the echo, as captp's
//!   object does, so both sides do the same serialization work.
//!
//! The server side of both peers runs on one tokio runtime and the client side on
//! another, each a `new_multi_thread().worker_threads(1)` runtime with its own worker
//! thread. Multi-thread runtimes are used because a [`Vat`] spawns its session tasks on
//! the runtime it was started on, and those tasks must keep running while nothing
//! `block_on`s that runtime (the server's never is, during measurement). Every
//! measurement body is *spawned* onto the client runtime rather than run in `block_on`,
//! so the benchmark's client code and the client sessions share one thread, as the server
//! code and the server sessions do: two busy threads in all, one per core of the target
//! machine.
//!
//! Metrics (one JSON object per line on stdout, then a table of captp/floor and
//! typed/captp ratios with the targets from the issues):
//!
//! - `rtt`: sequential echo of a small struct (`Ping`), one call outstanding (all three
//!   peers, and `handoff`: the captp call on a reference a third vat introduced and
//!   handed off, PROTOCOL.md 9.16, against the one enlivened directly).
//! - `inflight`: the same call with 64 and 256 calls outstanding on one connection.
//! - `chain`: 100 dependent calls, awaited one by one or pipelined (captp and typed; the
//!   floor has no pipelining, and its awaited chain is 100 round trips).
//! - `setup`: connect, mutual TLS handshake, fetch of the sturdy ref, first call answered.
//! - `blob`: echo of a 64 KiB byte string with 16 outstanding, and of a 1 MiB one with 4
//!   outstanding (the same bytes in all); MB/s (10^6 bytes) one way. Both vats, and the
//!   floor, accept frames up to [`BLOB_MAX_FRAME`] for it: the default `max_frame`
//!   (1 MiB) holds no 1 MiB payload with its framing.
//! - `stream`: one-way throughput with flow control against a slow consumer (captp
//!   only): `Ref::send_streaming` of 1 KiB calls to an object that takes
//!   [`STREAM_RATE`] a second; calls/s, and the most bytes the sender held unsent
//!   (`SessionInfo::peak_unsent_bytes`, at most `Limits::stream_window` plus one call)
//!   and its RSS growth.
//! - `sessions`: idle sessions opened on the one listening vat in steps to 100, 1,000
//!   and 10,000 ([`MAX_SESSIONS`]; quick: 30, 100, 300), all from 127.0.0.1,
//!   [`OPEN_WINDOW`] at a time, each open once a first call is answered. The server
//!   vat's connection budgets are raised by configuration (`server_limits`). Each
//!   client is a fresh client vat with its own identity (generating one takes about
//!   40 µs, so 10,000 are cheap; the server keys sessions by session, not vat ID, so
//!   shared identities would work too, but would not be what real clients look like).
//!   Per step: RSS growth per idle session so far (client and server halves are both
//!   in this one process), the client vats' own cost measured before their sessions
//!   open and reported apart as `client_bytes_per_session`, and the sessions opened
//!   per second (`opened_per_s`); printed as a small table after the main one. captp
//!   is measured first, on a heap earlier phases have not churned; the floor then
//!   reuses memory captp freed, so its small figures read low. Each session takes two
//!   file descriptors here: the phase raises the open-file limit (the soft limit to
//!   the hard one, and the hard one too where the process may), and where it is still
//!   too low it says so and measures the largest count that fits. Then calls/s with 1,
//!   10, 100 and 1,000 connections (quick: 300) each doing sequential calls.
//! - `process`: the peak RSS of the whole process (captp and floor runs together).
//!
//! A full run measures each phase (but memory) in three rounds, each with a third of the
//! counts: captp and floor alternate which goes first, and where typed runs too it runs
//! between them (captp, typed, floor, then floor, typed, captp), so it is always next to
//! the dynamic figure it is divided by. Every figure printed is the median of its
//! rounds (the JSON lines carry `"rounds":3`). A virtual machine's speed drifts over
//! seconds, and this keeps the peers under the same drift.
//!
//! Progress goes to stderr; stdout holds only the JSON lines and the table, which also
//! says how much CPU other processes took during the run. Every loop is bounded by a
//! count or a deadline, and every phase by [`PHASE_LIMIT`].
//!
//! On a virtual machine, an idle vCPU halts, and waking it for the other side of a round
//! trip costs tens of microseconds: on an otherwise idle VM the latency figures (`rtt`,
//! awaited `chain`, one connection) mostly measure that, for both peers alike. When the
//! vCPUs are kept busy they measure the protocol's own cost. `--awake` does that the
//! standard way: it writes a latency of 0 to Linux's `/dev/cpu_dma_latency` (PM QoS) and
//! holds the file open for the run, so idle CPUs poll instead of halting; the request
//! ends when the process does. It needs root, and says so if it cannot.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use captp::internal::transport::{self, TlsStream};
use captp::{Args, Identity, Object, Promise, Reply, SturdyRef, Vat, VatId};
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

/// Any failure: the benchmark stops and reports it.
type BenchError = Box<dyn std::error::Error + Send + Sync>;
type BenchResult<T> = Result<T, BenchError>;

/// The bound on one phase (one metric for one peer); past it the run fails.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// The TLS handshake timeout both peers use.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The frame limit of the `blob` phase's vats (`Limits::max_frame`), raised from the
/// default 1 MiB so that a 1 MiB payload fits with its framing.
const BLOB_MAX_FRAME: usize = 2 << 20;
/// Largest floor frame accepted: the captp vats' limit.
const FLOOR_MAX_FRAME: usize = BLOB_MAX_FRAME;
/// Buffered reads on a floor connection (captp's session reads in 16 KiB chunks).
const FLOOR_READ_BUF: usize = 16 * 1024;
/// File descriptors kept free for the runtimes, listeners and the rest.
const SPARE_FDS: u64 = 64;
/// The most client sessions the benchmark opens on the one listening vat; the server
/// vat's connection budget is raised to this (plus [`CONNECTION_MARGIN`]).
const MAX_SESSIONS: usize = 10_000;
/// How long the `sessions` phase waits for its connections to close at its end.
const FD_WAIT: Duration = Duration::from_secs(20);
/// Sessions the `sessions` phase opens at once (and so the handshakes one source
/// address has in flight: the server's per-address cap is raised to this).
const OPEN_WINDOW: usize = 32;
/// Percent of the machine's CPU time other processes may use before a run counts as
/// disturbed.
const OTHERS_QUIET: f64 = 5.0;
/// Calls a second the `stream` phase's consumer takes (in ticks of 1 ms).
const STREAM_RATE: usize = 20_000;
/// Inbound connections the server vat takes beyond [`MAX_SESSIONS`] (the other
/// phases' own connections, and those still closing).
const CONNECTION_MARGIN: usize = 64;

// ---- configuration ---------------------------------------------------------------

/// How much of everything to do: the issue's counts, or the `--quick` ones.
#[derive(Debug, Clone, Copy)]
struct Counts {
    rtt_warmup: usize,
    rtt_calls: usize,
    inflight_calls: usize,
    inflight_windows: [usize; 2],
    chain_length: usize,
    chain_warmup: usize,
    chains: usize,
    setup_warmup: usize,
    setups: usize,
    /// Each blob size with the calls kept outstanding for it.
    blob_shapes: [(usize, usize); 2],
    /// Bytes echoed per size (whole calls, rounded up).
    blob_bytes: usize,
    /// Idle sessions open at each step of the `sessions` phase (cumulative).
    idle_levels: [usize; 3],
    stream_calls: usize,
    connection_levels: [usize; 4],
    connection_warmup: usize,
    connection_time: Duration,
}

impl Counts {
    const FULL: Counts = Counts {
        rtt_warmup: 2_000,
        rtt_calls: 20_000,
        inflight_calls: 100_000,
        inflight_windows: [64, 256],
        chain_length: 100,
        chain_warmup: 3,
        chains: 30,
        setup_warmup: 5,
        setups: 200,
        // 16 MiB in flight would pass the client's `max_unsent`; 4 keep the pipe full.
        blob_shapes: [(64 * 1024, 16), (1024 * 1024, 4)],
        blob_bytes: 5_000 * 64 * 1024,
        idle_levels: [100, 1_000, MAX_SESSIONS],
        stream_calls: 40_000,
        connection_levels: [1, 10, 100, 1_000],
        connection_warmup: 10,
        connection_time: Duration::from_secs(3),
    };

    const QUICK: Counts = Counts {
        rtt_warmup: 200,
        rtt_calls: 2_000,
        inflight_calls: 10_000,
        chain_warmup: 1,
        chains: 5,
        setup_warmup: 2,
        setups: 20,
        blob_bytes: 500 * 64 * 1024,
        idle_levels: [30, 100, 300],
        stream_calls: 4_000,
        connection_levels: [1, 10, 100, 300],
        connection_warmup: 2,
        connection_time: Duration::from_millis(300),
        ..Counts::FULL
    };
}

impl Counts {
    /// One round's share of the timed counts, when a phase runs in `rounds` rounds.
    /// Warm-ups and shapes (chain length, windows, sizes) stay whole.
    fn per_round(self, rounds: usize) -> Counts {
        let share = |n: usize| n.div_ceil(rounds.max(1));
        Counts {
            rtt_calls: share(self.rtt_calls),
            inflight_calls: share(self.inflight_calls),
            chains: share(self.chains),
            setups: share(self.setups),
            blob_bytes: share(self.blob_bytes),
            stream_calls: share(self.stream_calls),
            connection_time: self.connection_time / u32::try_from(rounds.max(1)).unwrap_or(1),
            ..self
        }
    }
}

// ---- the payloads ----------------------------------------------------------------

/// The tiny call's argument and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    id: u64,
    seq: u64,
    flag: bool,
    name: String,
}

impl Ping {
    fn new() -> Ping {
        Ping {
            id: 0x00c0_ffee,
            seq: 0,
            flag: true,
            name: "bench-ping".to_owned(),
        }
    }
}

/// A value both peers echo: the captp method that echoes it, the tag that marks it in a
/// floor frame, and the typed stub's method for the same call.
trait Payload: Serialize + DeserializeOwned + PartialEq + Send + Sync + 'static {
    const METHOD: &'static str;
    const TAG: u8;

    /// The echo of `msg` through the typed stub: the call `Ref::send(METHOD, msg)`
    /// makes, written with the method [`Chain`] declares for it.
    fn typed_echo(node: &ChainRef, msg: &Self) -> Promise<Self>;
}

impl Payload for Ping {
    const METHOD: &'static str = "echo";
    const TAG: u8 = 1;

    fn typed_echo(node: &ChainRef, msg: &Ping) -> Promise<Ping> {
        // A typed method takes its argument by value, and the caller keeps `msg` to
        // check the echo: one clone of a 10-byte string, which a dynamic call passing
        // `&msg` does not make (tens of nanoseconds against a round trip of tens of
        // microseconds).
        node.echo(msg.clone())
    }
}

impl Payload for ByteBuf {
    const METHOD: &'static str = "blob";
    const TAG: u8 = 2;

    fn typed_echo(node: &ChainRef, msg: &ByteBuf) -> Promise<ByteBuf> {
        // A copy of the whole blob per call: a typed blob phase would measure it too,
        // which is why there is none.
        node.blob(msg.clone())
    }
}

fn check_echo<T: PartialEq>(sent: &T, got: &T) -> BenchResult<()> {
    if sent == got {
        Ok(())
    } else {
        Err("the echo differs from what was sent".into())
    }
}

// ---- the two peers ---------------------------------------------------------------

/// What each metric needs from a peer. `Client` is what a fresh client needs before it
/// connects (untimed); `Conn` a connection that calls.
trait Peer: Clone + Send + Sync + 'static {
    type Client: Send + Sync + 'static;
    type Conn: Send + 'static;
    const NAME: &'static str;

    /// A fresh client: a new client vat for captp, a new identity for the floor.
    fn prepare(&self) -> impl Future<Output = BenchResult<Self::Client>> + Send;
    /// A fresh client for the `blob` phase: as [`Peer::prepare`], accepting frames up
    /// to [`BLOB_MAX_FRAME`].
    fn prepare_bulk(&self) -> impl Future<Output = BenchResult<Self::Client>> + Send {
        self.prepare()
    }
    /// A connection from `client` (for captp only a reference: the session is set up by
    /// the first call).
    fn connect(
        &self,
        client: &Self::Client,
    ) -> impl Future<Output = BenchResult<Self::Conn>> + Send;
    /// One call, awaited: send `msg` and return its echo.
    fn call<T: Payload>(
        conn: &mut Self::Conn,
        msg: &T,
    ) -> impl Future<Output = BenchResult<T>> + Send;
    /// `total` calls of `msg` with `window` kept outstanding; the time they took.
    fn windowed<T: Payload>(
        conn: Self::Conn,
        msg: T,
        window: usize,
        total: usize,
    ) -> impl Future<Output = BenchResult<Duration>> + Send;
    /// Shuts a client down.
    fn release(client: Self::Client) -> impl Future<Output = ()> + Send;
}

/// One tiny call with the next sequence number, checked.
async fn ping<P: Peer>(conn: &mut P::Conn, msg: &mut Ping) -> BenchResult<()> {
    msg.seq += 1;
    let echo = P::call(conn, &*msg).await?;
    check_echo(msg, &echo)
}

/// The captp peer: the sturdy ref of the server vat's benchmark object.
#[derive(Clone)]
struct Captp {
    uri: SturdyRef,
    /// The slow consumer of the `stream` phase.
    stream_uri: SturdyRef,
}

impl Peer for Captp {
    type Client = Vat;
    type Conn = captp::Ref;
    const NAME: &'static str = "captp";

    async fn prepare(&self) -> BenchResult<Vat> {
        Ok(Vat::builder().start().await?)
    }

    async fn prepare_bulk(&self) -> BenchResult<Vat> {
        Ok(Vat::builder().limits(bulk_limits()).start().await?)
    }

    async fn connect(&self, client: &Vat) -> BenchResult<captp::Ref> {
        Ok(client.enliven(&self.uri))
    }

    async fn call<T: Payload>(conn: &mut captp::Ref, msg: &T) -> BenchResult<T> {
        Ok(conn.send::<T>(T::METHOD, msg).await?)
    }

    async fn windowed<T: Payload>(
        conn: captp::Ref,
        msg: T,
        window: usize,
        total: usize,
    ) -> BenchResult<Duration> {
        windowed_promises(msg, window, total, |msg| conn.send::<T>(T::METHOD, msg)).await
    }

    async fn release(client: Vat) {
        client.shutdown().await;
    }
}

/// The typed captp peer: the same server vat as [`Captp`], called through the stub
/// [`ChainRef`] that `#[captp::interface]` generates, on an object served by the
/// generated [`ChainServer`]. Its figures are reported as the peer `typed`, to compare
/// with `captp` (the dynamic `Ref::send` on a hand-written `Object`).
#[derive(Clone)]
struct Typed {
    uri: SturdyRef,
}

impl Peer for Typed {
    type Client = Vat;
    type Conn = ChainRef;
    const NAME: &'static str = "typed";

    async fn prepare(&self) -> BenchResult<Vat> {
        // A client vat built as `Captp`'s is.
        Ok(Vat::builder().start().await?)
    }

    async fn connect(&self, client: &Vat) -> BenchResult<ChainRef> {
        Ok(ChainRef::from(client.enliven(&self.uri)))
    }

    async fn call<T: Payload>(conn: &mut ChainRef, msg: &T) -> BenchResult<T> {
        Ok(T::typed_echo(conn, msg).await?)
    }

    async fn windowed<T: Payload>(
        conn: ChainRef,
        msg: T,
        window: usize,
        total: usize,
    ) -> BenchResult<Duration> {
        windowed_promises(msg, window, total, |msg| T::typed_echo(&conn, msg)).await
    }

    async fn release(client: Vat) {
        client.shutdown().await;
    }
}

/// The captp peer reached through an introducer: a client vat looks the benchmark
/// object up in a registry that a third vat (the introducer) exports, and is handed
/// off to the server vat (PROTOCOL.md 9.16). Its connection is the handed-off
/// reference once calls go to the server directly; its figures are reported as the
/// peer `handoff`, to compare with `captp` (a reference enlivened directly).
#[derive(Clone)]
struct Introduced {
    /// The introducer's registry: `get()` answers its reference to the benchmark object.
    registry: SturdyRef,
}

impl Peer for Introduced {
    type Client = Vat;
    type Conn = captp::Ref;
    const NAME: &'static str = "handoff";

    async fn prepare(&self) -> BenchResult<Vat> {
        Ok(Vat::builder().start().await?)
    }

    async fn connect(&self, client: &Vat) -> BenchResult<captp::Ref> {
        let echo: captp::Ref = client.enliven(&self.registry).send("get", ()).await?;
        match echo.when_handed_off().await {
            captp::Handoff::Direct => Ok(echo),
            other => Err(format!("the handoff did not complete: {other:?}").into()),
        }
    }

    async fn call<T: Payload>(conn: &mut captp::Ref, msg: &T) -> BenchResult<T> {
        Captp::call(conn, msg).await
    }

    async fn windowed<T: Payload>(
        conn: captp::Ref,
        msg: T,
        window: usize,
        total: usize,
    ) -> BenchResult<Duration> {
        Captp::windowed(conn, msg, window, total).await
    }

    async fn release(client: Vat) {
        client.shutdown().await;
    }
}

/// `total` calls of `msg`, each started by `start`, with `window` kept outstanding; the
/// time they took. The windowed loop of both captp peers, so that they differ only in
/// how a call is made.
async fn windowed_promises<T: Payload>(
    msg: T,
    window: usize,
    total: usize,
    start: impl Fn(&T) -> Promise<T>,
) -> BenchResult<Duration> {
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let (mut sent, mut done) = (0, 0);
    while done < total {
        while sent < total && pending.len() < window {
            pending.push(start(&msg));
            sent += 1;
        }
        let echo = pending.next().await.ok_or("the window emptied early")??;
        check_echo(&msg, &echo)?;
        done += 1;
    }
    Ok(started.elapsed())
}

/// The floor peer: where the TLS echo server listens, and its vat ID (the same identity
/// as the captp server's, so the pinning is the same).
#[derive(Clone)]
struct Floor {
    addr: String,
    vat_id: VatId,
}

/// A floor connection: frames are a 4-byte big-endian length, a payload tag, then CBOR.
struct FloorConn {
    rd: BufReader<ReadHalf<TlsStream>>,
    wr: WriteHalf<TlsStream>,
    out: Vec<u8>,
    body: Vec<u8>,
}

impl Peer for Floor {
    type Client = Identity;
    type Conn = FloorConn;
    const NAME: &'static str = "floor";

    async fn prepare(&self) -> BenchResult<Identity> {
        Ok(Identity::generate()?)
    }

    async fn connect(&self, client: &Identity) -> BenchResult<FloorConn> {
        // A fresh client vat builds its client config on its first connect too.
        let config = transport::client_config(client, self.vat_id)?;
        let (stream, _) =
            transport::connect(&self.addr, config, self.vat_id, HANDSHAKE_TIMEOUT).await?;
        let (rd, wr) = tokio::io::split(stream);
        Ok(FloorConn {
            rd: BufReader::with_capacity(FLOOR_READ_BUF, rd),
            wr,
            out: Vec::with_capacity(256),
            body: Vec::new(),
        })
    }

    async fn call<T: Payload>(conn: &mut FloorConn, msg: &T) -> BenchResult<T> {
        conn.out.clear();
        encode_frame(msg, &mut conn.out)?;
        conn.wr.write_all(&conn.out).await?;
        conn.wr.flush().await?;
        let echo = read_frame(&mut conn.rd, &mut conn.body).await?;
        Ok(echo.ok_or("the floor server closed the connection")?)
    }

    async fn windowed<T: Payload>(
        conn: FloorConn,
        msg: T,
        window: usize,
        total: usize,
    ) -> BenchResult<Duration> {
        let FloorConn {
            mut rd,
            mut wr,
            mut out,
            mut body,
        } = conn;
        let msg = Arc::new(msg);
        let permits = Arc::new(Semaphore::new(window));
        let started = Instant::now();
        // The writer sends while it holds permits, batching what it may send at once
        // into one write; the reader gives a permit back per echo.
        let writer = tokio::spawn({
            let (msg, permits) = (msg.clone(), permits.clone());
            async move {
                out.clear();
                let mut sent = 0;
                while sent < total {
                    permits.acquire().await?.forget();
                    encode_frame(&*msg, &mut out)?;
                    sent += 1;
                    while sent < total {
                        let Ok(permit) = permits.try_acquire() else {
                            break;
                        };
                        permit.forget();
                        encode_frame(&*msg, &mut out)?;
                        sent += 1;
                    }
                    wr.write_all(&out).await?;
                    wr.flush().await?;
                    out.clear();
                }
                Ok::<_, BenchError>(wr)
            }
        });
        for _ in 0..total {
            let echo: T = read_frame(&mut rd, &mut body)
                .await?
                .ok_or("the floor server closed the connection")?;
            check_echo(&*msg, &echo)?;
            permits.add_permits(1);
        }
        let elapsed = started.elapsed();
        drop(writer.await??);
        Ok(elapsed)
    }

    async fn release(_client: Identity) {}
}

/// Appends one floor frame holding `msg` to `out`.
fn encode_frame<T: Payload>(msg: &T, out: &mut Vec<u8>) -> BenchResult<()> {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, T::TAG]);
    ciborium::into_writer(msg, &mut *out)?;
    let len = u32::try_from(out.len() - at - 4)?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Reads one floor frame body (tag and CBOR) into `body`; `None` at a clean end.
async fn read_frame_body<R: AsyncRead + Unpin>(
    rd: &mut R,
    body: &mut Vec<u8>,
) -> BenchResult<Option<()>> {
    let mut header = [0u8; 4];
    match rd.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = usize::try_from(u32::from_be_bytes(header))?;
    if len == 0 || len > FLOOR_MAX_FRAME {
        return Err(format!("bad floor frame length {len}").into());
    }
    body.resize(len, 0);
    rd.read_exact(body).await?;
    Ok(Some(()))
}

/// Reads one floor frame and decodes it as a `T`.
async fn read_frame<T: Payload, R: AsyncRead + Unpin>(
    rd: &mut R,
    body: &mut Vec<u8>,
) -> BenchResult<Option<T>> {
    if read_frame_body(rd, body).await?.is_none() {
        return Ok(None);
    }
    decode_body(body).map(Some)
}

fn decode_body<T: Payload>(body: &[u8]) -> BenchResult<T> {
    match body.split_first() {
        Some((&tag, cbor)) if tag == T::TAG => Ok(ciborium::from_reader(cbor)?),
        _ => Err("a floor frame with the wrong tag".into()),
    }
}

// ---- the servers -----------------------------------------------------------------

/// The captp server's benchmark object: a node of a chain at `depth`.
struct Node {
    depth: u64,
}

impl Object for Node {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            Ping::METHOD => Reply::from(args.decode::<Ping>()),
            ByteBuf::METHOD => Reply::from(args.decode::<ByteBuf>()),
            // `next` and `value` take no arguments, and check it (as a generated server
            // does: the typed phases compare the typed layer, not the check).
            "next" => match args.decode::<()>() {
                Ok(()) => Reply::object(Node {
                    depth: self.depth + 1,
                }),
                Err(e) => Reply::err(e),
            },
            "value" => match args.decode::<()>() {
                Ok(()) => Reply::ok(self.depth),
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

/// The typed twin of [`Node`]: the same methods under the same names, so a typed call is
/// on the wire the dynamic call (with its one argument as an array of one), served by
/// the generated `ChainServer` instead of a hand-written `match`.
#[captp::interface]
trait Chain {
    /// The `echo` of [`Ping`] (the `rtt` phase).
    fn echo(&self, ping: Ping) -> Ping;
    /// The `blob` echo (no typed phase uses it: see `Payload::typed_echo`).
    fn blob(&self, data: ByteBuf) -> ByteBuf;
    /// The next node of the chain: a `ChainRef` at once, pipelined.
    fn next(&self) -> impl Chain;
    /// The node's depth.
    fn value(&self) -> u64;
}

/// The typed server's object: a node of a chain at `depth`, as [`Node`].
struct ChainNode {
    depth: u64,
}

impl Chain for ChainNode {
    fn echo(&self, ping: Ping) -> Ping {
        ping
    }

    fn blob(&self, data: ByteBuf) -> ByteBuf {
        data
    }

    fn next(&self) -> ChainRef {
        ChainRef::serve(ChainNode {
            depth: self.depth + 1,
        })
    }

    fn value(&self) -> u64 {
        self.depth
    }
}

/// The `stream` phase's consumer: each `take` answers when the consumer's clock gives
/// it a turn, [`STREAM_RATE`] a second.
struct SlowConsumer {
    turns: Arc<Semaphore>,
}

impl SlowConsumer {
    /// Starts the clock on the current runtime (the server's); it stops when the
    /// consumer is gone.
    fn start() -> SlowConsumer {
        let turns = Arc::new(Semaphore::new(0));
        let clock = Arc::downgrade(&turns);
        tokio::spawn(async move {
            let per_tick = STREAM_RATE / 1_000;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(turns) = clock.upgrade() else { return };
                // Turns do not pile up while nobody calls.
                let missing = per_tick.saturating_sub(turns.available_permits());
                turns.add_permits(missing);
            }
        });
        SlowConsumer { turns }
    }
}

impl Object for SlowConsumer {
    fn call(&self, method: &str, args: Args) -> Reply {
        if method != "take" {
            return Reply::unknown_method(method);
        }
        if let Err(e) = args.decode::<ByteBuf>() {
            return Reply::err(e);
        }
        let turns = self.turns.clone();
        Reply::later(async move {
            match turns.acquire().await {
                Ok(turn) => {
                    turn.forget();
                    Ok(())
                }
                Err(_) => Err(captp::Broken::failed("the consumer stopped")),
            }
        })
    }
}

/// Decodes a floor request and appends the encoded echo to `out`, as captp's object
/// decodes its arguments and encodes its result.
fn floor_echo(body: &[u8], out: &mut Vec<u8>) -> BenchResult<()> {
    match body.first() {
        Some(&Ping::TAG) => encode_frame(&decode_body::<Ping>(body)?, out),
        Some(&ByteBuf::TAG) => encode_frame(&decode_body::<ByteBuf>(body)?, out),
        _ => Err("a floor frame with an unknown tag".into()),
    }
}

/// Serves one floor connection: echoes every frame, writing once per batch of frames
/// that arrived together (as captp's session writes once per read).
async fn floor_serve(tcp: tokio::net::TcpStream, acceptor: tokio_rustls::TlsAcceptor) {
    let served = async {
        let (stream, _peer) = transport::accept(tcp, &acceptor, HANDSHAKE_TIMEOUT).await?;
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(FLOOR_READ_BUF, rd);
        let (mut body, mut out) = (Vec::new(), Vec::new());
        while read_frame_body(&mut rd, &mut body).await?.is_some() {
            floor_echo(&body, &mut out)?;
            if rd.buffer().is_empty() || out.len() >= FLOOR_READ_BUF {
                wr.write_all(&out).await?;
                wr.flush().await?;
                out.clear();
            }
        }
        Ok::<_, BenchError>(())
    };
    // A client going away mid-frame is normal at the end of a phase.
    let _ = served.await;
}

/// Accepts floor connections until the server runtime shuts down at the end of the run.
async fn floor_listen(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(floor_serve(tcp, acceptor.clone()));
    }
}

/// The server vat's limits: the bulk frame limit ([`bulk_limits`]), with the connection budgets raised by
/// configuration for [`MAX_SESSIONS`] clients, all from 127.0.0.1, [`OPEN_WINDOW`] of
/// them in the handshake at once.
fn server_limits() -> captp::Limits {
    let mut limits = bulk_limits();
    limits.max_connections = MAX_SESSIONS + CONNECTION_MARGIN;
    limits.max_handshaking = limits.max_handshaking.max(4 * OPEN_WINDOW);
    limits.max_handshaking_per_address = 2 * OPEN_WINDOW;
    limits
}

/// Starts both servers on the current (server) runtime: the captp vat exports the
/// dynamic and the typed benchmark objects. A second vat, the introducer of the
/// `handoff` peer, holds a reference to the dynamic one and hands it on.
async fn start_servers() -> BenchResult<(Vec<Vat>, Captp, Typed, Introduced, Floor)> {
    let identity = Identity::generate()?;
    // The frame limit serves only the `blob` phase; no other phase's frames come near it.
    let vat = Vat::builder()
        .identity(identity.clone())
        .listen("127.0.0.1:0")
        .limits(server_limits())
        .start()
        .await?;
    let uri = vat.export(Node { depth: 0 })?;
    let typed = Typed {
        uri: vat.export(ChainServer::new(ChainNode { depth: 0 }))?,
    };
    let stream_uri = vat.export(SlowConsumer::start())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let floor = Floor {
        addr: listener.local_addr()?.to_string(),
        vat_id: identity.vat_id(),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(transport::server_config(&identity)?);
    tokio::spawn(floor_listen(listener, acceptor));
    let introducer = Vat::builder().listen("127.0.0.1:0").start().await?;
    // A settled reference (an import, not the fetch's promise): what is handed off.
    let echo: captp::Ref = introducer.enliven(&uri).when_settled().await?;
    let registry = introducer.export(move |method: &str, _: Args| match method {
        "get" => Reply::reference(echo.clone()),
        _ => Reply::unknown_method(method),
    })?;
    let introduced = Introduced { registry };
    Ok((
        vec![vat, introducer],
        Captp { uri, stream_uri },
        typed,
        introduced,
        floor,
    ))
}

// ---- the metrics -----------------------------------------------------------------

/// `rtt`: sequential tiny calls, one outstanding.
async fn rtt<P: Peer>(peer: P, counts: Counts) -> BenchResult<Vec<Line>> {
    let client = peer.prepare().await?;
    let mut conn = peer.connect(&client).await?;
    let mut msg = Ping::new();
    for _ in 0..counts.rtt_warmup {
        ping::<P>(&mut conn, &mut msg).await?;
    }
    let mut samples = Samples::with_capacity(counts.rtt_calls);
    for _ in 0..counts.rtt_calls {
        let started = Instant::now();
        ping::<P>(&mut conn, &mut msg).await?;
        samples.push(started.elapsed());
    }
    drop(conn);
    P::release(client).await;
    let s = samples.summary();
    Ok(vec![
        Line::new(P::NAME, "rtt")
            .us("p50_us", s.p50)
            .us("p90_us", s.p90)
            .us("p99_us", s.p99)
            .us("mean_us", s.mean),
    ])
}

/// `inflight`: the tiny call with a window of calls outstanding on one connection.
async fn inflight<P: Peer>(peer: P, counts: Counts) -> BenchResult<Vec<Line>> {
    let client = peer.prepare().await?;
    let mut lines = Vec::new();
    for window in counts.inflight_windows {
        let mut conn = peer.connect(&client).await?;
        ping::<P>(&mut conn, &mut Ping::new()).await?;
        let total = counts.inflight_calls;
        let took = P::windowed(conn, Ping::new(), window, total).await?;
        lines.push(
            Line::new(P::NAME, "inflight")
                .tag("window", window)
                .count("calls_per_s", per_second(total, took)),
        );
    }
    P::release(client).await;
    Ok(lines)
}

/// A reference to a chain node, dynamic or typed, as `captp_chain` steps along it.
trait Hop: Clone + Send + Sync + 'static {
    /// The next node, pipelined: `send_ref("next", ())` or the stub's `next()`.
    fn next_hop(&self) -> Self;
    /// The node's depth: `send("value", ())` or the stub's `value()`.
    fn depth(&self) -> Promise<u64>;
}

impl Hop for captp::Ref {
    fn next_hop(&self) -> captp::Ref {
        self.send_ref("next", ())
    }

    fn depth(&self) -> Promise<u64> {
        self.send::<u64>("value", ())
    }
}

impl Hop for ChainRef {
    fn next_hop(&self) -> ChainRef {
        self.next()
    }

    fn depth(&self) -> Promise<u64> {
        self.value()
    }
}

/// `chain` for captp, dynamic or typed: `length` dependent `next` calls, awaited one by
/// one (a `value` call awaited after each step) or pipelined (only the last `value`
/// awaited).
async fn captp_chain<P: Peer>(peer: P, counts: Counts) -> BenchResult<Vec<Line>>
where
    P::Conn: Hop,
{
    let client = peer.prepare().await?;
    let mut root = peer.connect(&client).await?;
    ping::<P>(&mut root, &mut Ping::new()).await?;
    let length = counts.chain_length;
    let mut lines = Vec::new();
    for (mode, pipelined) in [("awaited", false), ("pipelined", true)] {
        let mut samples = Samples::with_capacity(counts.chains);
        for i in 0..counts.chain_warmup + counts.chains {
            let started = Instant::now();
            let mut node = root.clone();
            let mut value = 0;
            for step in 0..length {
                node = node.next_hop();
                if !pipelined || step + 1 == length {
                    value = node.depth().await?;
                }
            }
            let took = started.elapsed();
            if value != length as u64 {
                return Err(format!("the chain ended at {value}, not {length}").into());
            }
            if i >= counts.chain_warmup {
                samples.push(took);
            }
        }
        lines.push(chain_line(P::NAME, mode, length, &samples));
    }
    drop(root);
    P::release(client).await;
    Ok(lines)
}

/// `chain` for the floor: the awaited chain is `length` sequential round trips (there
/// is nothing to pipeline on).
async fn sequential_chain<P: Peer>(peer: P, counts: Counts) -> BenchResult<Vec<Line>> {
    let client = peer.prepare().await?;
    let mut conn = peer.connect(&client).await?;
    let mut msg = Ping::new();
    let mut samples = Samples::with_capacity(counts.chains);
    for i in 0..counts.chain_warmup + counts.chains {
        let started = Instant::now();
        for _ in 0..counts.chain_length {
            ping::<P>(&mut conn, &mut msg).await?;
        }
        if i >= counts.chain_warmup {
            samples.push(started.elapsed());
        }
    }
    drop(conn);
    P::release(client).await;
    Ok(vec![chain_line(
        P::NAME,
        "awaited",
        counts.chain_length,
        &samples,
    )])
}

fn chain_line(peer: &'static str, mode: &str, length: usize, samples: &Samples) -> Line {
    Line::new(peer, "chain")
        .text("mode", mode)
        .tag("length", length)
        .us("p50_us", samples.summary().p50)
}

/// `setup`: a fresh client (untimed), then connect, handshake, fetch and first call
/// answered (timed); the client is shut down untimed.
async fn setup<P: Peer>(peer: P, counts: Counts) -> BenchResult<Vec<Line>> {
    let mut samples = Samples::with_capacity(counts.setups);
    let mut msg = Ping::new();
    for i in 0..counts.setup_warmup + counts.setups {
        let client = peer.prepare().await?;
        let started = Instant::now();
        let mut conn = peer.connect(&client).await?;
        ping::<P>(&mut conn, &mut msg).await?;
        let took = started.elapsed();
        drop(conn);
        P::release(client).await;
        if i >= counts.setup_warmup {
            samples.push(took);
        }
    }
    let s = samples.summary();
    Ok(vec![
        Line::new(P::NAME, "setup")
            .us("p50_us", s.p50)
            .us("p99_us", s.p99),
    ])
}

/// `blob`: echo of a byte string of each size with a window outstanding; MB/s one way.
async fn blob<P: Peer>(peer: P, counts: Counts) -> BenchResult<Vec<Line>> {
    let client = peer.prepare_bulk().await?;
    let mut lines = Vec::new();
    for (size, window) in counts.blob_shapes {
        let mut conn = peer.connect(&client).await?;
        ping::<P>(&mut conn, &mut Ping::new()).await?;
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let total = counts.blob_bytes.div_ceil(size);
        let took = P::windowed(conn, ByteBuf::from(bytes), window, total).await?;
        let mb = (total * size) as f64 / 1e6;
        lines.push(
            Line::new(P::NAME, "blob")
                .tag("size", size)
                .us("mb_s", mb / took.as_secs_f64()),
        );
    }
    P::release(client).await;
    Ok(lines)
}

/// The limits of the vats in the `blob` phase: the defaults, with frames up to
/// [`BLOB_MAX_FRAME`].
fn bulk_limits() -> captp::Limits {
    let mut limits = captp::Limits::default();
    limits.max_frame = BLOB_MAX_FRAME;
    limits
}

/// `stream`: one-way 1 KiB calls with flow control (`Ref::send_streaming`) to a
/// consumer taking [`STREAM_RATE`] a second; calls/s, the sender's peak unsent bytes,
/// and the process's RSS growth over the phase.
async fn stream(peer: Captp, counts: Counts) -> BenchResult<Vec<Line>> {
    let client = peer.prepare().await?;
    let conn = client.enliven(&peer.stream_uri);
    let chunk = ByteBuf::from(vec![7u8; 1024]);
    conn.send::<()>("take", &chunk).await?;
    settle().await;
    let before = rss_bytes()?;
    let started = Instant::now();
    for _ in 0..counts.stream_calls {
        conn.send_streaming("take", &chunk).await?;
    }
    // Every call answered: a last one awaited, behind the others at the consumer.
    conn.send::<()>("take", &chunk).await?;
    let took = started.elapsed();
    let grew = rss_bytes()?.saturating_sub(before);
    let stats = client.stats().await;
    let peak = stats
        .sessions
        .iter()
        .map(|s| s.peak_unsent_bytes)
        .max()
        .ok_or("the stream client has no session")?;
    Captp::release(client).await;
    Ok(vec![
        Line::new(Captp::NAME, "stream")
            .tag("size", 1024)
            .tag("consumer_per_s", STREAM_RATE)
            .count(
                "calls_per_s",
                counts.stream_calls as f64 / took.as_secs_f64(),
            )
            .count("peak_unsent_bytes", peak as f64)
            .count("rss_growth_bytes", grew as f64),
    ])
}

/// `sessions`, memory and accept rate: idle sessions opened on the one server vat in
/// steps up to each of `levels` (client and server halves both in this process). At
/// each step the new clients are prepared first and measured apart, so a captp client
/// vat's own cost is not counted as its session's; then their sessions are opened,
/// [`OPEN_WINDOW`] at a time, each with one call answered. Per level: RSS growth per
/// session and per client so far, and the sessions opened per second in the step.
async fn idle_sessions<P: Peer>(peer: P, levels: Vec<usize>) -> BenchResult<Vec<Line>> {
    let mut lines = Vec::new();
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    let (mut client_bytes, mut session_bytes) = (0u64, 0u64);
    settle().await;
    let fds = open_fds()?;
    for n in levels {
        let step = n.saturating_sub(clients.len());
        let before = rss_bytes()?;
        for _ in 0..step {
            clients.push(peer.prepare().await?);
        }
        settle().await;
        let prepared = rss_bytes()?;
        let started = Instant::now();
        let fresh = clients.get(clients.len() - step..).unwrap_or_default();
        conns.extend(open_sessions(&peer, fresh).await?);
        let took = started.elapsed();
        settle().await;
        let connected = rss_bytes()?;
        client_bytes += prepared.saturating_sub(before);
        session_bytes += connected.saturating_sub(prepared);
        let n = clients.len();
        lines.push(
            Line::new(P::NAME, "sessions")
                .tag("sessions", n)
                .count("bytes_per_idle_session", session_bytes as f64 / n as f64)
                .count("client_bytes_per_session", client_bytes as f64 / n as f64)
                .count("opened_per_s", per_second(step, took)),
        );
        eprintln!("    {n} sessions open");
    }
    drop(conns);
    join_all(clients.into_iter().map(P::release)).await;
    // The next peer's sessions need these descriptors: wait until the server ends
    // have closed too.
    let deadline = Instant::now() + FD_WAIT;
    while open_fds()? > fds + OPEN_WINDOW && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(lines)
}

/// How many file descriptors this process has open.
fn open_fds() -> BenchResult<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Opens a session from each of `clients`, [`OPEN_WINDOW`] at a time; each is open
/// once a first call on it is answered.
async fn open_sessions<P: Peer>(peer: &P, clients: &[P::Client]) -> BenchResult<Vec<P::Conn>> {
    let open = |client| async move {
        let mut conn = peer.connect(client).await?;
        ping::<P>(&mut conn, &mut Ping::new()).await?;
        Ok::<_, BenchError>(conn)
    };
    let mut conns = Vec::with_capacity(clients.len());
    let mut waiting = clients.iter();
    let mut opening = FuturesUnordered::new();
    loop {
        while opening.len() < OPEN_WINDOW {
            match waiting.next() {
                Some(client) => opening.push(open(client)),
                None => break,
            }
        }
        match opening.next().await {
            Some(conn) => conns.push(conn?),
            None => return Ok(conns),
        }
    }
}

/// `sessions`, throughput: `n` connections (each its own client) doing sequential tiny
/// calls for a fixed time; total completed calls per second.
async fn connections<P: Peer>(peer: P, n: usize, counts: Counts) -> BenchResult<Vec<Line>> {
    let mut clients = Vec::with_capacity(n);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let client = peer.prepare().await?;
        let mut conn = peer.connect(&client).await?;
        let mut msg = Ping::new();
        for _ in 0..counts.connection_warmup {
            ping::<P>(&mut conn, &mut msg).await?;
        }
        clients.push(client);
        conns.push(conn);
    }
    let started = Instant::now();
    let deadline = started + counts.connection_time;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut msg = Ping::new();
                let mut done = 0usize;
                while Instant::now() < deadline {
                    ping::<P>(&mut conn, &mut msg).await?;
                    done += 1;
                }
                Ok::<_, BenchError>(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in join_all(tasks).await {
        total += task??;
    }
    let took = started.elapsed();
    join_all(clients.into_iter().map(P::release)).await;
    Ok(vec![
        Line::new(P::NAME, "sessions")
            .tag("connections", n)
            .count("calls_per_s", per_second(total, took)),
    ])
}

/// Lets closing connections and freed memory settle before RSS is read.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

// ---- measurement helpers ---------------------------------------------------------

/// Latency samples.
struct Samples(Vec<Duration>);

/// Percentiles (nearest rank) and mean, in microseconds.
struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

impl Samples {
    fn with_capacity(n: usize) -> Samples {
        Samples(Vec::with_capacity(n))
    }

    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn summary(&self) -> Summary {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |p: f64| {
            let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
            sorted
                .get(rank.clamp(1, sorted.len().max(1)) - 1)
                .map_or(f64::NAN, |d| us(*d))
        };
        let mean = if sorted.is_empty() {
            f64::NAN
        } else {
            us(sorted.iter().sum::<Duration>()) / sorted.len() as f64
        };
        Summary {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            mean,
        }
    }
}

fn per_second(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

/// A field of `/proc/self/status` given in kB (`VmRSS`, `VmHWM`).
fn proc_status_kb(field: &str) -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    let kb = line.trim().trim_end_matches("kB").trim();
    Ok(kb.parse()?)
}

/// CPU time counters (clock ticks), to tell whether other processes competed with the
/// run: the machine's user and system time and its total from `/proc/stat`, its steal
/// time (a virtual machine's vCPUs waiting for the host), and this process's own time.
/// Interrupt time is left out: loopback traffic puts this process's own packet
/// processing there.
#[derive(Clone, Copy)]
struct CpuTimes {
    busy: u64,
    total: u64,
    steal: u64,
    own: u64,
}

impl CpuTimes {
    fn now() -> BenchResult<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().ok_or("empty /proc/stat")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal ...
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
        let total: u64 = ticks.iter().take(8).sum();
        let own_stat = std::fs::read_to_string("/proc/self/stat")?;
        // The fields after the command name (which may hold spaces) start at `state`.
        let rest = own_stat.rsplit_once(')').ok_or("bad /proc/self/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> BenchResult<u64> {
            Ok(fields.get(i).ok_or("short /proc/self/stat")?.parse()?)
        };
        Ok(CpuTimes {
            busy: at(0) + at(1) + at(2),
            total,
            steal: at(7),
            own: field(11)? + field(12)?,
        })
    }

    /// The shares of the machine's CPU time since `start` used by other processes and
    /// stolen by the host, in percent.
    fn others_since(&self, start: &CpuTimes) -> (f64, f64) {
        let total = self.total.saturating_sub(start.total).max(1) as f64;
        let busy = self.busy.saturating_sub(start.busy);
        let own = self.own.saturating_sub(start.own);
        let steal = self.steal.saturating_sub(start.steal);
        (
            100.0 * busy.saturating_sub(own) as f64 / total,
            100.0 * steal as f64 / total,
        )
    }
}

fn rss_bytes() -> BenchResult<u64> {
    Ok(proc_status_kb("VmRSS")? * 1024)
}

/// The limit on open files, raised first if it is below `wanted`: the soft limit up to
/// the hard one, and both to `wanted` if the process may (root may). Returns the soft
/// limit in force.
fn raise_open_files(wanted: u64) -> BenchResult<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let infinite = |x: Option<u64>| x.unwrap_or(u64::MAX);
    let now = getrlimit(Resource::Nofile);
    let (soft, hard) = (infinite(now.current), infinite(now.maximum));
    if soft >= wanted {
        return Ok(soft);
    }
    let raised = Rlimit {
        current: Some(wanted),
        maximum: Some(hard.max(wanted)),
    };
    if hard < wanted && setrlimit(Resource::Nofile, raised).is_ok() {
        return Ok(wanted);
    }
    let to_hard = Rlimit {
        current: now.maximum,
        maximum: now.maximum,
    };
    setrlimit(Resource::Nofile, to_hard)?;
    Ok(infinite(getrlimit(Resource::Nofile).current))
}

/// The idle-session levels that fit: each session takes two descriptors (client and
/// server end, both in this process) and one of the server vat's connections. The open
/// file limit is raised if it can be; a level that does not fit is cut to the largest
/// count that does, and the run says so.
fn idle_levels(wanted: [usize; 3]) -> BenchResult<Vec<usize>> {
    let most = wanted.iter().copied().max().unwrap_or(0);
    let need = 2 * most as u64 + SPARE_FDS;
    let limit = raise_open_files(need)?;
    let by_fds = usize::try_from(limit.saturating_sub(SPARE_FDS) / 2).unwrap_or(usize::MAX);
    let by_vat = server_limits().max_connections - CONNECTION_MARGIN;
    let fit = by_fds.min(by_vat);
    if fit < most {
        eprintln!(
            "note: {most} idle sessions need {need} file descriptors (limit {limit}, \
             not raised further) and {most} inbound connections (limit {by_vat}); \
             measuring up to {fit}"
        );
    }
    let mut levels: Vec<usize> = wanted.iter().map(|&n| n.min(fit)).collect();
    levels.dedup();
    Ok(levels)
}

// ---- reporting -------------------------------------------------------------------

/// One JSON line, written by hand. Tags identify the figure (`window`, `mode`...);
/// values are the figures.
struct Line {
    peer: &'static str,
    /// The JSON fields before the values (peer, metric, tags).
    head: String,
    key: String,
    /// Name, the figure's key for the table (the key so far, then the name), value
    /// and decimals printed.
    values: Vec<(String, String, f64, usize)>,
    /// How many rounds the values are the median of.
    rounds: usize,
}

impl Line {
    fn new(peer: &'static str, metric: &str) -> Line {
        Line {
            peer,
            head: format!("{{\"peer\":\"{peer}\",\"metric\":\"{metric}\""),
            key: metric.to_owned(),
            values: Vec::new(),
            rounds: 1,
        }
    }

    fn tag(mut self, name: &str, value: usize) -> Line {
        let _ = write!(self.head, ",\"{name}\":{value}");
        let _ = write!(self.key, " {name}={value}");
        self
    }

    fn text(mut self, name: &str, value: &str) -> Line {
        let _ = write!(self.head, ",\"{name}\":\"{value}\"");
        let _ = write!(self.key, " {name}={value}");
        self
    }

    /// A value printed with one decimal (microseconds, MB/s).
    fn us(self, name: &str, value: f64) -> Line {
        self.value(name, value, 1)
    }

    /// A value printed as a whole number (calls/s, bytes).
    fn count(self, name: &str, value: f64) -> Line {
        self.value(name, value, 0)
    }

    fn value(mut self, name: &str, value: f64, decimals: usize) -> Line {
        let key = format!("{} {name}", self.key);
        self.values.push((name.to_owned(), key, value, decimals));
        self
    }

    fn json(&self) -> String {
        let mut json = self.head.clone();
        for (name, _, value, decimals) in &self.values {
            let _ = write!(json, ",\"{name}\":{value:.decimals$}");
        }
        if self.rounds > 1 {
            let _ = write!(json, ",\"rounds\":{}", self.rounds);
        }
        json.push('}');
        json
    }
}

/// Merges the same lines from several rounds: each value becomes the median of its
/// rounds (the upper one of an even count).
fn median_lines(mut rounds: Vec<Vec<Line>>) -> BenchResult<Vec<Line>> {
    let n = rounds.len();
    let Some(mut merged) = rounds.pop() else {
        return Ok(Vec::new());
    };
    for (i, line) in merged.iter_mut().enumerate() {
        for (j, (name, _, value, _)) in line.values.iter_mut().enumerate() {
            let mut all = vec![*value];
            for other in &rounds {
                let (other_name, _, v, _) = other
                    .get(i)
                    .and_then(|l| l.values.get(j))
                    .ok_or("rounds produced different lines")?;
                if other_name != name {
                    return Err("rounds produced different lines".into());
                }
                all.push(*v);
            }
            all.sort_by(f64::total_cmp);
            *value = all[all.len() / 2];
        }
        line.rounds = n;
    }
    Ok(merged)
}

/// Every figure printed, by peer and key, for the table.
#[derive(Default)]
struct Report {
    figures: HashMap<(&'static str, String), f64>,
}

impl Report {
    fn emit(&mut self, lines: Vec<Line>) {
        for line in lines {
            println!("{}", line.json());
            for (_, key, value, _) in &line.values {
                self.figures.insert((line.peer, key.clone()), *value);
            }
        }
    }

    fn get(&self, peer: &'static str, key: &str) -> Option<f64> {
        self.figures.get(&(peer, key.to_owned())).copied()
    }

    /// The table: each figure, what it is compared with, the ratio, the target.
    fn table(
        &self,
        counts: &Counts,
        idle: &[usize],
        quick: bool,
        awake: bool,
        rounds: usize,
        (others, steal): (f64, f64),
    ) {
        let c = Captp::NAME;
        let f = Floor::NAME;
        let t = Typed::NAME;
        let h = Introduced::NAME;
        let [w_small, w_large] = counts.inflight_windows.map(|w| format!("window={w}"));
        let length = counts.chain_length;
        let awaited = format!("chain mode=awaited length={length} p50_us");
        let pipelined = format!("chain mode=pipelined length={length} p50_us");
        // Issue 16: at least 0.85x the floor at every connection count.
        let conns = counts.connection_levels.map(|n| {
            Row::new(
                format!("calls/s, {n} connections"),
                (c, format!("sessions connections={n} calls_per_s")),
            )
            .vs((f, format!("sessions connections={n} calls_per_s")))
            .at_least(0.85)
        });
        // The idle-session figures at the most sessions measured (all levels: see
        // `growth_table`).
        let most = idle.last().copied().unwrap_or(0);
        let idle_key = |figure: &str| format!("sessions sessions={most} {figure}");
        let mut rows = vec![
            Row::new("rtt p50 (us)", (c, "rtt p50_us"))
                .vs_floor()
                .at_most(1.10),
            Row::new("rtt p90 (us)", (c, "rtt p90_us")).vs_floor(),
            Row::new("rtt p99 (us)", (c, "rtt p99_us")).vs_floor(),
            Row::new("rtt mean (us)", (c, "rtt mean_us")).vs_floor(),
            // The typed stub and server against the dynamic `Ref` and `Object`: the
            // first column is the typed figure, `vs` the dynamic one.
            Row::new("typed / dynamic: rtt p50 (us)", (t, "rtt p50_us"))
                .vs((c, "rtt p50_us".to_owned()))
                .at_most(1.03),
            Row::new("typed / dynamic: rtt mean (us)", (t, "rtt mean_us"))
                .vs((c, "rtt mean_us".to_owned())),
            // Issue 17: a reference handed off by an introducer against one enlivened
            // directly, both calling the same object of the same server vat.
            Row::new("handed off / direct: rtt p50 (us)", (h, "rtt p50_us"))
                .vs((c, "rtt p50_us".to_owned()))
                .at_most(1.10),
            Row::new("handed off / direct: rtt mean (us)", (h, "rtt mean_us"))
                .vs((c, "rtt mean_us".to_owned())),
            Row::new(
                format!("inflight {w_small} (calls/s)"),
                (c, format!("inflight {w_small} calls_per_s")),
            )
            .vs_floor(),
            Row::new(
                format!("inflight {w_large} (calls/s)"),
                (c, format!("inflight {w_large} calls_per_s")),
            )
            .vs_floor()
            .at_least(0.2),
            Row::new(
                format!("inflight {w_large}, absolute"),
                (c, format!("inflight {w_large} calls_per_s")),
            )
            .value_at_least(300_000.0),
            Row::new(format!("chain {length} awaited (us)"), (c, awaited.clone())).vs_floor(),
            Row::new(
                format!("chain {length} pipelined / floor rtt p50"),
                (c, pipelined.clone()),
            )
            .vs((f, "rtt p50_us".to_owned()))
            .at_most(10.0),
            Row::new(
                format!("chain {length} pipelined / captp awaited"),
                (c, pipelined.clone()),
            )
            .vs((c, awaited.clone()))
            .at_most(0.2),
            Row::new(
                format!("typed / dynamic: chain {length} pipelined"),
                (t, pipelined.clone()),
            )
            .vs((c, pipelined))
            .at_most(1.03),
            Row::new(
                format!("typed / dynamic: chain {length} awaited"),
                (t, awaited.clone()),
            )
            .vs((c, awaited)),
            Row::new("setup p50 (us)", (c, "setup p50_us"))
                .vs_floor()
                .at_most(1.05),
            Row::new("setup p99 (us)", (c, "setup p99_us")).vs_floor(),
            Row::new(
                "blob 64 KiB (MB/s)",
                (c, format!("blob size={} mb_s", counts.blob_shapes[0].0)),
            )
            .vs_floor()
            .at_least(1.0),
            Row::new(
                "blob 1 MiB (MB/s)",
                (c, format!("blob size={} mb_s", counts.blob_shapes[1].0)),
            )
            .vs_floor(),
            Row::new(
                format!("bytes per idle session, {most} sessions"),
                (c, idle_key("bytes_per_idle_session")),
            )
            .vs_floor()
            .value_at_most(16.0 * 1024.0),
            Row::new(
                format!("client bytes per session, {most}"),
                (c, idle_key("client_bytes_per_session")),
            ),
            Row::new(
                format!("sessions opened/s, {most} sessions"),
                (c, idle_key("opened_per_s")),
            )
            .vs_floor(),
        ];
        let stream =
            |figure: &str| format!("stream size=1024 consumer_per_s={STREAM_RATE} {figure}");
        rows.push(
            Row::new(
                format!("stream vs a {STREAM_RATE}/s consumer (calls/s)"),
                (c, stream("calls_per_s")),
            )
            .value_at_least(STREAM_RATE as f64 * 0.8),
        );
        rows.push(
            Row::new("stream peak unsent bytes", (c, stream("peak_unsent_bytes")))
                .value_at_most((256 * 1024 + 2048) as f64),
        );
        rows.push(Row::new(
            "stream RSS growth (bytes)",
            (c, stream("rss_growth_bytes")),
        ));
        rows.extend(conns);
        rows.push(Row::new("process max RSS (kB)", (c, "process max_rss_kb")));

        println!();
        println!(
            "captp / floor{}",
            if quick {
                " (--quick: counts shrunk, figures are rough)"
            } else {
                ""
            }
        );
        println!(
            "other processes used {others:.1}% of the machine's CPU time during the run, \
             the host stole {steal:.1}%{}",
            if others > OTHERS_QUIET {
                ": the machine was not quiet, figures are disturbed"
            } else {
                ""
            }
        );
        if rounds > 1 {
            println!(
                "each figure is the median of {rounds} rounds, captp and floor alternating \
                 (memory: one round)"
            );
        }
        println!(
            "{}",
            if awake {
                "idle CPUs polled (--awake): latencies show the protocols' own cost"
            } else {
                "idle CPUs could halt (no --awake): on a VM, latencies include wake-ups"
            }
        );
        println!(
            "{:<40} {:>12} {:>12} {:>8}  {:<16} result",
            "figure", "captp", "vs", "ratio", "target"
        );
        let mut misses = 0;
        for row in &rows {
            let (line, missed) = row.render(self);
            println!("{line}");
            misses += usize::from(missed);
        }
        println!(
            "{misses} target(s) missed of {}",
            rows.iter().filter(|r| r.target.is_some()).count()
        );
    }
}

impl Report {
    /// How memory per idle session and the accept rate grow with the sessions open on
    /// the one server vat: one row per level of the `sessions` phase.
    fn growth_table(&self, idle: &[usize]) {
        println!();
        println!("idle sessions on one listening vat (memory: RSS growth, both halves)");
        println!(
            "{:>9} {:>14} {:>14} {:>16} {:>14} {:>14}",
            "sessions",
            "captp B/sess",
            "floor B/sess",
            "captp client B",
            "captp open/s",
            "floor open/s"
        );
        let show = |peer, n: usize, figure: &str| {
            self.get(peer, &format!("sessions sessions={n} {figure}"))
                .map_or("-".to_owned(), |x| format!("{x:.0}"))
        };
        let (c, f) = (Captp::NAME, Floor::NAME);
        for &n in idle {
            println!(
                "{n:>9} {:>14} {:>14} {:>16} {:>14} {:>14}",
                show(c, n, "bytes_per_idle_session"),
                show(f, n, "bytes_per_idle_session"),
                show(c, n, "client_bytes_per_session"),
                show(c, n, "opened_per_s"),
                show(f, n, "opened_per_s"),
            );
        }
    }
}

/// A bound on a ratio or on the captp value itself.
#[derive(Clone, Copy)]
enum Target {
    RatioAtMost(f64),
    RatioAtLeast(f64),
    ValueAtMost(f64),
    ValueAtLeast(f64),
}

/// One table row: a figure, optionally what it is divided by, optionally a target.
struct Row {
    label: String,
    figure: (&'static str, String),
    base: Option<(&'static str, String)>,
    target: Option<Target>,
}

impl Row {
    fn new(label: impl Into<String>, figure: (&'static str, impl Into<String>)) -> Row {
        Row {
            label: label.into(),
            figure: (figure.0, figure.1.into()),
            base: None,
            target: None,
        }
    }

    /// Divided by the same figure of the floor.
    fn vs_floor(self) -> Row {
        let key = self.figure.1.clone();
        self.vs((Floor::NAME, key))
    }

    fn vs(mut self, base: (&'static str, String)) -> Row {
        self.base = Some(base);
        self
    }

    fn at_most(self, bound: f64) -> Row {
        self.with(Target::RatioAtMost(bound))
    }

    fn at_least(self, bound: f64) -> Row {
        self.with(Target::RatioAtLeast(bound))
    }

    fn value_at_most(self, bound: f64) -> Row {
        self.with(Target::ValueAtMost(bound))
    }

    fn value_at_least(self, bound: f64) -> Row {
        self.with(Target::ValueAtLeast(bound))
    }

    fn with(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    /// The printed row, and whether it misses its target.
    fn render(&self, report: &Report) -> (String, bool) {
        let value = report.get(self.figure.0, &self.figure.1);
        let base = self.base.as_ref().and_then(|(p, k)| report.get(p, k));
        let ratio = value
            .zip(base)
            .filter(|(_, b)| *b > 0.0)
            .map(|(v, b)| v / b);
        let show = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.1}"));
        let (target, verdict) = match self.target {
            None => (String::new(), ""),
            Some(t) => {
                let (text, measured, ok) = match t {
                    Target::RatioAtMost(b) => (format!("<= {b}x"), ratio, ratio.map(|r| r <= b)),
                    Target::RatioAtLeast(b) => (format!(">= {b}x"), ratio, ratio.map(|r| r >= b)),
                    Target::ValueAtMost(b) => (format!("<= {b}"), value, value.map(|v| v <= b)),
                    Target::ValueAtLeast(b) => (format!(">= {b}"), value, value.map(|v| v >= b)),
                };
                let verdict = match (measured, ok) {
                    (Some(_), Some(true)) => "PASS",
                    (Some(_), Some(false)) => "MISS",
                    _ => "n/a",
                };
                (text, verdict)
            }
        };
        let line = format!(
            "{:<40} {:>12} {:>12} {:>8}  {:<16} {}",
            self.label,
            show(value),
            show(base),
            ratio.map_or("-".to_owned(), |r| format!("{r:.3}x")),
            target,
            verdict
        );
        (line.trim_end().to_owned(), verdict == "MISS")
    }
}

// ---- the run ---------------------------------------------------------------------

/// A runtime with one worker thread of its own.
fn runtime(name: &str) -> BenchResult<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// Runs one phase as a task on the client runtime's worker, bounded by [`PHASE_LIMIT`].
fn on_client<F>(rt: &Runtime, what: &str, phase: F) -> BenchResult<Vec<Line>>
where
    F: Future<Output = BenchResult<Vec<Line>>> + Send + 'static,
{
    eprintln!("  {what}");
    let task = rt.spawn(async move { tokio::time::timeout(PHASE_LIMIT, phase).await });
    match rt.block_on(task)? {
        Ok(result) => result,
        Err(_) => Err(format!("{what} took longer than {PHASE_LIMIT:?}").into()),
    }
}

/// The client runtime, the phase filter and the figures so far.
struct Bench<'a> {
    client_rt: &'a Runtime,
    filter: Option<&'a str>,
    /// Rounds per phase (see [`Bench::both`]).
    rounds: usize,
    report: Report,
}

/// One round of one peer's variant of a phase, ready to run.
type PhaseFuture = Pin<Box<dyn Future<Output = BenchResult<Vec<Line>>> + Send>>;

/// One peer's variant of a phase: the peer's name and how to start a round of it.
struct Variant<'a> {
    peer: &'static str,
    round: Box<dyn Fn() -> PhaseFuture + 'a>,
}

impl<'a> Variant<'a> {
    fn new<R, RF>(peer: &'static str, round: R) -> Variant<'a>
    where
        R: Fn() -> RF + 'a,
        RF: Future<Output = BenchResult<Vec<Line>>> + Send + 'static,
    {
        Variant {
            peer,
            round: Box::new(move || Box::pin(round())),
        }
    }
}

impl Bench<'_> {
    /// Runs the captp and the floor variant of a phase (see [`Bench::compare`]).
    fn both<C, CF, F, FF>(&mut self, name: &str, captp: C, floor: F) -> BenchResult<()>
    where
        C: Fn() -> CF,
        CF: Future<Output = BenchResult<Vec<Line>>> + Send + 'static,
        F: Fn() -> FF,
        FF: Future<Output = BenchResult<Vec<Line>>> + Send + 'static,
    {
        self.compare(
            name,
            &[
                Variant::new(Captp::NAME, captp),
                Variant::new(Floor::NAME, floor),
            ],
        )
    }

    /// Runs each variant of a phase, unless the filter leaves it out, `rounds` times:
    /// in the order given in even rounds and in reverse in odd ones. Each figure printed
    /// is the median of its rounds. A virtual machine's speed drifts over seconds:
    /// alternating short rounds exposes every peer to the same drift, so their ratios
    /// hold still. With two variants they take turns going first; with three (captp,
    /// typed, floor) the middle one always runs next to both others.
    fn compare(&mut self, name: &str, variants: &[Variant<'_>]) -> BenchResult<()> {
        let labels: Vec<String> = variants
            .iter()
            .map(|v| format!("{} {name}", v.peer))
            .collect();
        let mut rounds: Vec<Vec<Vec<Line>>> = variants.iter().map(|_| Vec::new()).collect();
        for round in 0..self.rounds {
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                rounds[i].extend(self.phase(&labels[i], (variants[i].round)())?);
            }
        }
        for variant_rounds in rounds {
            if !variant_rounds.is_empty() {
                let lines = median_lines(variant_rounds)?;
                self.report.emit(lines);
            }
        }
        Ok(())
    }

    /// Runs one phase unless the filter leaves it out.
    fn phase<F>(&self, label: &str, phase: F) -> BenchResult<Option<Vec<Line>>>
    where
        F: Future<Output = BenchResult<Vec<Line>>> + Send + 'static,
    {
        if self.filter.is_none_or(|f| label.contains(f)) {
            Ok(Some(on_client(self.client_rt, label, phase)?))
        } else {
            Ok(None)
        }
    }
}

/// Asks Linux to keep idle CPUs polling (a PM QoS latency request of 0 µs) for as long
/// as the returned file stays open.
fn keep_cpus_awake() -> BenchResult<std::fs::File> {
    use std::io::Write as _;
    const PM_QOS: &str = "/dev/cpu_dma_latency";
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(PM_QOS)
        .map_err(|e| format!("--awake needs write access to {PM_QOS} (root): {e}"))?;
    file.write_all(&0i32.to_ne_bytes())?;
    Ok(file)
}

fn run(quick: bool, awake: bool, rounds: usize, filter: Option<&str>) -> BenchResult<()> {
    let counts = if quick { Counts::QUICK } else { Counts::FULL };
    let _awake = if awake {
        let file = keep_cpus_awake()?;
        eprintln!("--awake: idle CPUs poll for this run (PM QoS latency 0)");
        Some(file)
    } else {
        None
    };
    let started = Instant::now();
    let cpu_at_start = CpuTimes::now()?;
    let server_rt = runtime("bench-server")?;
    let client_rt = runtime("bench-client")?;
    let (server_vats, c, t, h, f) = server_rt.block_on(start_servers())?;
    eprintln!(
        "captp bench ({}): captp {} vs floor {}",
        if quick { "quick" } else { "full" },
        c.uri.address(),
        f.addr
    );
    let mut bench = Bench {
        client_rt: &client_rt,
        filter,
        rounds,
        report: Report::default(),
    };
    // Memory first, once, on a heap that other phases have not churned (captp first).
    let idle = idle_levels(counts.idle_levels)?;
    let rounds = std::mem::replace(&mut bench.rounds, 1);
    bench.both(
        "idle sessions",
        || idle_sessions(c.clone(), idle.clone()),
        || idle_sessions(f.clone(), idle.clone()),
    )?;
    bench.rounds = rounds;
    // Every other phase: `rounds` rounds, each with a share of the issue's counts.
    let share = counts.per_round(rounds);
    // The typed stub next to the dynamic `Ref`, in the same rounds (see `compare`).
    bench.compare(
        "rtt",
        &[
            // The handed-off peer first, so that captp runs next to it, to the typed
            // stub and (one apart, as without it) to the floor in every round.
            Variant::new(Introduced::NAME, || rtt(h.clone(), share)),
            Variant::new(Captp::NAME, || rtt(c.clone(), share)),
            Variant::new(Typed::NAME, || rtt(t.clone(), share)),
            Variant::new(Floor::NAME, || rtt(f.clone(), share)),
        ],
    )?;
    bench.both(
        "inflight",
        || inflight(c.clone(), share),
        || inflight(f.clone(), share),
    )?;
    bench.compare(
        "chain",
        &[
            Variant::new(Captp::NAME, || captp_chain(c.clone(), share)),
            Variant::new(Typed::NAME, || captp_chain(t.clone(), share)),
            Variant::new(Floor::NAME, || sequential_chain(f.clone(), share)),
        ],
    )?;
    bench.both(
        "setup",
        || setup(c.clone(), share),
        || setup(f.clone(), share),
    )?;
    bench.both("blob", || blob(c.clone(), share), || blob(f.clone(), share))?;
    // Flow control against a slow consumer: captp only (the floor has no such call).
    let mut stream_rounds = Vec::new();
    for _ in 0..bench.rounds {
        let label = format!("{} stream", Captp::NAME);
        stream_rounds.extend(bench.phase(&label, stream(c.clone(), share))?);
    }
    if !stream_rounds.is_empty() {
        bench.report.emit(median_lines(stream_rounds)?);
    }
    for n in counts.connection_levels {
        bench.both(
            &format!("{n} connections"),
            || connections(c.clone(), n, share),
            || connections(f.clone(), n, share),
        )?;
    }
    let rounds_note = bench.rounds;
    let mut report = bench.report;
    report.emit(vec![
        Line::new(Captp::NAME, "process")
            .count("max_rss_kb", proc_status_kb("VmHWM")? as f64)
            .text(
                "scope",
                "whole process: captp and floor, clients and servers",
            ),
    ]);
    let others = CpuTimes::now()?.others_since(&cpu_at_start);
    report.table(&counts, &idle, quick, awake, rounds_note, others);
    report.growth_table(&idle);

    for vat in server_vats {
        server_rt.block_on(vat.shutdown());
    }
    client_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut awake = false;
    let mut rounds = None;
    let mut filter = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => rounds = Some(n),
                _ => {
                    eprintln!("--rounds needs a positive number");
                    return ExitCode::FAILURE;
                }
            },
            "--quick" => quick = true,
            "--awake" => awake = true,
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            flag if flag.starts_with('-') => {
                eprintln!(
                    "ignoring unknown option {flag:?} (known: --quick, --awake, --rounds N, and a phase filter)"
                );
            }
            // A phase filter, as with other benches: `cargo bench --bench captp -- rtt`.
            name => filter = Some(name.to_owned()),
        }
    }
    // Full runs alternate three rounds per phase; quick runs do one.
    let rounds = rounds.unwrap_or(if quick { 1 } else { 3 });
    match run(quick, awake, rounds, filter.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("captp bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

//! A framed connection: one TLS stream carrying length-prefixed frames both ways.
//!
//! [`Connection`] owns the stream's two halves and everything between them and whole
//! frames: the read buffer and its size policy, frame splitting with
//! [`frame::next_frame`] (which checks a length before the body is awaited), the
//! [`Outbox`] of frames not yet written, vectored writes, flushes and the write counts.
//! The session task decides *when* to read and write (it keeps the `select!` that also
//! serves commands and timers); this module decides *how*, with no more system calls or
//! wake-ups than a hand-written loop would make.
//!
//! This module must not decide anything about the protocol (which message to send, when
//! a peer is too slow), spawn tasks, or touch the stream except when its caller asks.
//! It interprets messages only to encode them as frames.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

use super::TlsStream;
use super::outbox::Outbox;
use crate::wire::{DecodeError, Message, frame};

/// How much to grow the receive buffer by when it runs low.
const READ_CHUNK: usize = 16 * 1024;
/// The receive buffer a connection allocates when bytes first arrive, and again for the
/// first read after it was quiet (at most this much is read on the stack first): a
/// quiet connection keeps no buffer at all (see [`Connection::shrink_idle_buffers`]),
/// so ten thousand idle sessions cost little.
const FIRST_READ: usize = 2 * 1024;
/// Spare receive capacity below which the buffer grows before the next read.
const MIN_READ: usize = 1024;
/// How far ahead of the bytes received the buffer may grow for a frame that has begun:
/// room for up to this many times the bytes it holds (see [`FrameReader::read`]).
const GROWTH: usize = 8;
/// Payload data of at least this many bytes is written from its own buffer rather than
/// copied into the write buffer; a received frame body of at least this many bytes is
/// handed out as a view of the receive buffer rather than copied out of it.
const DETACH: usize = 16 * 1024;

/// A frame body taken from the receive buffer: borrowed for the call when small (its
/// payload is copied, which costs less than sharing the buffer), shared when large
/// (its payload can stay where it was received).
pub(crate) enum FrameBody<'a> {
    /// A body under [`DETACH`] bytes, valid for the call it is handed to.
    Borrowed(&'a [u8]),
    /// A body of at least [`DETACH`] bytes, split off the receive buffer: keeping a
    /// view of it keeps that buffer's memory until the view is dropped.
    Shared(Bytes),
}

#[cfg(test)]
impl FrameBody<'_> {
    /// The body's bytes, however it is held.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            FrameBody::Borrowed(b) => b,
            FrameBody::Shared(b) => b,
        }
    }
}

/// A TLS stream split into a frame reader and a frame writer.
///
/// The halves are separate fields so that a `select!` can wait on a read and a write at
/// once.
pub(crate) struct Connection {
    /// Receives bytes and splits them into frames.
    pub(crate) reader: FrameReader,
    /// Queues frames and writes them out.
    pub(crate) writer: FrameWriter,
}

impl Connection {
    /// Wraps an established stream; frames announcing more than `max_frame` body bytes
    /// are refused (see [`FrameReader::next_frame`]).
    pub(crate) fn new(stream: TlsStream, max_frame: usize) -> Connection {
        let (rd, wr) = tokio::io::split(stream);
        Connection {
            reader: FrameReader {
                rd,
                buf: BytesMut::new(),
                max_frame,
            },
            writer: FrameWriter {
                wr,
                out: Outbox::default(),
                answers: Counted::default(),
                flush_pending: false,
                frames: 0,
                writes: 0,
            },
        }
    }

    /// Gives back the memory of whichever buffer holds no bytes. Call it when the
    /// connection has been quiet for a while: a buffer that shrinks while traffic flows
    /// only grows again (the next read allocates [`FIRST_READ`] bytes).
    pub(crate) fn shrink_idle_buffers(&mut self) {
        let rbuf = &mut self.reader.buf;
        if rbuf.is_empty() && rbuf.capacity() > 0 {
            *rbuf = BytesMut::new();
        }
        self.writer.out.shrink(0);
    }

    /// Writes what is still queued and shuts the stream down, giving up after `timeout`
    /// (a peer that stops reading must not hold a closing session open).
    pub(crate) async fn close(&mut self, timeout: Duration) {
        let writer = &mut self.writer;
        let _ = tokio::time::timeout(timeout, async {
            for piece in writer.out.pieces() {
                if writer.wr.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = writer.wr.shutdown().await;
        })
        .await;
    }
}

/// The receiving half: a buffer that reads append to and frames are taken from.
pub(crate) struct FrameReader {
    rd: ReadHalf<TlsStream>,
    buf: BytesMut,
    max_frame: usize,
}

impl FrameReader {
    /// One read from the stream into the buffer, which first grows by [`READ_CHUNK`] if
    /// less than [`MIN_READ`] bytes of room are left (so the buffer only grows while
    /// frames arrive faster than they are taken), or, when a larger frame has begun, by
    /// as much of the rest of that frame as [`GROWTH`] allows. Resolves to the bytes
    /// read; 0 means the peer closed the stream.
    ///
    /// Room for all of a frame means each of its bytes is received once, into the place
    /// its payload is then read from, instead of being copied along as the buffer
    /// doubles. Sized by the frame's length prefix, that room is still only ever
    /// [`GROWTH`] times the bytes the peer has sent: announcing a large frame reserves
    /// nothing by itself.
    ///
    /// A reader with no buffer (new, or quiet: see
    /// [`Connection::shrink_idle_buffers`]) waits for bytes without one: they are read
    /// into the stack, at most [`FIRST_READ`] of them, and the buffer is allocated then.
    /// So a session waiting for its peer holds no receive buffer.
    ///
    /// An existing buffer is grown when this is called, not when the future is first
    /// polled. Dropping the future before it completes loses no bytes.
    pub(crate) fn read(&mut self) -> impl Future<Output = io::Result<usize>> + '_ {
        if self.buf.capacity() == 0 {
            return Either::Left(std::future::poll_fn(move |cx| self.poll_first_read(cx)));
        }
        let room = self.buf.capacity() - self.buf.len();
        let rest = self.frame_rest().min(self.buf.len().saturating_mul(GROWTH));
        if room < MIN_READ || room < rest {
            self.buf.reserve(rest.max(READ_CHUNK));
        }
        Either::Right(self.rd.read_buf(&mut self.buf))
    }

    /// A read into the stack; the bytes read, if any, are copied into a new buffer
    /// before this returns, so none are lost if the caller stops polling.
    fn poll_first_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut first = [0u8; FIRST_READ];
        let mut first = ReadBuf::new(&mut first);
        ready!(Pin::new(&mut self.rd).poll_read(cx, &mut first))?;
        let bytes = first.filled();
        if !bytes.is_empty() {
            self.buf.reserve(FIRST_READ);
            self.buf.extend_from_slice(bytes);
        }
        Poll::Ready(Ok(bytes.len()))
    }

    /// Bytes still to come of the frame at the front of the buffer (see
    /// [`frame::missing`]).
    fn frame_rest(&self) -> usize {
        frame::missing(&self.buf, self.max_frame)
    }

    /// Hands the body of the next complete frame in the buffer to `handle`, then drops
    /// the frame from the buffer. Returns whether there was one; `Ok(false)` means more
    /// bytes are needed.
    ///
    /// # Errors
    ///
    /// [`DecodeError::FrameTooLarge`] as soon as a length prefix announces more than the
    /// limit, before its body has arrived. The connection cannot be read further.
    pub(crate) fn next_frame(
        &mut self,
        handle: impl FnOnce(FrameBody<'_>),
    ) -> Result<bool, DecodeError> {
        match frame::next_frame(&self.buf, self.max_frame)? {
            Some(span) if span.end - span.start >= DETACH => {
                let mut body = self.buf.split_to(span.end).freeze();
                body.advance(span.start);
                handle(FrameBody::Shared(body));
                Ok(true)
            }
            Some(span) => {
                handle(FrameBody::Borrowed(&self.buf[span.start..span.end]));
                self.buf.advance(span.end);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The sending half: frames queued in an [`Outbox`], written with vectored writes.
pub(crate) struct FrameWriter {
    wr: WriteHalf<TlsStream>,
    /// What is still to be written.
    out: Outbox,
    /// Which of those bytes answer the peer (see [`FrameWriter::queue_answer`]).
    answers: Counted,
    /// Everything was written but the flush has not completed.
    flush_pending: bool,
    frames: u64,
    writes: u64,
}

impl FrameWriter {
    /// Appends `msg` as one frame. Payload data of at least [`DETACH`] bytes is not
    /// copied: its buffer is taken from the message and written in place.
    pub(crate) fn queue(&mut self, msg: Message) {
        let n = self.push(msg);
        self.answers.skip(n);
    }

    /// [`queue`](FrameWriter::queue), counting the frame's bytes in
    /// [`answer_backlog`](FrameWriter::answer_backlog) until they are written: the
    /// caller says which frames the peer asked for.
    pub(crate) fn queue_answer(&mut self, msg: Message) {
        let n = self.push(msg);
        self.answers.add(n);
    }

    /// Appends `msg` as one frame; returns its length in bytes.
    fn push(&mut self, mut msg: Message) -> usize {
        let before = self.out.len();
        let detached = self
            .out
            .append(|buf| msg.encode_frame_detached(buf, DETACH));
        if let (Some(at), Some(data)) = (detached, msg.payload_data_mut()) {
            self.out.insert_at(at, std::mem::take(data));
        }
        self.frames += 1;
        self.out.len() - before
    }

    /// Bytes queued and not yet written.
    pub(crate) fn backlog(&self) -> usize {
        self.out.len()
    }

    /// The part of [`backlog`](FrameWriter::backlog) queued with
    /// [`queue_answer`](FrameWriter::queue_answer).
    pub(crate) fn answer_backlog(&self) -> usize {
        self.answers.unwritten
    }

    /// Whether everything queued was written but not yet flushed: [`write_some`]
    /// then flushes.
    ///
    /// [`write_some`]: FrameWriter::write_some
    pub(crate) fn flush_pending(&self) -> bool {
        self.flush_pending
    }

    /// One vectored write of what is queued (at most [`super::outbox::MAX_SLICES`]
    /// buffers), or a flush when nothing is. When a write empties the queue, the flush
    /// is tried at once and left pending only if it cannot finish without waiting (it
    /// usually can: the TLS layer has passed the records on already).
    ///
    /// Dropping the future before it completes writes nothing twice: the queue only
    /// moves on when a write has completed.
    ///
    /// # Errors
    ///
    /// The write's or the flush's I/O error; a write that takes no bytes is
    /// [`io::ErrorKind::WriteZero`]. The connection cannot be written further.
    pub(crate) async fn write_some(&mut self) -> io::Result<()> {
        let written = if self.out.is_empty() {
            self.wr.flush().await.map(|()| 0)
        } else {
            match self.wr.write_vectored(&self.out.slices()).await? {
                0 => Err(io::ErrorKind::WriteZero.into()),
                n => Ok(n),
            }
        };
        match written? {
            0 => self.flush_pending = false,
            n => {
                self.out.advance(n);
                self.answers.written(n);
                self.writes += 1;
                if self.out.is_empty() {
                    match self.wr.flush().now_or_never() {
                        Some(result) => {
                            result?;
                            self.flush_pending = false;
                        }
                        None => self.flush_pending = true,
                    }
                }
            }
        }
        Ok(())
    }

    /// [`write_some`](FrameWriter::write_some) if the socket takes the bytes without
    /// waiting; `None` (and nothing written) if it would wait.
    pub(crate) fn try_write_now(&mut self) -> Option<io::Result<()>> {
        self.write_some().now_or_never()
    }

    /// Frames queued so far: written, or waiting in the queue.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes so far that moved bytes (each carries one or more frames).
    pub(crate) fn writes(&self) -> u64 {
        self.writes
    }
}

/// Which bytes of a first-in, first-out byte queue are counted, and how many of those
/// are still unwritten. Positions are offsets in everything ever queued.
#[derive(Debug, Default)]
struct Counted {
    /// Bytes ever queued, counted or not: where the next queued bytes start.
    queued: u64,
    /// Bytes ever written.
    written: u64,
    /// The unwritten counted runs, in order, as `start..end`; adjacent runs are merged,
    /// so a burst of answers is one entry.
    runs: VecDeque<(u64, u64)>,
    /// Counted bytes not yet written.
    unwritten: usize,
}

impl Counted {
    /// `n` more bytes were queued, all counted.
    fn add(&mut self, n: usize) {
        let start = self.queued;
        let end = start + n as u64;
        match self.runs.back_mut() {
            Some(run) if run.1 == start => run.1 = end,
            _ => self.runs.push_back((start, end)),
        }
        self.queued = end;
        self.unwritten += n;
    }

    /// `n` bytes were queued, none counted.
    fn skip(&mut self, n: usize) {
        self.queued += n as u64;
    }

    /// The first `n` unwritten bytes were written.
    fn written(&mut self, n: usize) {
        self.written += n as u64;
        while let Some(run) = self.runs.front_mut() {
            if run.0 >= self.written {
                break;
            }
            let done = run.1.min(self.written) - run.0;
            self.unwritten -= done as usize;
            if run.1 <= self.written {
                self.runs.pop_front();
            } else {
                run.0 = self.written;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Connection, Counted, FIRST_READ};
    use crate::identity::Identity;
    use crate::transport::{self, TlsStream};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A TLS connection over 127.0.0.1: the accepting end as a [`Connection`], and
    /// the connecting end's stream.
    async fn pair() -> (Connection, TlsStream) {
        let (server, client) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(transport::server_config(&server).unwrap());
        let timeout = Duration::from_secs(10);
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            transport::accept(tcp, &acceptor, timeout).await.unwrap().0
        });
        let config = transport::client_config(&client, server.vat_id()).unwrap();
        let (stream, _) = transport::connect(&address, config, server.vat_id(), timeout)
            .await
            .unwrap();
        (Connection::new(accepting.await.unwrap(), 1 << 20), stream)
    }

    /// A frame of `len` body bytes, each `fill`.
    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = u32::try_from(len).unwrap().to_be_bytes().to_vec();
        f.resize(4 + len, fill);
        f
    }

    #[tokio::test]
    async fn a_quiet_reader_holds_no_buffer_and_loses_no_bytes() {
        let (mut conn, mut peer) = pair().await;
        assert_eq!(
            conn.reader.buf.capacity(),
            0,
            "no buffer before the first bytes"
        );
        // A small frame, then one larger than the first read takes from the stack.
        let big = 3 * FIRST_READ;
        let mut sent = frame(10, 1);
        sent.extend(frame(big, 2));
        peer.write_all(&sent).await.unwrap();
        peer.flush().await.unwrap();
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for _ in 0..100 {
            if bodies.len() == 2 {
                break;
            }
            assert!(conn.reader.read().await.unwrap() > 0);
            while conn
                .reader
                .next_frame(|b| bodies.push(b.as_slice().to_vec()))
                .unwrap()
            {}
        }
        assert_eq!(bodies, [vec![1; 10], vec![2; big]]);
        assert!(conn.reader.buf.capacity() > 0);
        conn.shrink_idle_buffers();
        assert_eq!(
            conn.reader.buf.capacity(),
            0,
            "a quiet reader gives its buffer back"
        );
        // And reads again from the stack.
        peer.write_all(&frame(5, 3)).await.unwrap();
        peer.flush().await.unwrap();
        assert!(conn.reader.read().await.unwrap() > 0);
        let mut last = Vec::new();
        assert!(
            conn.reader
                .next_frame(|b| last = b.as_slice().to_vec())
                .unwrap()
        );
        assert_eq!(last, [3; 5]);
        assert!(conn.reader.buf.capacity() <= FIRST_READ);
    }

    #[test]
    fn counts_only_marked_bytes_through_partial_writes() {
        let mut c = Counted::default();
        c.skip(10); // 0..10 not counted
        c.add(5); // 10..15
        c.add(5); // 15..20, merged with the run before
        c.skip(3); // 20..23
        c.add(7); // 23..30
        assert_eq!(c.unwritten, 17);
        assert_eq!(c.runs.len(), 2);
        c.written(8);
        assert_eq!(c.unwritten, 17);
        c.written(4); // 12 written: 2 counted bytes out
        assert_eq!(c.unwritten, 15);
        c.written(10); // 22 written: the first run is gone
        assert_eq!(c.unwritten, 7);
        assert_eq!(c.runs.len(), 1);
        c.written(8);
        assert_eq!(c.unwritten, 0);
        assert!(c.runs.is_empty());
        c.add(4);
        c.written(4);
        assert_eq!(c.unwritten, 0);
    }
}

//! The bytes a connection has yet to write.
//!
//! Frames are appended to the last of a queue of buffers. A large payload is not copied
//! in: its own buffer joins the queue between the bytes before and after it in its
//! frame, and the queue is written with vectored writes. This module only keeps bytes
//! in order; it must not know what they mean, nor do any I/O itself.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// How many buffers one vectored write hands to the connection at most.
pub(crate) const MAX_SLICES: usize = 16;

/// Bytes waiting to be written, in order: the sealed buffers, then the tail.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Buffers written before `tail`, in order (frame bytes and detached payloads).
    sealed: VecDeque<Piece>,
    /// The buffer frames are appended to; written after `sealed`.
    tail: Vec<u8>,
    /// Bytes of the first unwritten buffer already written.
    pos: usize,
    /// Bytes not yet written, in all buffers.
    len: usize,
}

impl Outbox {
    /// Bytes not yet written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends to the tail with `f`; returns what `f` returns.
    pub(crate) fn append<T>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        let before = self.tail.len();
        let result = f(&mut self.tail);
        self.len += self.tail.len() - before;
        result
    }

    /// Puts `data` at position `at` of the tail (a position [`append`] gave out),
    /// without copying it: the tail's bytes from `at` on follow `data`.
    ///
    /// [`append`]: Outbox::append
    pub(crate) fn insert_at(&mut self, at: usize, data: Bytes) {
        let at = at.min(self.tail.len());
        let rest = self.tail.split_off(at);
        let before = std::mem::replace(&mut self.tail, rest);
        if !before.is_empty() {
            self.sealed.push_back(Piece::Frames(before));
        } else if self.sealed.is_empty() {
            // Nothing unwritten precedes the data: what was written of the tail is gone.
            self.pos = 0;
        }
        self.len += data.len();
        self.sealed.push_back(Piece::Data(data));
    }

    /// The unwritten buffers, the first from its unwritten part.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        let pos = self.pos;
        self.sealed
            .iter()
            .map(Piece::as_slice)
            .chain(std::iter::once(self.tail.as_slice()))
            .enumerate()
            .map(move |(i, c)| if i == 0 { &c[pos.min(c.len())..] } else { c })
            .filter(|c| !c.is_empty())
    }

    /// The unwritten bytes as slices for a vectored write (at most [`MAX_SLICES`]).
    pub(crate) fn slices(&self) -> Vec<IoSlice<'_>> {
        self.pieces().take(MAX_SLICES).map(IoSlice::new).collect()
    }

    /// Marks `n` more bytes written. Written sealed buffers are dropped; the tail is
    /// cleared and kept for the next frames.
    pub(crate) fn advance(&mut self, n: usize) {
        let mut n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.sealed.front() else {
                self.pos += n;
                break;
            };
            let left = front.as_slice().len() - self.pos;
            if n < left {
                self.pos += n;
                break;
            }
            n -= left;
            self.pos = 0;
            self.sealed.pop_front();
        }
        if self.len == 0 {
            self.sealed.clear();
            self.tail.clear();
            self.pos = 0;
        }
    }

    /// Gives back buffer space when nothing waits: the tail's if it grew past `keep`,
    /// and the queue's.
    pub(crate) fn shrink(&mut self, keep: usize) {
        if self.is_empty() {
            if self.tail.capacity() > keep {
                self.tail = Vec::new();
            }
            self.sealed = VecDeque::new();
        }
    }
}

/// One sealed buffer: frame bytes the tail held, or payload data written from the
/// buffer it came in (shared, never copied here).
#[derive(Debug)]
enum Piece {
    Frames(Vec<u8>),
    Data(Bytes),
}

impl Piece {
    fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Frames(bytes) => bytes,
            Piece::Data(bytes) => bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unwritten(o: &Outbox) -> Vec<u8> {
        o.pieces().flatten().copied().collect()
    }

    #[test]
    fn keeps_bytes_in_order_across_detached_data_and_partial_writes() {
        let mut o = Outbox::default();
        o.append(|b| b.extend_from_slice(b"ab"));
        let at = o.append(|b| {
            b.extend_from_slice(b"cd");
            let at = b.len();
            b.extend_from_slice(b"gh");
            at
        });
        o.insert_at(at, Bytes::from_static(b"EF"));
        o.append(|b| b.extend_from_slice(b"ij"));
        assert_eq!(o.len(), 10);
        assert_eq!(unwritten(&o), b"abcdEFghij");
        let joined: Vec<u8> = o.slices().iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, b"abcdEFghij");

        o.advance(3);
        assert_eq!(unwritten(&o), b"dEFghij");
        o.advance(2);
        assert_eq!(unwritten(&o), b"Fghij");
        assert_eq!(o.slices().len(), 2);
        o.advance(5);
        assert!(o.is_empty());
        assert_eq!(unwritten(&o), b"");
        // The kept buffer takes the next frames.
        o.append(|b| b.extend_from_slice(b"k"));
        assert_eq!(unwritten(&o), b"k");
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn hands_out_at_most_max_slices() {
        let mut o = Outbox::default();
        for i in 0..40u8 {
            let at = o.append(|b| {
                b.push(i);
                b.len()
            });
            o.insert_at(at, Bytes::from(vec![i; 3]));
        }
        assert_eq!(o.slices().len(), MAX_SLICES);
        assert_eq!(o.len(), 40 * 4);
        o.advance(o.len());
        assert!(o.is_empty());
        assert!(o.slices().is_empty());
    }

    #[test]
    fn shrinks_only_when_empty() {
        let mut o = Outbox::default();
        o.append(|b| b.extend_from_slice(&[0; 10_000]));
        o.shrink(1024);
        assert_eq!(o.len(), 10_000);
        o.advance(10_000);
        o.shrink(1024);
        assert!(o.is_empty());
        assert_eq!(o.slices().len(), 0);
    }
}

//! [`Mailbox`] and [`Inbox`]: the queue from a session's handles to its task, a
//! first-in, first-out queue that holds no memory while it is empty and quiet.
//!
//! A channel from tokio's `mpsc` allocates a block of 32 slots when it is created, which
//! for a session's commands is several kilobytes per session, idle or not. This queue
//! is a `VecDeque` under a lock, allocated on the first post, grown only as far as a
//! burst needs, and given back when the session is quiet
//! ([`Inbox::shrink_idle`]). The task takes everything posted so far at once, by
//! swapping the queue with its own (so the lock is taken once per batch, not once per
//! command) and two queues' worth of capacity is all it keeps while busy.
//!
//! This module knows nothing of what it carries: no command is inspected, reordered or
//! dropped here except when the task closes or drops its [`Inbox`]. It must not block:
//! its lock is held for a push, a swap or a flag, never across an await.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// The sending side, shared by a session's handles.
pub(crate) struct Mailbox<T> {
    items: Mutex<VecDeque<T>>,
    /// The task stopped taking items: posts fail. Set under the lock, so that a post
    /// that got the lock first is still taken.
    closed: AtomicBool,
    /// Woken on a post to an empty queue: the task may be waiting.
    posted: Notify,
}

/// The receiving side, owned by the session task. Dropping it closes the mailbox and
/// drops what is still queued.
pub(crate) struct Inbox<T> {
    mailbox: Arc<Mailbox<T>>,
    /// Items taken from the mailbox and not yet handed out, in order.
    taken: VecDeque<T>,
}

/// A new mailbox and its inbox.
pub(crate) fn mailbox<T>() -> (Arc<Mailbox<T>>, Inbox<T>) {
    let mailbox = Arc::new(Mailbox {
        items: Mutex::new(VecDeque::new()),
        closed: AtomicBool::new(false),
        posted: Notify::new(),
    });
    let inbox = Inbox {
        mailbox: mailbox.clone(),
        taken: VecDeque::new(),
    };
    (mailbox, inbox)
}

impl<T> Mailbox<T> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the mailbox; returns what was queued.
    fn close(&self) -> VecDeque<T> {
        let mut items = self.lock();
        self.closed.store(true, Ordering::Release);
        std::mem::take(&mut *items)
    }

    /// Queues `item` for the task; gives it back if the task has closed its inbox.
    pub(crate) fn post(&self, item: T) -> Result<(), T> {
        let mut items = self.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        items.push_back(item);
        let first = items.len() == 1;
        drop(items);
        // A post to a non-empty queue needs no wake-up: the one for its first item
        // is still to be taken, or the task is about to take them all.
        if first {
            self.posted.notify_one();
        }
        Ok(())
    }

    /// Whether the task has closed (or dropped) its inbox.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<T> Inbox<T> {
    /// The next item, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        if self.taken.is_empty() {
            std::mem::swap(&mut *self.mailbox.lock(), &mut self.taken);
        }
        self.taken.pop_front()
    }

    /// The next item, waiting for one to be posted; `None` once the inbox is closed
    /// and empty. Dropping the future before it completes loses no item.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.mailbox.is_closed() {
                // A post that won the race with the close is still queued.
                return self.try_recv();
            }
            // A post after the check above stores a permit, so this cannot miss it.
            self.mailbox.posted.notified().await;
        }
    }

    /// Refuses further posts; what is queued can still be taken.
    pub(crate) fn close(&mut self) {
        let queued = self.mailbox.close();
        self.taken.extend(queued);
    }

    /// Gives back the queues' memory if nothing is queued. Call it when the session
    /// is quiet: a queue that shrinks while commands flow only grows again.
    pub(crate) fn shrink_idle(&mut self) {
        if self.taken.is_empty() {
            self.taken = VecDeque::new();
        }
        let mut items = self.mailbox.lock();
        if items.is_empty() {
            *items = VecDeque::new();
        }
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        // Dropped outside the lock: an item's drop may post to a mailbox.
        drop(self.mailbox.close());
    }
}

#[cfg(test)]
mod tests {
    use super::mailbox;

    #[test]
    fn items_come_out_in_order_across_batches() {
        let (tx, mut rx) = mailbox();
        for i in 0..5 {
            assert!(tx.post(i).is_ok());
        }
        assert_eq!(rx.try_recv(), Some(0));
        // Posted while a batch is being taken: after it, in order.
        assert!(tx.post(5).is_ok());
        let rest: Vec<i32> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(rest, [1, 2, 3, 4, 5]);
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn close_refuses_posts_and_keeps_what_was_queued() {
        let (tx, mut rx) = mailbox();
        assert!(tx.post(1).is_ok());
        rx.close();
        assert!(tx.is_closed());
        assert_eq!(tx.post(2), Err(2));
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn dropping_the_inbox_closes_it() {
        let (tx, rx) = mailbox::<u8>();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.post(1), Err(1));
    }

    #[test]
    fn shrink_idle_gives_back_the_memory_of_empty_queues() {
        let (tx, mut rx) = mailbox();
        for i in 0..100 {
            assert!(tx.post(i).is_ok());
        }
        assert_eq!(rx.try_recv(), Some(0));
        assert!(tx.post(100).is_ok());
        // Both queues hold items: nothing is given back, nothing lost.
        rx.shrink_idle();
        assert!(rx.taken.capacity() >= 99);
        let rest: Vec<i32> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(rest.len(), 100);
        rx.shrink_idle();
        assert_eq!(rx.taken.capacity(), 0);
        assert_eq!(tx.lock().capacity(), 0);
    }

    #[tokio::test]
    async fn recv_waits_for_a_post_and_ends_when_closed() {
        let (tx, mut rx) = mailbox();
        let poster = tokio::spawn(async move {
            tokio::task::yield_now().await;
            assert!(tx.post(7u32).is_ok());
            tx
        });
        assert_eq!(rx.recv().await, Some(7));
        let tx = poster.await.expect("the poster ran");
        assert!(tx.post(8).is_ok());
        rx.close();
        assert_eq!(rx.recv().await, Some(8));
        assert_eq!(rx.recv().await, None);
    }
}

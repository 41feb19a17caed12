//! A FIFO the session's reader fills without ever waiting on its consumers.
//!
//! The reader must keep draining the SSH channel whatever the request handlers are doing
//! (otherwise russh stops reading the socket and never sees the client's window
//! adjustments), so it pushes into these queues without awaiting; what they hold is bounded
//! by the bytes charged for each entry (see [`super::budget`]), not by a count.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A queue with any number of producers and consumers; [`WorkQueue::pop`] waits.
pub struct WorkQueue<T> {
    inner: Mutex<Inner<T>>,
    ready: Notify,
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue { inner: Mutex::new(Inner { items: VecDeque::new(), closed: false }), ready: Notify::new() }
    }
}

impl<T> WorkQueue<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append `item`; gives it back if the queue was closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        {
            let mut inner = self.lock();
            if inner.closed {
                return Err(item);
            }
            inner.items.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Let `merge` fold a new request into the last queued entry; true if it did.
    pub fn merge_into_last(&self, merge: impl FnOnce(&mut T) -> bool) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.items.back_mut().is_some_and(merge)
    }

    /// The next entry without waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.lock().items.pop_front()
    }

    /// The next entry; `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<T> {
        loop {
            {
                let mut inner = self.lock();
                if let Some(item) = inner.items.pop_front() {
                    return Some(item);
                }
                if inner.closed {
                    return None;
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push between the check
            // above and this await is not lost.
            self.ready.notified().await;
        }
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Refuse further pushes; what is queued is still handed out.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Refuse further pushes and drop what is queued (releasing its charges).
    pub fn abandon(&self) {
        let dropped = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.items)
        };
        drop(dropped);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn fifo_merge_close_and_abandon() {
        let q = Arc::new(WorkQueue::default());
        q.push(1u32).unwrap();
        q.push(2).unwrap();
        assert!(q.merge_into_last(|last| {
            *last += 10;
            true
        }));
        assert_eq!(q.pop().await, Some(1));
        assert_eq!(q.try_pop(), Some(12));
        assert!(!q.merge_into_last(|_| true), "nothing to merge into");
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.pop().await })
        };
        tokio::task::yield_now().await;
        q.push(3).unwrap();
        assert_eq!(waiter.await.unwrap(), Some(3));
        q.push(4).unwrap();
        q.close();
        assert_eq!(q.push(5), Err(5));
        assert_eq!(q.pop().await, Some(4), "closing keeps what was queued");
        assert_eq!(q.pop().await, None);
        let q2 = WorkQueue::default();
        q2.push(1u8).unwrap();
        q2.abandon();
        assert!(q2.is_empty());
        assert_eq!(q2.pop().await, None);
    }
}

//! Memory budgets for what SFTP sessions hold on a peer's behalf.
//!
//! Two levels: one budget per SSH connection (shared by its sessions) and one for the whole
//! process. A [`Charge`] holds bytes against both and gives them back when dropped. Queued
//! requests wait for budget (the session stops reading: back-pressure); data parked in an
//! upload's reorder buffer must find budget at once or that handle fails
//! ([`Budget::try_charge`]), because only the missing write could free it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bookkeeping cost charged per queued request on top of its bytes: the queue entry, the
/// parsed request and the allocator's overhead.
pub const REQUEST_OVERHEAD: usize = 64;

/// Smallest charge for a write parked in a reorder buffer: a 1-byte write still costs an
/// allocation, a map node and its packet, so tiny writes cannot multiply memory use.
pub const MIN_PARKED_CHARGE: usize = 4 * 1024;

/// Largest single charge: a semaphore hands out at most `u32::MAX` permits at once.
const MAX_CHARGE: usize = u32::MAX as usize;

/// Read data one connection may have read from storage and not yet sent: enough to keep a
/// client's SSH window (OpenSSH: 2 MiB) full, little enough that many connections cannot
/// pile up replies a slow client does not take.
pub const REPLY_BYTES_PER_CONNECTION: usize = 4 * 1024 * 1024;

/// The process-wide pool every connection's budget draws from as well.
#[derive(Debug, Clone)]
pub struct GlobalBudget {
    sem: Arc<Semaphore>,
    limit: usize,
}

impl GlobalBudget {
    /// A pool of `limit` bytes.
    pub fn new(limit: usize) -> GlobalBudget {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        GlobalBudget { sem: Arc::new(Semaphore::new(limit)), limit }
    }

    /// Bytes currently charged by all connections.
    pub fn in_use(&self) -> usize {
        self.limit - self.sem.available_permits()
    }
}

/// One connection's budget, drawing on the global pool too.
#[derive(Debug, Clone)]
pub struct Budget {
    conn: Arc<Semaphore>,
    conn_limit: usize,
    global: GlobalBudget,
    replies: Arc<Semaphore>,
    parked: Arc<Semaphore>,
}

/// Bytes held against a connection's and the process's budget (or, for read data on its
/// way out, against the connection's reply allowance) until dropped.
#[derive(Debug)]
pub struct Charge {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Budget {
    /// A budget of `limit` bytes for one connection.
    pub fn new(limit: usize, global: GlobalBudget) -> Budget {
        let conn_limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        let replies = Arc::new(Semaphore::new(REPLY_BYTES_PER_CONNECTION));
        let parked = Arc::new(Semaphore::new(conn_limit / 2));
        Budget { conn: Arc::new(Semaphore::new(conn_limit)), conn_limit, global, replies, parked }
    }

    /// Take `bytes` now for data parked out of order, or `None`. Parked data is given back
    /// only when its gap fills or its handle closes, and both need requests to be read, so
    /// it may hold at most half of the connection's budget: the other half always remains
    /// for requests, which are answered (and so give their bytes back) whatever happens.
    pub fn try_charge_parked(&self, bytes: usize) -> Option<Charge> {
        let n = self.clamp(bytes);
        let parked = self.parked.clone().try_acquire_many_owned(n).ok()?;
        let mut charge = self.try_charge(bytes)?;
        charge._permits.push(parked);
        Some(charge)
    }

    /// Wait until `bytes` of read data may be in flight to the client (released when the
    /// reply is written). Needs no request budget, so replies never wait on requests.
    pub async fn reply_charge(&self, bytes: usize) -> Option<Charge> {
        let n = u32::try_from(bytes.clamp(1, REPLY_BYTES_PER_CONNECTION)).unwrap_or(1);
        let permit = self.replies.clone().acquire_many_owned(n).await.ok()?;
        Some(Charge { _permits: vec![permit] })
    }

    fn clamp(&self, bytes: usize) -> u32 {
        let n = bytes.max(1).min(self.conn_limit).min(self.global.limit).min(MAX_CHARGE);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Take `bytes` now, or `None` if either level is short.
    pub fn try_charge(&self, bytes: usize) -> Option<Charge> {
        let n = self.clamp(bytes);
        let conn = self.conn.clone().try_acquire_many_owned(n).ok()?;
        let global = self.global.sem.clone().try_acquire_many_owned(n).ok()?;
        Some(Charge { _permits: vec![conn, global] })
    }

    /// Wait until `bytes` can be taken. A charge larger than either budget is clamped to it,
    /// so one oversized request waits for an empty budget rather than forever.
    pub async fn charge(&self, bytes: usize) -> Charge {
        let n = self.clamp(bytes);
        // Neither semaphore is ever closed, so acquiring cannot fail; should that change,
        // an error ends in the pending future below, and the session's stall check acts.
        let conn = match self.conn.clone().acquire_many_owned(n).await {
            Ok(p) => p,
            Err(_) => std::future::pending().await,
        };
        let global = match self.global.sem.clone().acquire_many_owned(n).await {
            Ok(p) => p,
            Err(_) => std::future::pending().await,
        };
        Charge { _permits: vec![conn, global] }
    }

    /// Bytes this connection has charged.
    pub fn in_use(&self) -> usize {
        self.conn_limit - self.conn.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_draw_on_both_levels_and_return_on_drop() {
        let global = GlobalBudget::new(10_000);
        let a = Budget::new(6_000, global.clone());
        let b = Budget::new(6_000, global.clone());
        let first = a.try_charge(5_000).unwrap();
        assert!(a.try_charge(2_000).is_none(), "connection budget is 6000");
        let second = b.try_charge(5_000).unwrap();
        assert!(b.try_charge(1_000).is_none(), "global budget is 10000");
        assert_eq!(global.in_use(), 10_000);
        drop(first);
        assert_eq!(a.in_use(), 0);
        let third = b.try_charge(1_000).unwrap();
        assert_eq!(global.in_use(), 6_000);
        drop((second, third));
        assert_eq!(global.in_use(), 0);
    }

    #[tokio::test]
    async fn waiting_charge_resumes_when_bytes_return_and_oversized_ones_clamp() {
        let budget = Budget::new(4_096, GlobalBudget::new(1 << 20));
        let held = budget.try_charge(4_000).unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.charge(1_000).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(held);
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.unwrap().unwrap();
        drop(got);
        // Larger than the whole budget: takes all of it instead of waiting forever.
        let all = tokio::time::timeout(std::time::Duration::from_secs(1), budget.charge(1 << 30)).await.unwrap();
        assert_eq!(budget.in_use(), 4_096);
        // Reply data has its own allowance: it never waits on spent request budget.
        let reply = budget.reply_charge(1 << 20).await.unwrap();
        let rest = budget.replies.available_permits();
        assert_eq!(rest, REPLY_BYTES_PER_CONNECTION - (1 << 20));
        drop((all, reply));
        assert_eq!(budget.replies.available_permits(), REPLY_BYTES_PER_CONNECTION);
    }

    #[test]
    fn parked_data_leaves_half_the_budget_to_requests() {
        let budget = Budget::new(8_192, GlobalBudget::new(1 << 20));
        let parked = budget.try_charge_parked(4_000).unwrap();
        assert!(budget.try_charge_parked(200).is_none(), "parking is capped at half the budget");
        let request = budget.try_charge(4_000).unwrap();
        assert_eq!(budget.in_use(), 8_000);
        drop((parked, request));
        assert_eq!(budget.in_use(), 0);
        assert!(budget.try_charge_parked(4_096).is_some(), "given back on drop");
    }
}

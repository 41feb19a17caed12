//! The accept loop both frontends share: it only accepts.
//!
//! A semaphore caps concurrent connections (when all slots are taken the loop waits rather
//! than accepting and dropping). Then the [`SourceGate`], before any TLS or SSH byte: a
//! source the [`Defender`] bans is closed at once; an optional [`SourceRateLimit`] closes
//! connections from a source address that opens them faster than allowed, and a per-source
//! cap closes those beyond its concurrent connections (both count as a `limit_hit` against
//! the source). Accept errors such as `EMFILE` back off instead of spinning; every
//! connection runs in its own task, where handshakes happen under their own timeouts. The loop returns when `shutdown` resolves, closing the
//! listener; draining the connections is the caller's business (it owns the returned tasks).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::defender::{Defender, Offence, Verdict};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Source addresses tracked before idle ones are forgotten.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// A token bucket per source address: `rate` new connections per second, bursts of `rate`.
#[derive(Debug)]
pub struct SourceRateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl SourceRateLimit {
    /// `per_second` connections per source per second; 0 means no limit (`None`).
    pub fn new(per_second: u32) -> Option<SourceRateLimit> {
        (per_second > 0).then(|| SourceRateLimit {
            rate: f64::from(per_second),
            burst: f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Take a token for `ip`; false when its bucket is empty.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_SOURCES {
            // Forget sources whose buckets have refilled: they carry no state worth keeping.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a listener checks about the source of each accepted connection, in this order.
#[derive(Debug, Default)]
pub struct SourceGate {
    /// `https` or `sftp`, for logs and metrics.
    pub protocol: &'static str,
    /// Refuses banned sources; told about limit hits.
    pub defender: Option<Arc<Defender>>,
    /// New connections per second per source address.
    pub rate: Option<SourceRateLimit>,
    /// Connections one source may hold open at once; 0 = no cap.
    pub max_per_source: u32,
    /// IPv6 sources share the per-source cap by this prefix (as the defender groups them).
    pub ipv6_prefix: u8,
}

/// Open connections per source; an entry leaves with its last connection, so the map is
/// bounded by the listener's connection cap.
type OpenCounts = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// One open connection of a source, counted until dropped.
struct OpenSlot {
    counts: OpenCounts,
    source: IpAddr,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

impl SourceGate {
    /// Admit `peer` or say why not (`banned`, `rate`, `concurrent`); an admitted
    /// connection holds its per-source slot until the returned guard is dropped.
    fn admit(&self, peer: SocketAddr, counts: &OpenCounts) -> Result<Option<OpenSlot>, &'static str> {
        let ip = peer.ip();
        let now = SystemTime::now();
        if let Some(defender) = &self.defender {
            if let Verdict::Refuse(_) = defender.check(ip, now) {
                return Err("banned");
            }
        }
        let hit = |why| {
            if let Some(defender) = &self.defender {
                defender.record(ip, Offence::LimitHit, now);
            }
            Err(why)
        };
        if let Some(limit) = &self.rate {
            if !limit.admit(ip, Instant::now()) {
                return hit("rate");
            }
        }
        if self.max_per_source == 0 {
            return Ok(None);
        }
        let source =
            gateway_config::mask_ip(gateway_config::canonical_ip(ip), if ip.is_ipv6() { self.ipv6_prefix } else { 32 });
        let mut open = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            drop(open);
            return hit("concurrent");
        }
        *n += 1;
        Ok(Some(OpenSlot { counts: counts.clone(), source }))
    }
}

/// Accept until `shutdown`, at most `max_connections` at once, each source past `gate`;
/// `serve` runs per connection. Returns the connection tasks still running.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    gate: SourceGate,
    shutdown: impl Future<Output = ()>,
    serve: F,
) -> JoinSet<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let open: OpenCounts = Arc::default();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match gate.admit(peer, &open) {
            Ok(slot) => slot,
            Err(why) => {
                // Dropping the stream closes it before a TLS or SSH byte is exchanged.
                crate::metrics::metrics().refused_at_accept(gate.protocol, why);
                tracing::debug!(%peer, protocol = gate.protocol, reason = why, "connection refused at accept");
                continue;
            }
        };
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        // Boxed: the task's future then holds a pointer, not a second copy of the
        // connection's state (an `async` block keeps what it captures beside what it awaits).
        let conn = Box::pin(serve(tcp, peer));
        tasks.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            conn.await;
        });
    }
    drop(listener);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_per_source() {
        let limit = SourceRateLimit::new(10).unwrap();
        let t0 = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let admitted = (0..100).filter(|_| limit.admit(a, t0)).count();
        assert_eq!(admitted, 10, "a burst of one second's worth");
        assert!(limit.admit(b, t0), "other sources are not affected");
        assert!(!limit.admit(a, t0));
        assert!(limit.admit(a, t0 + Duration::from_millis(150)), "refills at the rate");
        assert!(SourceRateLimit::new(0).is_none());
    }

    #[test]
    fn the_gate_refuses_bans_and_caps_concurrent_connections_per_source() {
        let config = gateway_config::DefenderConfig { threshold: 2, ..Default::default() };
        let defender = Arc::new(Defender::new(config));
        let gate = SourceGate {
            protocol: "https",
            defender: Some(defender.clone()),
            rate: None,
            max_per_source: 2,
            ipv6_prefix: 64,
        };
        let open = OpenCounts::default();
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let first = gate.admit(a, &open).unwrap();
        let second = gate.admit(a, &open).unwrap();
        assert_eq!(gate.admit(a, &open).err(), Some("concurrent"));
        assert!(gate.admit("192.0.2.2:1".parse().unwrap(), &open).unwrap().is_some(), "other sources unaffected");
        drop(first);
        let third = gate.admit(a, &open).unwrap();
        // Two limit hits reach the threshold of 2: banned.
        assert_eq!(gate.admit(a, &open).err(), Some("concurrent"));
        drop((second, third));
        assert_eq!(gate.admit(a, &open).err(), Some("banned"));
        // IPv6 addresses of one /64 share the cap.
        let v6 = |s: &str| -> SocketAddr { format!("[{s}]:1").parse().unwrap() };
        let _x = gate.admit(v6("2001:db8::1"), &open).unwrap();
        let _y = gate.admit(v6("2001:db8::2"), &open).unwrap();
        assert_eq!(gate.admit(v6("2001:db8::3"), &open).err(), Some("concurrent"));
        assert!(gate.admit(v6("2001:db8:0:1::3"), &open).unwrap().is_some());
        drop((_x, _y));
        assert!(open.lock().unwrap().is_empty(), "entries leave with their last connection");
    }
}

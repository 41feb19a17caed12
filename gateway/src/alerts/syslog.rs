//! Alerts to syslog as well (`[alerts] syslog`): one RFC 5424 datagram per alert, facility
//! authpriv, to a local socket (`/dev/log`) or a collector over UDP. Best effort by nature
//! (datagrams, no retry): the webhook and its outbox are the durable path. The socket is
//! non-blocking, so a stalled syslog daemon never holds up the outbox thread.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use gateway_config::{AlertSeverity as Severity, SyslogTarget};

/// `authpriv`: security and authorisation messages, kept private by syslog daemons.
const FACILITY: u8 = 10;
/// Longest datagram sent (rsyslog's default maximum message size); longer JSON is cut.
const MAX_DATAGRAM: usize = 8192;

/// An open syslog destination.
pub(crate) enum Syslog {
    Unix(UnixDatagram, PathBuf),
    Udp(UdpSocket, SocketAddr),
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Syslog::Unix(_, p) => write!(f, "Syslog(unix:{})", p.display()),
            Syslog::Udp(_, a) => write!(f, "Syslog(udp:{a})"),
        }
    }
}

impl Syslog {
    pub(crate) fn open(target: &SyslogTarget) -> Result<Syslog, String> {
        let s = match target {
            SyslogTarget::Unix(path) => {
                let sock = UnixDatagram::unbound().map_err(|e| format!("alerts.syslog: {e}"))?;
                sock.set_nonblocking(true).map_err(|e| format!("alerts.syslog: {e}"))?;
                Syslog::Unix(sock, path.clone())
            }
            SyslogTarget::Udp(addr) => {
                let local: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                let sock = UdpSocket::bind(local).map_err(|e| format!("alerts.syslog: {e}"))?;
                sock.set_nonblocking(true).map_err(|e| format!("alerts.syslog: {e}"))?;
                Syslog::Udp(sock, *addr)
            }
        };
        Ok(s)
    }

    /// Send one alert; failures are logged, never returned.
    pub(crate) fn send(&self, line: &[u8]) {
        let sent = match self {
            Syslog::Unix(sock, path) => sock.send_to(line, path).map(drop),
            Syslog::Udp(sock, addr) => sock.send_to(line, addr).map(drop),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, target = ?self, "an alert could not be sent to syslog");
        }
    }
}

/// The RFC 5424 line: `<PRI>1 TIMESTAMP HOST gateway PID KIND [alert@32473 id="…"] JSON`.
pub(crate) fn format(severity: Severity, kind: &str, id: &str, detected_at: &str, node: &str, body: &[u8]) -> Vec<u8> {
    let level: u8 = match severity {
        Severity::Critical => 2,
        Severity::Warning => 4,
        Severity::Info => 6,
    };
    let pri = u16::from(FACILITY) * 8 + u16::from(level);
    let host: String = node.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    let host = if host.is_empty() { "-".to_owned() } else { host };
    let mut line =
        format!("<{pri}>1 {detected_at} {host} gateway {} {kind} [alert@32473 id=\"{id}\"] ", std::process::id())
            .into_bytes();
    let room = MAX_DATAGRAM.saturating_sub(line.len());
    line.extend_from_slice(body.get(..body.len().min(room)).unwrap_or_default());
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_line_and_a_real_datagram() {
        let line =
            format(Severity::Warning, "traversal_attempt", "00ff", "2026-12-04T18:00:00.000Z", "gw 1", b"{\"a\":1}");
        let text = String::from_utf8(line.clone()).unwrap();
        let pid = std::process::id();
        assert_eq!(
            text,
            format!("<84>1 2026-12-04T18:00:00.000Z gw1 gateway {pid} traversal_attempt [alert@32473 id=\"00ff\"] {{\"a\":1}}")
        );
        assert!(format(Severity::Critical, "k", "i", "t", "n", b"").starts_with(b"<82>1 "));
        assert!(format(Severity::Info, "k", "i", "t", "", b"").starts_with(b"<86>1 t - gateway"));
        let long = format(Severity::Info, "k", "i", "t", "n", &vec![b'x'; 20_000]);
        assert_eq!(long.len(), MAX_DATAGRAM);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let daemon = UnixDatagram::bind(&path).unwrap();
        Syslog::open(&SyslogTarget::Unix(path)).unwrap().send(&line);
        let mut buf = vec![0u8; 9000];
        let n = daemon.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], line.as_slice());
    }
}

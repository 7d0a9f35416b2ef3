//! What a probe saw on real traffic.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What the traffic did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// The result of one probe on real traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Allow: the attempt reached the server and its answer came back (TCP: connected and the
    /// server's byte arrived, or a RST came back — detail "refused"; UDP: the echo arrived; SCTP:
    /// the INIT ACK arrived).
    pub verdict: Verdict,
    /// "connected", "refused", "reply received", "init ack received", "timeout",
    /// "init arrived, no init ack came back", "unreachable: …", …
    pub detail: String,
    pub from_addr: IpAddr,
    pub to: SocketAddr,
    /// The source address the destination's server saw for this probe (the pod's, or the egress
    /// IP a gateway translated it to); `None` when nothing arrived (a TCP connection that was
    /// refused, or whose answer never came back, counts as nothing).
    pub source_seen: Option<IpAddr>,
    pub attempts: u32,
    pub elapsed: Duration,
}

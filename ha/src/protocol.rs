//! The wire formats of the gateway group: the UDP heartbeat and the frames of the TCP sync stream.
//!
//! Every field is written explicitly, integers big-endian (structs are never transmuted: the
//! daemons of a group may be different builds during a rolling upgrade, and the layout of a
//! `#[repr(C)]` struct is no contract). Both formats begin with [`MAGIC`] and [`VERSION`], so a
//! stray datagram or a peer speaking another version is refused before anything else is read.
//!
//! Heartbeat datagram (at most [`MAX_DATAGRAM`] bytes, one a datagram):
//! `MAGIC, version u16, sender name, role u8, seq u64, ready u8, claims, view count u8,
//! view entries (member name, age_ms u32, ready u8, claims)`, where a name is a length byte
//! (1..=[`MAX_NAME`]) and UTF-8, and claims are a count byte (at most [`MAX_CLAIMS`]) and names.
//!
//! Sync frame: `MAGIC, version u16, type u8, length u32, payload` (payload at most
//! [`MAX_FRAME`] bytes). Payloads: `Hello` = `version u16, sender name, group_hash u64`;
//! `Entries` = `count u32` and the entries; `DumpEnd` = `entries u64`; `Keepalive` = nothing.

mod codec;
#[cfg(test)]
mod tests;

use codec::{
    check_count, name_len, names_len, put_name, put_names, put_replica, Reader, FLOW_LEN,
    TRANSLATION_LEN,
};

use crate::replica::Replica;

/// First bytes of every heartbeat and frame.
pub const MAGIC: [u8; 4] = *b"PCHA";
/// The protocol version this build speaks; a message of another version is refused.
pub const VERSION: u16 = 1;
/// UDP port of the heartbeats.
pub const DEFAULT_HEARTBEAT_PORT: u16 = 7471;
/// TCP port of the sync streams.
pub const DEFAULT_SYNC_PORT: u16 = 7472;
/// Largest heartbeat: fits an Ethernet MTU with the IPv6 and UDP headers, so a heartbeat is never
/// fragmented (a lost fragment would lose the whole heartbeat).
pub const MAX_DATAGRAM: usize = 1400;
/// Largest frame payload: bounds what a decoder buffers for a peer.
pub const MAX_FRAME: usize = 1 << 20;
/// Longest name (node or EgressGateway): a Kubernetes object name.
pub const MAX_NAME: usize = 253;
/// Most claims in a heartbeat (its own, or a view entry's).
pub const MAX_CLAIMS: usize = 64;
/// Most view entries in a heartbeat.
pub const MAX_VIEW: usize = 64;
/// Bytes of `MAGIC, version`.
const PREAMBLE: usize = 6;
/// Bytes of a frame header: `MAGIC, version u16, type u8, length u32`.
pub const FRAME_HEADER: usize = PREAMBLE + 1 + 4;
/// Most entries in one `Entries` frame: that many of the largest entry fit [`MAX_FRAME`].
pub const MAX_ENTRIES_PER_FRAME: usize = (MAX_FRAME - 4) / TRANSLATION_LEN;

const TYPE_HELLO: u8 = 1;
const TYPE_ENTRIES: u8 = 2;
const TYPE_DUMP_END: u8 = 3;
const TYPE_KEEPALIVE: u8 = 4;

const ROLE_GATEWAY: u8 = 1;
const ROLE_NODE: u8 = 2;

/// Why a message was refused. [`ProtocolError::reason`] is a fixed label for a metric.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad magic: not a Portcullis HA message")]
    Magic,
    #[error("protocol version {got}, this daemon speaks {want}")]
    Version { got: u16, want: u16 },
    #[error("truncated message")]
    Truncated,
    #[error("{len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("a name is not valid UTF-8")]
    Utf8,
    #[error("unknown frame type {0}")]
    Type(u8),
    #[error("{field} {got} is not a valid value")]
    Value { field: &'static str, got: u8 },
    #[error("{what} {got} is over the limit {max}")]
    Limit {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
}

impl ProtocolError {
    /// A label per class of error, for the daemons' refused-message counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Magic => "magic",
            Self::Version { .. } => "version",
            Self::Truncated => "truncated",
            Self::TooLarge { .. } => "too-large",
            Self::Utf8 => "utf8",
            Self::Type(_) => "type",
            Self::Value { .. } => "value",
            Self::Limit { .. } => "limit",
            Self::Trailing(_) => "trailing",
        }
    }
}

/// Which daemon sent a heartbeat: a gateway's carries its readiness and claims; a node's only
/// relays its view (its `ready` is false and its claims empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Node,
}

/// What one daemon tells every member each interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's node name.
    pub sender: String,
    pub role: Role,
    /// Counts the sender's heartbeats (for loss metrics; a restarted daemon may start over).
    pub seq: u64,
    /// Gateway: it has a complete copy of its live peers' state and may be active.
    pub ready: bool,
    /// Gateway: the EgressGateways it is active for.
    pub claims: Vec<String>,
    /// The gateways the sender heard directly within the detection time: relayed so that two
    /// gateways that cannot hear each other still see each other (split brain detection).
    pub view: Vec<PeerView>,
}

/// One gateway as the sender of a heartbeat last heard it directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub member: String,
    /// Milliseconds since the sender last heard it directly (a relative time: the daemons'
    /// clocks need not agree).
    pub age_ms: u32,
    pub ready: bool,
    pub claims: Vec<String>,
}

/// Encoded length of `hb` (whether or not it is within the limits), so that a sender can trim
/// its view to fit [`MAX_DATAGRAM`].
pub fn heartbeat_len(hb: &Heartbeat) -> usize {
    let view: usize = hb
        .view
        .iter()
        .map(|peer| name_len(&peer.member) + 4 + 1 + names_len(&peer.claims))
        .sum();
    PREAMBLE + name_len(&hb.sender) + 1 + 8 + 1 + names_len(&hb.claims) + 1 + view
}

/// The datagram of `hb`; an error when a name or a count is over its limit, or the whole over
/// [`MAX_DATAGRAM`].
pub fn encode_heartbeat(hb: &Heartbeat) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::with_capacity(heartbeat_len(hb));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    put_name(&mut out, &hb.sender)?;
    out.push(match hb.role {
        Role::Gateway => ROLE_GATEWAY,
        Role::Node => ROLE_NODE,
    });
    out.extend_from_slice(&hb.seq.to_be_bytes());
    out.push(u8::from(hb.ready));
    put_names(&mut out, "claims", MAX_CLAIMS, &hb.claims)?;
    check_count("view entries", hb.view.len(), MAX_VIEW)?;
    out.push(hb.view.len() as u8);
    for peer in &hb.view {
        put_name(&mut out, &peer.member)?;
        out.extend_from_slice(&peer.age_ms.to_be_bytes());
        out.push(u8::from(peer.ready));
        put_names(&mut out, "claims", MAX_CLAIMS, &peer.claims)?;
    }
    if out.len() > MAX_DATAGRAM {
        return Err(ProtocolError::TooLarge {
            len: out.len(),
            max: MAX_DATAGRAM,
        });
    }
    Ok(out)
}

/// Decodes one datagram; anything but exactly one valid heartbeat of [`VERSION`] is an error.
pub fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, ProtocolError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(ProtocolError::TooLarge {
            len: bytes.len(),
            max: MAX_DATAGRAM,
        });
    }
    check_preamble(bytes)?;
    let mut r = Reader::new(bytes.get(PREAMBLE..).ok_or(ProtocolError::Truncated)?);
    // Fields are read in the order they are written (a struct expression evaluates in order).
    let hb = Heartbeat {
        sender: r.name()?,
        role: match r.u8()? {
            ROLE_GATEWAY => Role::Gateway,
            ROLE_NODE => Role::Node,
            got => return Err(ProtocolError::Value { field: "role", got }),
        },
        seq: r.u64()?,
        ready: r.flag("ready")?,
        claims: r.names("claims", MAX_CLAIMS)?,
        view: {
            let count = usize::from(r.u8()?);
            check_count("view entries", count, MAX_VIEW)?;
            (0..count)
                .map(|_| {
                    Ok(PeerView {
                        member: r.name()?,
                        age_ms: r.u32()?,
                        ready: r.flag("ready")?,
                        claims: r.names("claims", MAX_CLAIMS)?,
                    })
                })
                .collect::<Result<_, ProtocolError>>()?
        },
    };
    r.finish()?;
    Ok(hb)
}

/// Checks as much of `MAGIC, version` as `bytes` holds, so that a stream of garbage is refused
/// at its first byte rather than after a frame's worth of it.
fn check_preamble(bytes: &[u8]) -> Result<(), ProtocolError> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(ProtocolError::Magic);
    }
    if let Some(&[hi, lo]) = bytes.get(MAGIC.len()..PREAMBLE) {
        let got = u16::from_be_bytes([hi, lo]);
        if got != VERSION {
            return Err(ProtocolError::Version { got, want: VERSION });
        }
    }
    Ok(())
}

/// One message of a sync stream, which pushes the sender's state to one peer: `Hello`, the full
/// dump as `Entries` closed by `DumpEnd`, then `Entries` of the changes, and `Keepalive` when
/// nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
        sender: String,
        /// Hash of the groups the sender believes in ([`crate::election::Membership::group_hash`]): a
        /// mismatch is worth a log line, not a refusal (the snapshots converge).
        group_hash: u64,
    },
    Entries(Vec<Replica>),
    /// The full dump is complete: `entries` were sent in it.
    DumpEnd {
        entries: u64,
    },
    Keepalive,
}

/// The bytes of one frame; an error when the sender name is over its limit or `Entries` holds
/// more than [`MAX_ENTRIES_PER_FRAME`] (use [`encode_entries`] for any number).
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    match frame {
        Frame::Hello {
            version,
            sender,
            group_hash,
        } => {
            let start = begin_frame(&mut out, TYPE_HELLO);
            out.extend_from_slice(&version.to_be_bytes());
            put_name(&mut out, sender)?;
            out.extend_from_slice(&group_hash.to_be_bytes());
            end_frame(&mut out, start);
        }
        Frame::Entries(entries) => {
            check_count("entries per frame", entries.len(), MAX_ENTRIES_PER_FRAME)?;
            put_entries_frame(&mut out, entries);
        }
        Frame::DumpEnd { entries } => {
            let start = begin_frame(&mut out, TYPE_DUMP_END);
            out.extend_from_slice(&entries.to_be_bytes());
            end_frame(&mut out, start);
        }
        Frame::Keepalive => {
            let start = begin_frame(&mut out, TYPE_KEEPALIVE);
            end_frame(&mut out, start);
        }
    }
    Ok(out)
}

/// `entries` as as many `Entries` frames as they need (none for none).
pub fn encode_entries(entries: &[Replica]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TRANSLATION_LEN + FRAME_HEADER + 4);
    for chunk in entries.chunks(MAX_ENTRIES_PER_FRAME) {
        put_entries_frame(&mut out, chunk);
    }
    out
}

// A full frame of the largest entries must fit: the decoder refuses a longer payload.
const _: () = assert!(4 + MAX_ENTRIES_PER_FRAME * TRANSLATION_LEN <= MAX_FRAME);

fn put_entries_frame(out: &mut Vec<u8>, entries: &[Replica]) {
    let start = begin_frame(out, TYPE_ENTRIES);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for entry in entries {
        put_replica(out, entry);
    }
    end_frame(out, start);
}

/// Writes a header with a zero length; [`end_frame`] fills it in.
fn begin_frame(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&[0; 4]);
    start
}

fn end_frame(out: &mut [u8], start: usize) {
    let len = out.len() - start - FRAME_HEADER;
    out[start + PREAMBLE + 1..start + FRAME_HEADER].copy_from_slice(&(len as u32).to_be_bytes());
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame, ProtocolError> {
    let mut r = Reader::new(payload);
    let frame = match kind {
        TYPE_HELLO => Frame::Hello {
            version: r.u16()?,
            sender: r.name()?,
            group_hash: r.u64()?,
        },
        TYPE_ENTRIES => {
            let count = r.u32()? as usize;
            check_count("entries per frame", count, MAX_ENTRIES_PER_FRAME)?;
            // A count the payload cannot hold is refused before anything is allocated for it.
            if count * FLOW_LEN > r.remaining() {
                return Err(ProtocolError::Truncated);
            }
            let entries = (0..count).map(|_| r.replica()).collect::<Result<_, _>>()?;
            Frame::Entries(entries)
        }
        TYPE_DUMP_END => Frame::DumpEnd { entries: r.u64()? },
        TYPE_KEEPALIVE => Frame::Keepalive,
        got => return Err(ProtocolError::Type(got)),
    };
    r.finish()?;
    Ok(frame)
}

/// Decodes a sync stream incrementally: [`FrameDecoder::feed`] it what the socket read, then take
/// frames with [`FrameDecoder::next_frame`] until it returns `Ok(None)`. The first error is final
/// (the stream cannot be resynchronised after garbage): every later call returns it again, and
/// the daemon drops the connection.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the first undecoded byte in `buf` (consumed bytes are dropped in bulk, not per
    /// frame, so that many small frames in one read cost no quadratic copying).
    start: usize,
    failed: Option<ProtocolError>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream (dropped once the decoder has failed).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.parse().inspect_err(|error| {
            self.failed = Some(error.clone());
            self.buf = Vec::new();
            self.start = 0;
        })
    }

    fn parse(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let bytes = &self.buf[self.start..];
        check_preamble(bytes)?;
        if let Some(&kind) = bytes.get(PREAMBLE) {
            if !(TYPE_HELLO..=TYPE_KEEPALIVE).contains(&kind) {
                return Err(ProtocolError::Type(kind));
            }
        }
        let Some(&[a, b, c, d]) = bytes.get(PREAMBLE + 1..FRAME_HEADER) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::TooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
            return Ok(None);
        };
        let frame = decode_payload(bytes[PREAMBLE], payload)?;
        self.start += FRAME_HEADER + len;
        Ok(Some(frame))
    }
}

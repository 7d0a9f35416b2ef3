//! One blocking rtnetlink socket of the calling thread's network namespace, typed over
//! netlink-packet-route: [`Rtnl::request`] for a get (one reply), [`Rtnl::dump`] for a dump (every
//! part) and [`Rtnl::change`] for an acknowledged change. A netlink error comes back as the OS
//! error; replies to an earlier request (one that errored half-way, say) are skipped.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_ALIGNTO, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub fn new() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends `msg` (a get) and returns the kernel's reply.
    pub fn request(&mut self, msg: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
        self.exchange(msg, 0, |payload| match payload {
            NetlinkPayload::InnerMessage(inner) => Some(Ok(inner)),
            NetlinkPayload::Error(err) => Some(Err(err.to_io())),
            _ => Some(Err(io::Error::other("unexpected netlink reply"))),
        })
    }

    /// Sends `msg` as a dump request and returns every part of the answer.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut parts = Vec::new();
        self.exchange(msg, NLM_F_DUMP, |payload| match payload {
            NetlinkPayload::InnerMessage(inner) => {
                parts.push(inner);
                None
            }
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(err) if err.code.is_none() => Some(Ok(())),
            NetlinkPayload::Error(err) => Some(Err(err.to_io())),
            _ => None,
        })?;
        Ok(parts)
    }

    /// Sends `msg` (a change) with `flags` (`NLM_F_CREATE`, ...) and waits for the kernel's
    /// acknowledgement.
    pub fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.exchange(msg, NLM_F_ACK | flags, |payload| match payload {
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(err) if err.code.is_none() => Some(Ok(())),
            NetlinkPayload::Error(err) => Some(Err(err.to_io())),
            _ => None,
        })
    }

    /// Sends `msg` with `flags` and hands the payload of each reply to this request to `reply`
    /// until it returns the outcome.
    fn exchange<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        mut reply: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> Option<io::Result<T>>,
    ) -> io::Result<T> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut out = vec![0; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0)?;
        loop {
            let len = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < len {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..len])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let align = usize::from(NLMSG_ALIGNTO);
                off += (message.header.length as usize).div_ceil(align).max(1) * align;
                // A reply to an earlier request that timed out or errored is skipped.
                if message.header.sequence_number != self.seq {
                    continue;
                }
                if let Some(outcome) = reply(message.payload) {
                    return outcome;
                }
            }
        }
    }
}

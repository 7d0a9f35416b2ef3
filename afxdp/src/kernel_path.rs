//! The kernel's IP output path for forwarded packets the engine cannot send itself (neighbour
//! not resolved yet, route not via the other leg, too big for the egress MTU): the IP packet,
//! TTL already decremented by the caller, is handed to raw sockets with the header included,
//! so the kernel routes it by its destination and resolves the neighbour (queueing the packet
//! meanwhile) while the packet keeps its own source address.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Raw IPv4 and IPv6 sockets (IPPROTO_RAW, header included) in the network namespace of the
/// thread that opened them.
pub struct KernelPath {
    v4: Socket,
    v6: Socket,
}

impl KernelPath {
    pub fn new() -> io::Result<KernelPath> {
        let raw = Some(Protocol::from(libc::IPPROTO_RAW));
        let v4 = Socket::new(Domain::IPV4, Type::RAW, raw)?;
        v4.set_header_included_v4(true)?;
        let v6 = Socket::new(Domain::IPV6, Type::RAW, raw)?;
        v6.set_header_included_v6(true)?;
        // A full socket buffer must not stall the engine: a packet that does not fit is lost,
        // as it would be on a full device queue.
        v4.set_nonblocking(true)?;
        v6.set_nonblocking(true)?;
        Ok(KernelPath { v4, v6 })
    }

    /// Sends one IP packet (from its IP header on) to its destination address.
    pub fn send(&self, ip_packet: &[u8]) -> io::Result<()> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let (sock, dst) = match ip_packet.first().map(|b| b >> 4) {
            Some(4) if ip_packet.len() >= 20 => {
                let dst: [u8; 4] = ip_packet[16..20].try_into().expect("4 bytes");
                let dst = SocketAddrV4::new(Ipv4Addr::from(dst), 0);
                (&self.v4, SockAddr::from(dst))
            }
            Some(6) if ip_packet.len() >= 40 => {
                let dst: [u8; 16] = ip_packet[24..40].try_into().expect("16 bytes");
                let dst = SocketAddrV6::new(Ipv6Addr::from(dst), 0, 0, 0);
                (&self.v6, SockAddr::from(dst))
            }
            _ => return Err(invalid("not an IPv4 or IPv6 packet")),
        };
        let sent = sock.send_to(ip_packet, &dst)?;
        if sent != ip_packet.len() {
            return Err(io::Error::other(format!(
                "raw socket took {sent} of {} bytes",
                ip_packet.len()
            )));
        }
        Ok(())
    }
}

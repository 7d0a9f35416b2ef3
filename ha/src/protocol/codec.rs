//! The byte-level pieces of the wire formats: a bounds-checked reader, the writers of names and
//! counted lists, and the replicated entries field by field.

use portcullis_common::{FlowKey, FlowValue, NatKey, NatValue};

use super::{ProtocolError, MAX_NAME};
use crate::replica::Replica;

/// Tag of a [`Replica::Flow`] in an `Entries` frame.
const TAG_FLOW: u8 = 1;
/// Tag of a [`Replica::Translation`].
const TAG_TRANSLATION: u8 = 2;

/// Encoded size of a flow: tag, key (16 + 16 + 2 + 2 + 1), value without `last_seen_ns`
/// (4 + 1 + 1 + 1 + 1), `confirmed`, `idle_ns`.
pub(super) const FLOW_LEN: usize = 1 + 37 + 8 + 1 + 8;
/// Encoded size of a translation: tag, key (16 + 16 + 2 + 2 + 1 + 1), value without `created_ns`
/// (16 + 2), `age_ns`.
pub(super) const TRANSLATION_LEN: usize = 1 + 38 + 18 + 8;

/// Reads a message front to back; every read checks that the bytes are there, so a truncated or
/// garbled message is an error, never a panic.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(super) fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A 0/1 byte: any other value is refused rather than read as true, so that a garbled message
    /// does not pass for a valid one.
    pub(super) fn flag(&mut self, field: &'static str) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            got => Err(ProtocolError::Value { field, got }),
        }
    }

    /// A name: a length byte (1..=[`MAX_NAME`]) and that many bytes of UTF-8.
    pub(super) fn name(&mut self) -> Result<String, ProtocolError> {
        let len = self.u8()?;
        check_name_len(usize::from(len))?;
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError::Utf8)
    }

    /// A count byte (at most `max`) and that many names.
    pub(super) fn names(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<Vec<String>, ProtocolError> {
        let count = usize::from(self.u8()?);
        check_count(what, count, max)?;
        (0..count).map(|_| self.name()).collect()
    }

    /// The end of a message: bytes left over mean the sender and this daemon disagree on the
    /// format, so the message is refused rather than half understood.
    pub(super) fn finish(self) -> Result<(), ProtocolError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(ProtocolError::Trailing(n)),
        }
    }

    pub(super) fn replica(&mut self) -> Result<Replica, ProtocolError> {
        match self.u8()? {
            TAG_FLOW => Ok(Replica::Flow {
                key: FlowKey {
                    addr_lo: self.array()?,
                    addr_hi: self.array()?,
                    port_lo: u16::from_ne_bytes(self.array()?),
                    port_hi: u16::from_ne_bytes(self.array()?),
                    protocol: self.u8()?,
                    _pad: [0; 3],
                },
                value: FlowValue {
                    last_seen_ns: 0,
                    group: self.u32()?,
                    state: self.u8()?,
                    initiator_is_lo: self.u8()?,
                    checked: self.u8()?,
                    generation: self.u8()?,
                },
                confirmed: self.flag("confirmed")?,
                idle_ns: self.u64()?,
            }),
            TAG_TRANSLATION => Ok(Replica::Translation {
                key: NatKey {
                    src: self.array()?,
                    dst: self.array()?,
                    sport: u16::from_ne_bytes(self.array()?),
                    dport: u16::from_ne_bytes(self.array()?),
                    protocol: self.u8()?,
                    direction: self.u8()?,
                    _pad: [0; 2],
                },
                value: NatValue {
                    addr: self.array()?,
                    created_ns: 0,
                    port: u16::from_ne_bytes(self.array()?),
                    _pad: [0; 6],
                },
                age_ns: self.u64()?,
            }),
            got => Err(ProtocolError::Value {
                field: "entry kind",
                got,
            }),
        }
    }
}

pub(super) fn check_name_len(len: usize) -> Result<(), ProtocolError> {
    match len {
        0 => Err(ProtocolError::Value {
            field: "name length",
            got: 0,
        }),
        len => check_count("name length", len, MAX_NAME),
    }
}

pub(super) fn check_count(what: &'static str, got: usize, max: usize) -> Result<(), ProtocolError> {
    if got > max {
        return Err(ProtocolError::Limit { what, got, max });
    }
    Ok(())
}

pub(super) fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), ProtocolError> {
    check_name_len(name.len())?;
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

pub(super) fn put_names(
    out: &mut Vec<u8>,
    what: &'static str,
    max: usize,
    names: &[String],
) -> Result<(), ProtocolError> {
    check_count(what, names.len(), max)?;
    out.push(names.len() as u8);
    names.iter().try_for_each(|name| put_name(out, name))
}

/// Encoded length of a name, for sizing a datagram before writing it.
pub(super) fn name_len(name: &str) -> usize {
    1 + name.len()
}

/// Encoded length of a counted list of names.
pub(super) fn names_len(names: &[String]) -> usize {
    1 + names.iter().map(|name| name_len(name)).sum::<usize>()
}

/// Every field of the entry but the sender's timestamps (`last_seen_ns`, `created_ns`: its own
/// clock, meaningless to the receiver, which gets the ages instead) and the padding. Ports stay
/// the raw bytes they are in the maps (network byte order); the other integers are big-endian.
pub(super) fn put_replica(out: &mut Vec<u8>, replica: &Replica) {
    match replica {
        Replica::Flow {
            key,
            value,
            confirmed,
            idle_ns,
        } => {
            out.push(TAG_FLOW);
            out.extend_from_slice(&key.addr_lo);
            out.extend_from_slice(&key.addr_hi);
            out.extend_from_slice(&key.port_lo.to_ne_bytes());
            out.extend_from_slice(&key.port_hi.to_ne_bytes());
            out.push(key.protocol);
            out.extend_from_slice(&value.group.to_be_bytes());
            out.extend_from_slice(&[
                value.state,
                value.initiator_is_lo,
                value.checked,
                value.generation,
                u8::from(*confirmed),
            ]);
            out.extend_from_slice(&idle_ns.to_be_bytes());
        }
        Replica::Translation { key, value, age_ns } => {
            out.push(TAG_TRANSLATION);
            out.extend_from_slice(&key.src);
            out.extend_from_slice(&key.dst);
            out.extend_from_slice(&key.sport.to_ne_bytes());
            out.extend_from_slice(&key.dport.to_ne_bytes());
            out.extend_from_slice(&[key.protocol, key.direction]);
            out.extend_from_slice(&value.addr);
            out.extend_from_slice(&value.port.to_ne_bytes());
            out.extend_from_slice(&age_ns.to_be_bytes());
        }
    }
}

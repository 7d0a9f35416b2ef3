//! Reading the programs' event ring (`DROP_EVENTS`): drop events and the allow records of new
//! flows (`DropEvent::kind`).

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{MapData, RingBuf};
use portcullis_common::DropEvent;

/// Reader of the program's event ring.
pub struct DropEvents {
    ring: RingBuf<MapData>,
}

impl DropEvents {
    pub fn new(ring: RingBuf<MapData>) -> DropEvents {
        DropEvents { ring }
    }

    /// The next available record of either kind, without blocking. Poll [`AsFd::as_fd`] for
    /// readability to wait.
    pub fn next_record(&mut self) -> Option<DropEvent> {
        let item = self.ring.next()?;
        if item.len() < std::mem::size_of::<DropEvent>() {
            return None;
        }
        // SAFETY: the program writes whole DropEvent records; read unaligned.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DropEvent) })
    }

    /// The next available drop event (allow records before it are skipped), without blocking.
    /// Poll [`AsFd::as_fd`] for readability to wait.
    pub fn next_event(&mut self) -> Option<DropEvent> {
        loop {
            let record = self.next_record()?;
            if record.is_drop() {
                return Some(record);
            }
        }
    }
}

impl AsFd for DropEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

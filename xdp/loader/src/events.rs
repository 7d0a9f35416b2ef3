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

    /// The next available record of either kind, without blocking (an older version's shorter
    /// drop event read as a drop: `DropEvent::from_record`). Poll [`AsFd::as_fd`] for readability
    /// to wait.
    pub fn next_record(&mut self) -> Option<DropEvent> {
        loop {
            let item = self.ring.next()?;
            if let Some(record) = DropEvent::from_record(&item) {
                return Some(record);
            }
        }
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

//! The aggregator: applies the watch loops' messages to the stores and publishes once every kind
//! has been listed, then at most once per coalescing window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::store::{Msg, Stores};
use crate::{recv_until, Publisher};

pub(super) async fn aggregate(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    mut publisher: Publisher,
    coalesce: Duration,
) {
    let mut stores = Stores::default();
    let mut published_stale = false;
    let mut last_publish: Option<Instant> = None;
    loop {
        let Some(msg) = rx.recv().await else {
            return;
        };
        let first = Instant::now();
        let mut changed = stores.apply(msg);
        // Leading edge: a change after a quiet window goes out at once (with whatever is already
        // queued); changes arriving within a window of the last publish wait for its end, so a
        // burst still coalesces into at most one publish per window.
        let deadline = match last_publish {
            Some(at) if first < at + coalesce => at + coalesce,
            _ => first,
        };
        loop {
            match recv_until(&mut rx, deadline).await {
                Some(Some(msg)) => changed |= stores.apply(msg),
                Some(None) => return,
                None => break,
            }
        }
        // Nothing is published before every kind has been listed once: no partial view.
        if !stores.ready() {
            continue;
        }
        let current = publisher.current();
        let stale = stores.stale();
        if current.source_ready && !changed && stale == published_stale {
            continue;
        }
        published_stale = stale;
        last_publish = Some(Instant::now());
        if current.source_ready && !changed {
            // Only the connection state changed: same snapshot.
            let errors = current.errors.clone();
            publisher.publish(current.snapshot, errors, true, stale, first);
            continue;
        }
        let loaded = stores.build();
        publisher.publish(Arc::new(loaded.snapshot), loaded.errors, true, stale, first);
    }
}

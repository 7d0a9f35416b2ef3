//! Whether the API server answers, so that the kinds backing off after a failure retry as soon
//! as it is back instead of when their backoff (up to `backoff_max`) ends: after an outage the
//! changes made meanwhile must be in force within a second of the server's return.
//!
//! A kind that fails wakes the probe; the probe asks for `/version` every interval until the
//! server answers, and wakes the waiting kinds only if it saw the server unreachable first (a
//! failure with the server up, a 500 say, keeps its backoff: waking would spin).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::{watch, Notify};

pub(super) struct Reachability {
    /// Signalled by a kind that failed: the probe starts asking.
    failed: Notify,
    /// Counts the server's returns; a change wakes the kinds backing off.
    returns: watch::Sender<u64>,
}

impl Reachability {
    pub(super) fn new() -> Arc<Reachability> {
        Arc::new(Reachability {
            failed: Notify::new(),
            returns: watch::Sender::new(0),
        })
    }

    /// Sleeps `delay` after a failure, or less if the server is seen to come back meanwhile.
    /// True when woken by its return (the caller resets its backoff).
    pub(super) async fn backoff(&self, delay: Duration) -> bool {
        let mut returns = self.returns.subscribe();
        returns.borrow_and_update();
        self.failed.notify_one();
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            changed = returns.changed() => changed.is_ok(),
        }
    }

    /// Runs for the life of the source.
    pub(super) async fn probe(self: Arc<Reachability>, client: Client, interval: Duration) {
        loop {
            self.failed.notified().await;
            let mut seen_down = false;
            loop {
                match tokio::time::timeout(interval * 4, client.apiserver_version()).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(_)) | Err(_) => {
                        seen_down = true;
                        tokio::time::sleep(interval).await;
                    }
                }
            }
            if seen_down {
                tracing::info!("API server reachable again; resuming every watch now");
                self.returns.send_modify(|n| *n += 1);
            }
        }
    }
}

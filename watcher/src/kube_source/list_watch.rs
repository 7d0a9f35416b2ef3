//! One loop per kind: a paginated list, then watches from the list's resourceVersion, relisting
//! when the history is gone or an event was lost and reconnecting after a backoff on failure.
//! A kind the server does not serve (404: the EgressGateway CRD is not installed; 403 for the
//! kinds only egress steering needs) counts as listed and empty, and is listed again later.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::ResourceExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::convert::{key_of, Kind, Watched};
use super::reachability::Reachability;
use super::store::Msg;
use super::{KubeOptions, KubeStats};
use crate::{EVENTS_TOTAL, RECONNECTS_TOTAL, RELISTS_TOTAL};

struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    rng: SmallRng,
}

impl Backoff {
    fn new(options: &KubeOptions) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (std::process::id() as u64) << 32;
        Backoff {
            initial: options.backoff_initial,
            max: options.backoff_max,
            failures: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(20));
        self.failures += 1;
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }
}

/// A complete, paginated list; `map` runs on each page as it arrives (so full API objects of
/// only one page are alive at a time).
pub(super) async fn list_all<K, T>(
    api: &Api<K>,
    page_size: u32,
    mut map: impl FnMut(K) -> Option<T>,
) -> kube::Result<(Vec<T>, String)>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(page_size);
    loop {
        let page = api.list(&params).await?;
        items.extend(page.items.into_iter().filter_map(&mut map));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok((items, page.metadata.resource_version.unwrap_or_default())),
        }
    }
}

/// [`list_all`] of every object, or none when the server does not serve the kind.
pub(super) async fn list_all_if_served<K: Watched>(api: &Api<K>) -> kube::Result<Vec<K>> {
    match list_all(api, 500, Some).await {
        Ok((items, _)) => Ok(items),
        Err(e) if not_served(K::KIND, &e) => {
            tracing::warn!(kind = K::KIND.name(), "not served ({e}): none");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

fn is_gone_error(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 410)
}

/// The server does not serve `kind` to us: it does not know it, or (for a kind that is only
/// needed for egress steering) our role may not read it.
fn not_served(kind: Kind, e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status)
        if status.code == 404 || (status.code == 403 && kind.optional()))
}

enum WatchEnd {
    /// The server ended the watch normally (timeout): resume at once.
    Resume,
    /// History is gone or an event was lost: list again.
    Relist,
    /// Transport failure: resume after a backoff.
    Failed,
    /// The store is gone (the source was dropped): stop.
    Closed,
}

pub(super) async fn run_kind<K: Watched>(
    api: Api<K>,
    tx: mpsc::UnboundedSender<Msg>,
    options: KubeOptions,
    stats: Arc<KubeStats>,
    reach: Arc<Reachability>,
) {
    let kind = K::KIND;
    let mut backoff = Backoff::new(&options);
    let mut listed_once = false;
    let mut reported_absent = false;
    let watch_secs = options.watch_timeout.as_secs().clamp(1, u32::MAX as u64) as u32;
    loop {
        let listed = list_all(&api, options.page_size, |o: K| {
            (!o.is_gone()).then(|| (key_of(&o), o.convert()))
        })
        .await;
        let (objects, mut version) = match listed {
            Ok(listed) => listed,
            Err(e) if not_served(kind, &e) => {
                // Once per absence: the store learns the kind is empty, the log says why.
                if !std::mem::replace(&mut reported_absent, true) {
                    tracing::warn!(
                        kind = kind.name(),
                        "not served ({e}): treated as having no objects; listing again every {:?}",
                        options.absent_retry
                    );
                    if tx.send(Msg::Listed(kind, Vec::new())).is_err() {
                        return;
                    }
                }
                tokio::time::sleep(options.absent_retry).await;
                continue;
            }
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(
                    kind = kind.name(),
                    "list failed: {e}; retrying in {delay:?}"
                );
                // The next "not served" must clear the down state this sets.
                reported_absent = false;
                disconnected(kind, &stats, &tx);
                if reach.backoff(delay).await {
                    backoff.reset();
                }
                continue;
            }
        };
        if std::mem::replace(&mut reported_absent, false) {
            tracing::info!(kind = kind.name(), "served now");
        }
        if listed_once {
            stats.relists.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(RELISTS_TOTAL, "kind" => kind.name()).increment(1);
        }
        listed_once = true;
        backoff.reset();
        if tx.send(Msg::Listed(kind, objects)).is_err() {
            return;
        }
        tracing::debug!(kind = kind.name(), %version, "listed");

        // Watch from `version` until the history is gone.
        loop {
            let params = WatchParams::default().timeout(watch_secs);
            match watch_from(
                &api,
                &params,
                &mut version,
                &tx,
                options.stall_timeout,
                &stats,
            )
            .await
            {
                WatchEnd::Resume => backoff.reset(),
                WatchEnd::Relist => {
                    tracing::info!(kind = kind.name(), %version, "resource version gone or event lost; relisting");
                    break;
                }
                WatchEnd::Failed => {
                    let delay = backoff.next();
                    disconnected(kind, &stats, &tx);
                    tracing::info!(kind = kind.name(), "reconnecting in {delay:?}");
                    if reach.backoff(delay).await {
                        backoff.reset();
                    }
                }
                WatchEnd::Closed => return,
            }
        }
    }
}

/// Counts a failed list or watch, and tells the store the kind is down until it reconnects.
fn disconnected(kind: Kind, stats: &KubeStats, tx: &mpsc::UnboundedSender<Msg>) {
    stats.reconnects.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(RECONNECTS_TOTAL, "kind" => kind.name()).increment(1);
    let _ = tx.send(Msg::Disconnected(kind));
}

/// Follows one watch request from `version`, advancing it with every event's and bookmark's
/// resourceVersion so that the next request resumes where this one stopped.
async fn watch_from<K: Watched>(
    api: &Api<K>,
    params: &WatchParams,
    version: &mut String,
    tx: &mpsc::UnboundedSender<Msg>,
    stall_timeout: Duration,
    stats: &KubeStats,
) -> WatchEnd {
    let kind = K::KIND;
    let stream = match api.watch(params, version).await {
        // A kind no longer served (its CRD deleted): the list finds out.
        Err(e) if is_gone_error(&e) || not_served(kind, &e) => return WatchEnd::Relist,
        Err(e) => {
            tracing::warn!(kind = kind.name(), "watch failed: {e}");
            return WatchEnd::Failed;
        }
        Ok(stream) => stream,
    };
    let _ = tx.send(Msg::Connected(kind));
    let mut stream = std::pin::pin!(stream.into_stream());
    loop {
        let next = tokio::time::timeout(stall_timeout, stream.next()).await;
        let event = match next {
            Err(_) => {
                tracing::warn!(kind = kind.name(), "watch stalled; reconnecting");
                return WatchEnd::Failed;
            }
            Ok(None) => return WatchEnd::Resume,
            Ok(Some(Err(e))) if is_gone_error(&e) => return WatchEnd::Relist,
            // A line that is not a watch event (kube reports one that parses as nothing better
            // as an empty `Status`): an event may have been lost.
            Ok(Some(Err(e @ (kube::Error::SerdeError(_) | kube::Error::Api(_))))) => {
                tracing::warn!(
                    kind = kind.name(),
                    "undecodable watch event ({e}); relisting"
                );
                return WatchEnd::Relist;
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(kind = kind.name(), "watch stream failed: {e}");
                return WatchEnd::Failed;
            }
            Ok(Some(Ok(event))) => event,
        };
        stats.events.fetch_add(1, Ordering::Relaxed);
        let (label, msg) = match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                if let Some(v) = o.resource_version() {
                    *version = v;
                }
                let key = key_of(&o);
                if o.is_gone() {
                    ("modified", Some(Msg::Delete(kind, key)))
                } else {
                    ("modified", Some(Msg::Apply(key, o.convert())))
                }
            }
            WatchEvent::Deleted(o) => {
                if let Some(v) = o.resource_version() {
                    *version = v;
                }
                ("deleted", Some(Msg::Delete(kind, key_of(&o))))
            }
            WatchEvent::Bookmark(b) => {
                *version = b.metadata.resource_version;
                ("bookmark", None)
            }
            WatchEvent::Error(status) if status.code == 410 => return WatchEnd::Relist,
            WatchEvent::Error(status) => {
                tracing::warn!(kind = kind.name(), "watch error event: {status:?}");
                return WatchEnd::Failed;
            }
        };
        metrics::counter!(EVENTS_TOTAL, "source" => "kubernetes", "kind" => kind.name(), "type" => label)
            .increment(1);
        if let Some(msg) = msg {
            if tx.send(msg).is_err() {
                return WatchEnd::Closed;
            }
        }
    }
}

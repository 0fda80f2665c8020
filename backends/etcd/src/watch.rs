//! The task behind one [`Watch`](rota_cluster::coordination::Watch): an etcd watch on a key range
//! that survives lost connections without losing events.
//!
//! It remembers the revision after the last one it delivered and, whenever the stream breaks,
//! opens a new one from there: etcd replays everything since, so a reconnect loses nothing and
//! needs no resync. Only when etcd has compacted that revision away (the watcher was cut off for
//! longer than the history kept) are events really lost: the task then sends
//! [`WatchEvent::Resync`] and continues from the oldest revision etcd still has, so every change
//! after the compaction is delivered as an event and everything before it is covered by the
//! holder's re-read.

use crate::keys::{KeySpace, in_scope};
use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use rota_cluster::coordination::{SessionState, WatchEvent, WatchSender};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

/// What one watch covers.
pub(crate) struct Spec {
    /// The watched path.
    pub path: String,
    /// Whether keys below it count.
    pub recursive: bool,
    /// The key space the path lives in.
    pub keys: KeySpace,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Delivers every change from revision `next` on into `tx` until the session ends or the
/// receiver goes away.
pub(crate) async fn run(
    client: Client,
    spec: Spec,
    mut next: i64,
    tx: WatchSender,
    mut state: watch::Receiver<SessionState>,
) {
    let (start, end) = if spec.recursive {
        spec.keys.subtree_range(&spec.path)
    } else {
        (spec.keys.key(&spec.path), Vec::new())
    };
    let mut watch_client = client.watch_client();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut options = WatchOptions::new()
            .with_start_revision(next)
            .with_progress_notify();
        if !end.is_empty() {
            options = options.with_range(end.clone());
        }
        // Calls wait for a connection while there is none: bound the wait.
        let open = tokio::time::timeout(
            OPEN_TIMEOUT,
            watch_client.watch(start.clone(), Some(options)),
        );
        let opened = tokio::select! {
            opened = open => opened,
            _ = state.wait_for(|s| s.is_final()) => return,
            _ = tx.closed() => return,
        };
        let mut stream = match opened {
            Ok(Ok(stream)) => stream,
            failed => {
                let error = failed.map_or_else(
                    |_| "timed out".to_owned(),
                    |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                );
                debug!(path = spec.path, error, "etcd watch cannot open; retrying");
                if !pause(&mut backoff, &mut state, &tx).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = state.wait_for(|s| s.is_final()) => return,
                _ = tx.closed() => return,
            };
            match message {
                Ok(Some(response)) => {
                    backoff = FIRST_BACKOFF;
                    match deliver(&spec, &response, &mut next, &tx) {
                        Delivered::More => {}
                        Delivered::ReceiverGone => return,
                        Delivered::Resynced => break,
                        Delivered::Cancelled => {
                            if !pause(&mut backoff, &mut state, &tx).await {
                                return;
                            }
                            break;
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    debug!(path = spec.path, next, "etcd watch stream broke; resuming");
                    if !pause(&mut backoff, &mut state, &tx).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

enum Delivered {
    /// Events passed on; the stream goes on.
    More,
    /// Nobody listens any more.
    ReceiverGone,
    /// The history was compacted: `Resync` sent, reopen from the oldest revision kept.
    Resynced,
    /// etcd ended the watch for another reason: reopen after a pause.
    Cancelled,
}

/// Passes on one response's events and advances `next`.
fn deliver(spec: &Spec, response: &WatchResponse, next: &mut i64, tx: &WatchSender) -> Delivered {
    if response.compact_revision() > 0 {
        // History up to the compaction is gone (etcd also cancels the watch): the holder
        // re-reads, then events resume from the oldest revision kept.
        warn!(
            path = spec.path,
            wanted = *next,
            compacted = response.compact_revision(),
            "etcd watch fell behind a compaction: resync"
        );
        *next = response.compact_revision();
        if !tx.send(WatchEvent::Resync) {
            return Delivered::ReceiverGone;
        }
        return Delivered::Resynced;
    }
    if response.canceled() {
        warn!(
            path = spec.path,
            reason = response.cancel_reason(),
            "etcd cancelled a watch; reopening"
        );
        return Delivered::Cancelled;
    }
    if response.created() {
        return Delivered::More;
    }
    if response.events().is_empty() {
        // A progress notification: every event up to this revision has been sent.
        if let Some(header) = response.header() {
            *next = (*next).max(header.revision() + 1);
        }
        return Delivered::More;
    }
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        *next = (*next).max(kv.mod_revision() + 1);
        let Some(path) = spec.keys.path(kv.key()) else {
            continue;
        };
        if !in_scope(&spec.path, spec.recursive, &path) {
            continue;
        }
        let out = match event.event_type() {
            EventType::Put if kv.version() == 1 => WatchEvent::Created { key: path },
            EventType::Put => WatchEvent::Changed { key: path },
            EventType::Delete => WatchEvent::Deleted { key: path },
        };
        if !tx.send(out) {
            return Delivered::ReceiverGone;
        }
    }
    Delivered::More
}

/// Waits before reopening (doubling the wait up to a second); false if the watch should end.
async fn pause(
    backoff: &mut Duration,
    state: &mut watch::Receiver<SessionState>,
    tx: &WatchSender,
) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = state.wait_for(|s| s.is_final()) => false,
        _ = tx.closed() => false,
    }
}

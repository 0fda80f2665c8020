//! The handlers workers offer, so that the API refuses a task naming a handler no worker can
//! run. Each worker publishes its handler names under an ephemeral key of its session
//! (`CAPABILITIES/<instance>`); the API reads them every couple of seconds in the background,
//! never on a request's path. While no worker is live (a cluster starting, every worker
//! restarting) nothing can be checked: a task naming any handler is accepted, with a warning.

use super::ClusterView;
use rota_cluster::coordination::CoordError;
use rota_cluster::records::InstanceCapabilities;
use rota_model::Record;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often the published handlers are read again.
const REFRESH: Duration = Duration::from_secs(2);

/// What live workers offer.
#[derive(Default)]
pub struct HandlerCatalog {
    offered: RwLock<Offered>,
    /// When the last "accepted unchecked" warning was logged (ms since the Unix epoch): one a
    /// minute, not one a task (a batch of a thousand would write a thousand lines).
    warned_at_ms: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Default)]
struct Offered {
    names: BTreeSet<String>,
    /// Workers that published, at the last reading.
    workers: usize,
}

impl HandlerCatalog {
    /// A catalog that never changes: as if one worker offered `names`.
    pub fn fixed(names: impl IntoIterator<Item = String>) -> Arc<Self> {
        Arc::new(Self {
            offered: RwLock::new(Offered {
                names: names.into_iter().collect(),
                workers: 1,
            }),
            warned_at_ms: Default::default(),
        })
    }

    /// The catalog of the cluster `view` shows, read now and then every couple of seconds
    /// until `shutdown`.
    pub async fn live(view: ClusterView, mut shutdown: watch::Receiver<bool>) -> Arc<Self> {
        let catalog = Arc::new(Self::default());
        catalog.refresh(&view).await;
        let refreshing = catalog.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REFRESH) => refreshing.refresh(&view).await,
                    _ = shutdown.changed() => return,
                }
            }
        });
        catalog
    }

    async fn refresh(&self, view: &ClusterView) {
        match read(view).await {
            Ok(offered) => *self.offered.write().unwrap_or_else(|e| e.into_inner()) = offered,
            // Keep what was read last: the store is out of reach for a moment.
            Err(e) => tracing::debug!(error = %e, "cannot read the handlers workers offer"),
        }
    }

    /// `Ok` if a live worker offers `handler` (or no worker is live to ask); otherwise the
    /// message for the client.
    pub fn check(&self, handler: &str) -> Result<(), String> {
        let offered = self.offered.read().unwrap_or_else(|e| e.into_inner());
        if offered.workers == 0 {
            let now = rota_cluster::now_ms();
            let last = self.warned_at_ms.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(last) >= 60_000
                && self
                    .warned_at_ms
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(
                    handler,
                    "no live worker has published its handlers: accepting tasks unchecked \
                     (said once a minute)"
                );
            }
            return Ok(());
        }
        if offered.names.contains(handler) {
            return Ok(());
        }
        let known: Vec<&str> = offered.names.iter().map(String::as_str).collect();
        Err(format!(
            "no live worker offers a handler named {handler:?}; offered: {}",
            known.join(", ")
        ))
    }
}

async fn read(view: &ClusterView) -> Result<Offered, CoordError> {
    let dir = view.keys.capabilities();
    let children = match view.session.children(&dir).await {
        Ok(children) => children,
        Err(CoordError::NotFound(_)) => return Ok(Offered::default()),
        Err(e) => return Err(e),
    };
    let mut offered = Offered::default();
    for child in children {
        // Gone since listed: its session ended.
        let Some(node) = view.session.get(&format!("{dir}/{child}")).await? else {
            continue;
        };
        if let Ok(caps) = InstanceCapabilities::decode(&node.value) {
            offered.names.extend(caps.handlers);
            offered.workers += 1;
        }
    }
    Ok(offered)
}

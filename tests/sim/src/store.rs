//! The task store as one node reaches it: the memory store behind the node's [`Link`], as a
//! [`Layer`]. A write, once sent, is delivered even if its caller gives up (a request in the
//! network does not vanish when the client times out); a frozen node's calls wait and land when
//! it thaws, after whatever happened meanwhile; injected failures come before the call is
//! applied or after (the caller cannot tell which). Every claim and completion the store
//! applies is checked against the partition's latest grant, at the moment it is applied.

use crate::history::History;
use crate::net::Link;
use async_trait::async_trait;
use rota_memory::MemoryTaskStore;
use rota_scheduler::store::{Call, Layer, Layered, Pending};
use rota_scheduler::{Claimed, StoreError, TaskStatus};
use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// One node's task store.
pub type SimTaskStore = Layered<SimLink, MemoryTaskStore>;

/// `link`'s view of `inner`.
pub fn sim_store(
    inner: Arc<MemoryTaskStore>,
    link: Arc<Link>,
    history: History,
) -> Arc<SimTaskStore> {
    Arc::new(Layered::new(SimLink { link, history }, inner))
}

/// The network between a node and the store, and the history every applied call is checked
/// against.
pub struct SimLink {
    link: Arc<Link>,
    history: History,
}

/// What the history records of an applied call, taken from its arguments before the call is
/// sent (it may outlive its caller).
enum Record {
    Nothing,
    Acquired {
        partition: u32,
        owner: rota_model::InstanceId,
        epoch: rota_model::Epoch,
    },
    Claimed(rota_model::InstanceId),
    Completed(rota_model::InstanceId, Vec<rota_scheduler::Completion>),
}

impl Record {
    fn of(call: &Call<'_>) -> Self {
        match *call {
            Call::Acquire(grant) => Record::Acquired {
                partition: grant.partition,
                owner: grant.owner.clone(),
                epoch: grant.epoch,
            },
            Call::Claim(claim) => Record::Claimed(claim.owner.clone()),
            Call::Complete(ends) => Record::Completed(ends.owner.clone(), ends.completions.clone()),
            _ => Record::Nothing,
        }
    }

    /// Records the call as applied, with the result the store gave.
    fn applied(self, history: &History, result: &dyn Any) {
        match self {
            Record::Nothing => {}
            Record::Acquired {
                partition,
                owner,
                epoch,
            } => history.acquired(partition, &owner, epoch),
            Record::Claimed(owner) => {
                if let Some(claimed) = result.downcast_ref::<Claimed>() {
                    history.claimed(&owner, &claimed.tasks);
                }
            }
            Record::Completed(owner, completions) => {
                if let Some(results) = result.downcast_ref::<Vec<Option<TaskStatus>>>() {
                    history.completed(&owner, &completions, results);
                }
            }
        }
    }
}

#[async_trait]
impl Layer for SimLink {
    /// A write goes over the link: it waits while the node is frozen, fails at once while the
    /// store is down, and may fail before or after being applied. A read waits while frozen
    /// and fails while down, with no delivery after the caller gives up. A whole-cluster reset
    /// is no node's call: it goes straight through.
    async fn around<T: Send + 'static>(
        &self,
        call: Call<'_>,
        inner: Pending<T>,
    ) -> Result<T, StoreError> {
        if matches!(call, Call::ResetAfterRestart { .. }) {
            return inner.await;
        }
        if !call.writes() {
            self.link.pass().await;
            if self.link.store_down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable(
                    "task store down (simulated)".into(),
                ));
            }
            return inner.await;
        }
        let (link, history, record) = (self.link.clone(), self.history.clone(), Record::of(&call));
        let delivery = tokio::spawn(async move {
            link.pass().await;
            if link.store_down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable(
                    "task store down (simulated)".into(),
                ));
            }
            let failing = link
                .store_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .ok();
            if failing.is_some_and(|n| n % 2 == 0) {
                return Err(StoreError::Unavailable(
                    "connection reset before the call (simulated)".into(),
                ));
            }
            let result = inner.await;
            if let Ok(value) = &result {
                record.applied(&history, value);
            }
            if failing.is_some() {
                return Err(StoreError::Unavailable(
                    "connection reset after the call (simulated)".into(),
                ));
            }
            result
        });
        delivery
            .await
            .unwrap_or_else(|e| Err(StoreError::Backend(format!("delivery failed: {e}"))))
    }
}

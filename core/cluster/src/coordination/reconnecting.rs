//! A session for callers that need no identity of their own, such as the REST API and admin
//! tools, which only read the cluster and write persistent keys: when its session ends (it
//! expired while the store was out of reach, or was closed), the next call opens a new one, so a
//! long-running reader outlives any one session instead of failing forever.
//!
//! Not for holders of ephemeral keys or of watches tied to one session (participants,
//! controllers): they must see their session end, and act on it.

use super::{CoordError, Coordination, Node, Op, OpResult, Session, SessionIdentity, Watch};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A [`Session`] that replaces its session with a new one once it has ended.
pub struct Reconnecting {
    store: Arc<dyn Coordination>,
    timeout: Duration,
    current: Mutex<Arc<dyn Session>>,
    /// Held while opening a new session, so concurrent callers open one, not one each.
    opening: tokio::sync::Mutex<()>,
}

impl Reconnecting {
    /// Opens the first session (failing as [`Coordination::connect`] does).
    pub async fn connect(
        store: Arc<dyn Coordination>,
        timeout: Duration,
    ) -> Result<Self, CoordError> {
        let first = store.connect(timeout).await?;
        Ok(Self {
            store,
            timeout,
            current: Mutex::new(first),
            opening: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self) -> Arc<dyn Session> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The session, a new one if it has ended.
    async fn session(&self) -> Result<Arc<dyn Session>, CoordError> {
        let session = self.current();
        if !session.state().borrow().is_final() {
            return Ok(session);
        }
        let _opening = self.opening.lock().await;
        let session = self.current();
        if !session.state().borrow().is_final() {
            return Ok(session); // Another caller has opened one meanwhile.
        }
        let fresh = self.store.connect(self.timeout).await?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        tracing::info!(session = %fresh.id(), "coordination session replaced");
        Ok(fresh)
    }
}

#[async_trait]
impl Session for Reconnecting {
    fn identity(&self) -> SessionIdentity {
        SessionIdentity {
            timeout: self.timeout,
            ..self.current().identity()
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Node>, CoordError> {
        match self.session().await?.get(key).await {
            // Ended while asked: reads can simply be asked again of a new session.
            Err(CoordError::SessionExpired) => self.session().await?.get(key).await,
            result => result,
        }
    }

    async fn children(&self, key: &str) -> Result<Vec<String>, CoordError> {
        match self.session().await?.children(key).await {
            Err(CoordError::SessionExpired) => self.session().await?.children(key).await,
            result => result,
        }
    }

    async fn transaction(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, CoordError> {
        self.session().await?.transaction(ops).await
    }

    async fn watch(&self, key: &str, recursive: bool) -> Result<Watch, CoordError> {
        self.session().await?.watch(key, recursive).await
    }

    async fn close(&self) -> Result<(), CoordError> {
        self.current().close().await
    }
}

//! The task-store conformance suite on the in-memory store.

use rota_core::task::TaskStore;
use rota_memory::MemoryTaskStore;
use std::sync::Arc;

async fn store() -> Arc<dyn TaskStore> {
    Arc::new(MemoryTaskStore::new())
}

rota_core::task_store_conformance!(store);

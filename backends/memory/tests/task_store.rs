//! The task-store conformance suite on the in-memory store.

use rota_memory::MemoryTaskStore;
use rota_scheduler::TaskStore;
use std::sync::Arc;

async fn store() -> Arc<dyn TaskStore> {
    Arc::new(MemoryTaskStore::new())
}

rota_scheduler::task_store_conformance!(store);

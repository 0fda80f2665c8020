//! What a task store's failure tells its caller: what happened ([`StoreError`], [`ErrorKind`]),
//! whether the call may have taken effect, and whether trying again may help.

use rota_model::Epoch;

/// Errors of task stores. Each says what happened; [`StoreError::retryable`] and
/// [`StoreError::certainly_not_applied`] say what the caller may do and assume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Fenced: an ownership with a newer epoch exists (or the same epoch for another owner).
    /// Certainly not applied; trying again with the same epoch cannot help.
    #[error("partition {partition} is held at epoch {current}; epoch {given} is stale")]
    StaleEpoch {
        /// Partition.
        partition: u32,
        /// Stored epoch.
        current: Epoch,
        /// Epoch given.
        given: Epoch,
    },
    /// Invalid input (empty name, text the store cannot hold, ...). Certainly not applied.
    #[error("{0}")]
    Invalid(String),
    /// The call lost a race with a concurrent one (a serialization failure, a deadlock) and was
    /// rolled back. Certainly not applied; trying again may succeed.
    #[error("task store conflict: {0}")]
    Conflict(String),
    /// No answer within the call's deadline (the caller's, or the store's own statement
    /// timeout). May have been applied; retry.
    #[error("{0}")]
    Timeout(String),
    /// The store could not be reached (connection refused, lost, a server starting or shutting
    /// down). May have been applied; retry.
    #[error("task store unavailable: {0}")]
    Unavailable(String),
    /// Any other failure of the backend. May have been applied; retrying will not help.
    #[error("task store error: {0}")]
    Backend(String),
}

/// What happened, without the details: for metrics labels and for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`StoreError::StaleEpoch`].
    StaleEpoch,
    /// [`StoreError::Invalid`].
    Invalid,
    /// [`StoreError::Conflict`].
    Conflict,
    /// [`StoreError::Timeout`].
    Timeout,
    /// [`StoreError::Unavailable`].
    Unavailable,
    /// [`StoreError::Backend`].
    Backend,
}

impl ErrorKind {
    /// The kind as metrics label it: `stale_epoch`, `invalid`, `conflict`, `timeout`,
    /// `unavailable`, `backend`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::StaleEpoch => "stale_epoch",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Backend => "backend",
        }
    }
}

impl StoreError {
    /// What happened.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::StaleEpoch { .. } => ErrorKind::StaleEpoch,
            StoreError::Invalid(_) => ErrorKind::Invalid,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            StoreError::Timeout(_) => ErrorKind::Timeout,
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Backend(_) => ErrorKind::Backend,
        }
    }

    /// Trying again may succeed: the store was out of reach, slow, or busy with a concurrent
    /// call.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::Conflict
        )
    }

    /// The call certainly had no effect.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::StaleEpoch | ErrorKind::Invalid | ErrorKind::Conflict
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_says_what_the_caller_may_do() {
        let timeout = StoreError::Timeout("claim: no answer within 3s".into());
        assert!(timeout.retryable() && !timeout.certainly_not_applied());
        let conflict = StoreError::Conflict("deadlock detected".into());
        assert!(conflict.retryable() && conflict.certainly_not_applied());
        let fenced = StoreError::StaleEpoch {
            partition: 1,
            current: 3,
            given: 2,
        };
        assert!(!fenced.retryable() && fenced.certainly_not_applied());
        let backend = StoreError::Backend("disk full".into());
        assert!(!backend.retryable() && !backend.certainly_not_applied());
        assert_eq!(fenced.kind().as_str(), "stale_epoch");
    }
}

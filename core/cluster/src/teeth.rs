//! Switches that break a guarantee on purpose, for the simulator to prove that it catches each
//! break (its "teeth" test fails if a broken guarantee goes unnoticed). They exist only with the
//! `teeth` feature, which only the simulator's crate enables; without it [`get`] is a constant
//! with every switch off and the checks compile as before.
//!
//! The switches are per thread: the simulator runs each seed on one thread (a current-thread
//! runtime), so one seed's broken guarantee never leaks into another's.

/// Which guarantees are broken. All off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Teeth {
    /// The memory task store applies a completion to any task a claim holds, without checking
    /// the claim's owner and epoch against the partition's.
    pub skip_completion_fence: bool,
    /// The memory task store's claim takes due tasks that a live claim already holds (the
    /// claims per batch no longer exclude what is in flight).
    pub claim_ignores_held_tasks: bool,
    /// A participant whose session is suspended keeps its replicas (and its worker its tasks)
    /// instead of stepping down before the session can expire.
    pub suspended_keeps_partitions: bool,
    /// A leading controller's writes go without the check of the leader epoch counter.
    pub unfenced_controller_writes: bool,
}

#[cfg(feature = "teeth")]
thread_local! {
    static TEETH: std::cell::Cell<Teeth> = const { std::cell::Cell::new(Teeth {
        skip_completion_fence: false,
        claim_ignores_held_tasks: false,
        suspended_keeps_partitions: false,
        unfenced_controller_writes: false,
    }) };
}

/// The switches of this thread.
#[cfg(feature = "teeth")]
pub fn get() -> Teeth {
    TEETH.with(|t| t.get())
}

/// Always off without the `teeth` feature.
#[cfg(not(feature = "teeth"))]
pub const fn get() -> Teeth {
    Teeth {
        skip_completion_fence: false,
        claim_ignores_held_tasks: false,
        suspended_keeps_partitions: false,
        unfenced_controller_writes: false,
    }
}

/// Sets this thread's switches (simulator only).
#[cfg(feature = "teeth")]
pub fn set(teeth: Teeth) {
    TEETH.with(|t| t.set(teeth));
}

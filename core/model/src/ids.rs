//! Identifier newtypes, so that an instance id is never passed where a state name is expected.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;

/// Index of a partition within its resource: `0..partitions`.
pub type PartitionId = u32;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// Stable identity of a participant (a worker). Chosen by the operator or derived from the
    /// host name, so that a restart keeps its partitions.
    InstanceId
);
string_id!(
    /// Identity of one coordination session of a participant. A participant that loses its
    /// session comes back with a new one; messages addressed to the old one are discarded.
    SessionId
);
string_id!(
    /// Name of a state in a state model, such as `MASTER` or `OFFLINE`.
    StateName
);

/// State entered when a transition handler fails; left only by reset or by dropping.
pub const ERROR: &str = "ERROR";
/// Terminal state of a replica removed from an instance.
pub const DROPPED: &str = "DROPPED";

impl StateName {
    /// The state a partition replica enters when its transition handler fails.
    pub fn error() -> Self {
        Self::new(ERROR)
    }

    /// The terminal state of a replica that is removed from an instance.
    pub fn dropped() -> Self {
        Self::new(DROPPED)
    }
}

impl PartialEq<str> for StateName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StateName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

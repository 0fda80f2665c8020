//! Versioned serialized forms of everything rota persists.
//!
//! Every stored value is wrapped as `{"kind": "...", "v": N, "data": {...}}`. A reader that meets
//! an older version migrates it through [`Record::migrate`]; one that meets a newer version
//! refuses it with a clear error instead of misreading it, so a rolling upgrade fails loudly.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A persisted type with a kind name and a schema version.
pub trait Record: Serialize + DeserializeOwned {
    /// Stable name of the record type.
    const KIND: &'static str;
    /// Current schema version written by this build.
    const VERSION: u32 = 1;

    /// Upgrades `data` written at schema `version` (< [`Self::VERSION`]) to the current schema.
    /// The default knows no older versions.
    fn migrate(version: u32, data: Value) -> Result<Value, RecordError> {
        let _ = data;
        Err(RecordError::UnsupportedVersion {
            kind: Self::KIND,
            found: version,
            supported: Self::VERSION,
        })
    }

    /// Serializes with the envelope.
    fn encode(&self) -> Vec<u8> {
        let envelope = serde_json::json!({
            "kind": Self::KIND,
            "v": Self::VERSION,
            "data": self,
        });
        serde_json::to_vec(&envelope).expect("rota records always serialize")
    }

    /// Parses an envelope, checking kind and version and migrating older versions.
    fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut envelope: Value =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed {
                kind: Self::KIND,
                reason: e.to_string(),
            })?;
        let kind = envelope.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != Self::KIND {
            return Err(RecordError::WrongKind {
                expected: Self::KIND,
                found: kind.to_owned(),
            });
        }
        let version = envelope
            .get("v")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(RecordError::Malformed {
                kind: Self::KIND,
                reason: "missing schema version \"v\"".into(),
            })?;
        let data = envelope
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null);
        let data = match version.cmp(&Self::VERSION) {
            std::cmp::Ordering::Equal => data,
            std::cmp::Ordering::Less => Self::migrate(version, data)?,
            std::cmp::Ordering::Greater => {
                return Err(RecordError::UnsupportedVersion {
                    kind: Self::KIND,
                    found: version,
                    supported: Self::VERSION,
                });
            }
        };
        serde_json::from_value(data).map_err(|e| RecordError::Malformed {
            kind: Self::KIND,
            reason: e.to_string(),
        })
    }
}

/// A stored value that this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, or not the shape of the record.
    #[error("malformed {kind} record: {reason}")]
    Malformed {
        /// Expected kind.
        kind: &'static str,
        /// Parser message.
        reason: String,
    },
    /// The envelope names another kind of record.
    #[error("expected a {expected} record, found {found:?}")]
    WrongKind {
        /// Expected kind.
        expected: &'static str,
        /// Kind found.
        found: String,
    },
    /// Written by a build with a schema this one cannot read or migrate.
    #[error(
        "{kind} record has schema version {found}; this build reads versions up to {supported} \
         (upgrade rota, or migrate the data)"
    )]
    UnsupportedVersion {
        /// Record kind.
        kind: &'static str,
        /// Version found.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },
}

macro_rules! record {
    ($($ty:ty => $kind:literal),* $(,)?) => {
        $(impl Record for $ty { const KIND: &'static str = $kind; })*
    };
}

record! {
    super::InstanceConfig => "InstanceConfig",
    super::LiveInstance => "LiveInstance",
    super::ResourceConfig => "ResourceConfig",
    super::IdealState => "IdealState",
    super::CurrentState => "CurrentState",
    super::ExternalView => "ExternalView",
    super::Message => "Message",
    crate::state_model::StateModelSpec => "StateModel",
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceConfig;

    #[test]
    fn round_trips_and_refuses_newer_versions() {
        let instance = InstanceConfig::new("node-1").with_zone("a");
        let bytes = instance.encode();
        assert_eq!(InstanceConfig::decode(&bytes).unwrap(), instance);

        let mut value: Value = serde_json::from_slice(&bytes).unwrap();
        value["v"] = Value::from(2);
        let err = InstanceConfig::decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            matches!(err, RecordError::UnsupportedVersion { found: 2, .. }),
            "{err}"
        );

        let err = crate::model::LiveInstance::decode(&bytes).unwrap_err();
        assert!(matches!(err, RecordError::WrongKind { .. }), "{err}");
        assert!(matches!(
            InstanceConfig::decode(b"{not json").unwrap_err(),
            RecordError::Malformed { .. }
        ));
    }
}

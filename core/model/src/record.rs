//! Versioned serialized forms of everything rota persists.
//!
//! Every stored value is wrapped as `{"kind": "...", "v": N, "data": {...}}`. A reader that meets
//! an older version migrates it through [`Record::migrate`]; one that meets a newer version
//! refuses it with a clear error instead of misreading it, so a rolling upgrade fails loudly.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The envelope as written.
#[derive(Serialize)]
struct Envelope<'a, T> {
    kind: &'static str,
    v: u32,
    data: &'a T,
}

/// The envelope as read: the payload left unparsed until kind and version are known. Fields
/// may come in any order (records written by earlier builds put `data` first).
#[derive(serde::Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    v: Option<u64>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

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

    /// Serializes with the envelope, straight from `self` (no intermediate JSON tree: current
    /// states and external views of a thousand partitions are written many times while a
    /// cluster converges).
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            kind: Self::KIND,
            v: Self::VERSION,
            data: self,
        })
        .expect("rota records always serialize")
    }

    /// Parses an envelope, checking kind and version and migrating older versions. The
    /// payload of a record at the current version is parsed straight into `Self`; only an
    /// older one goes through a JSON tree for [`Record::migrate`].
    fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let malformed = |e: serde_json::Error| RecordError::Malformed {
            kind: Self::KIND,
            reason: e.to_string(),
        };
        let envelope: RawEnvelope<'_> = serde_json::from_slice(bytes).map_err(malformed)?;
        let kind = envelope.kind.as_deref().unwrap_or("");
        if kind != Self::KIND {
            return Err(RecordError::WrongKind {
                expected: Self::KIND,
                found: kind.to_owned(),
            });
        }
        let version =
            envelope
                .v
                .and_then(|v| u32::try_from(v).ok())
                .ok_or(RecordError::Malformed {
                    kind: Self::KIND,
                    reason: "missing schema version \"v\"".into(),
                })?;
        let data = envelope.data.map_or("null", RawValue::get);
        match version.cmp(&Self::VERSION) {
            std::cmp::Ordering::Equal => serde_json::from_str(data).map_err(malformed),
            std::cmp::Ordering::Less => {
                let data = serde_json::from_str(data).map_err(malformed)?;
                serde_json::from_value(Self::migrate(version, data)?).map_err(malformed)
            }
            std::cmp::Ordering::Greater => Err(RecordError::UnsupportedVersion {
                kind: Self::KIND,
                found: version,
                supported: Self::VERSION,
            }),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceConfig;

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

        // Earlier builds wrote the envelope through a JSON tree, keys sorted: `data` first.
        let sorted = serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
        assert!(sorted.starts_with(b"{\"data\""));
        assert_eq!(InstanceConfig::decode(&sorted).unwrap(), instance);

        let err = crate::LiveInstance::decode(&bytes).unwrap_err();
        assert!(matches!(err, RecordError::WrongKind { .. }), "{err}");
        assert!(matches!(
            InstanceConfig::decode(b"{not json").unwrap_err(),
            RecordError::Malformed { .. }
        ));
    }
}

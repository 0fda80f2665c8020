//! One rota transaction as one etcd transaction, and its outcome back.
//!
//! Every operation becomes conditions on the state before the transaction (etcd evaluates all
//! comparisons first, then applies the writes; [`validate_transaction`] has refused every
//! transaction where that differs from applying the operations in order) plus at most one write:
//!
//! | operation            | conditions                                        | write                 |
//! |----------------------|---------------------------------------------------|-----------------------|
//! | `Check { v }`        | `version == v + 1`                                | —                     |
//! | `Create`             | `version == 0` (absent)                           | put (with the lease if ephemeral) |
//! | `Set { expected }`   | `version == e + 1`, or `version > 0`              | put keeping its lease |
//! | `Delete { expected }`| as `Set`, and no key in the children's range       | delete                |
//!
//! plus one condition first: the session's own key still exists, so nothing a session writes
//! applies once its lease is gone (as ZooKeeper refuses an expired session's writes). etcd's
//! per-key `version` counts from 1 at creation; rota's from 0, hence the `+ 1`.
//!
//! When a condition fails, the transaction's `else` branch reads every key it named, in the same
//! atomic step, so the error names the first operation that failed against exactly the state
//! that made it fail.
//!
//! [`validate_transaction`]: rota_cluster::coordination::validate_transaction

use crate::keys::KeySpace;
use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use rota_cluster::coordination::{CoordError, CreateMode, Op, OpResult};

/// Builds the etcd transaction for `ops` of the session holding `lease`.
pub(crate) fn build(keys: &KeySpace, lease: i64, ops: &[Op]) -> Txn {
    let session = keys.session_key(lease);
    let mut when = vec![Compare::version(session.clone(), CompareOp::Greater, 0)];
    let mut then = Vec::new();
    let mut otherwise = vec![TxnOp::get(
        session,
        Some(GetOptions::new().with_keys_only()),
    )];
    for op in ops {
        let key = keys.key(op.key());
        otherwise.push(TxnOp::get(
            key.clone(),
            Some(GetOptions::new().with_keys_only()),
        ));
        match op {
            Op::Check { version, .. } => {
                when.push(Compare::version(
                    key,
                    CompareOp::Equal,
                    etcd_version(*version),
                ));
            }
            Op::Create { value, mode, .. } => {
                when.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                let options = match mode {
                    CreateMode::Ephemeral => PutOptions::new().with_lease(lease),
                    CreateMode::Persistent => PutOptions::new(),
                };
                then.push(TxnOp::put(key, value.clone(), Some(options)));
            }
            Op::Set {
                value, expected, ..
            } => {
                when.push(exists_at(key.clone(), *expected));
                // Keeping the lease keeps an ephemeral key ephemeral.
                let options = PutOptions::new().with_ignore_lease().with_prev_key();
                then.push(TxnOp::put(key, value.clone(), Some(options)));
            }
            Op::Delete { expected, .. } => {
                when.push(exists_at(key.clone(), *expected));
                let (start, end) = keys.children_range(op.key());
                when.push(
                    Compare::version(start.clone(), CompareOp::Equal, 0).with_range(end.clone()),
                );
                otherwise.push(TxnOp::get(
                    start,
                    Some(GetOptions::new().with_range(end).with_count_only()),
                ));
                then.push(TxnOp::delete(key, None));
            }
        }
    }
    Txn::new().when(when).and_then(then).or_else(otherwise)
}

/// The results of a transaction that succeeded.
pub(crate) fn results(ops: &[Op], response: &TxnResponse) -> Result<Vec<OpResult>, CoordError> {
    let mut writes = response.op_responses().into_iter();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let result = match op {
            Op::Check { .. } => OpResult::Checked,
            Op::Create { .. } => {
                writes.next();
                OpResult::Created
            }
            Op::Set { key, .. } => match writes.next() {
                // The version before this put, counted from 1, is the new one counted from 0.
                Some(TxnOpResponse::Put(put)) => match put.prev_key() {
                    Some(prev) => OpResult::Set(u64::try_from(prev.version()).unwrap_or(0)),
                    None => return Err(unexpected(key)),
                },
                _ => return Err(unexpected(key)),
            },
            Op::Delete { .. } => {
                writes.next();
                OpResult::Deleted
            }
        };
        results.push(result);
    }
    Ok(results)
}

/// The error of a transaction whose conditions failed, from its `else` branch's reads.
pub(crate) fn failure(ops: &[Op], response: &TxnResponse) -> CoordError {
    let mut reads = response.op_responses().into_iter().map(|r| match r {
        TxnOpResponse::Get(get) => Some(get),
        _ => None,
    });
    let session_alive = reads
        .next()
        .flatten()
        .is_some_and(|get| !get.kvs().is_empty());
    if !session_alive {
        return CoordError::SessionExpired;
    }
    for op in ops {
        let key = op.key().to_owned();
        let actual = reads
            .next()
            .flatten()
            .and_then(|get| get.kvs().first().map(|kv| rota_version(kv.version())));
        let has_children = match op {
            Op::Delete { .. } => reads.next().flatten().is_some_and(|get| get.count() > 0),
            _ => false,
        };
        let error = match (op, actual) {
            (Op::Check { version, .. }, actual) if actual != Some(*version) => {
                CoordError::BadVersion {
                    key,
                    expected: *version,
                    actual,
                }
            }
            (Op::Create { .. }, Some(_)) => CoordError::Exists(key),
            (Op::Set { .. } | Op::Delete { .. }, None) => CoordError::NotFound(key),
            (
                Op::Set {
                    expected: Some(e), ..
                }
                | Op::Delete {
                    expected: Some(e), ..
                },
                Some(v),
            ) if v != *e => CoordError::BadVersion {
                key,
                expected: *e,
                actual: Some(v),
            },
            (Op::Delete { .. }, _) if has_children => CoordError::NotEmpty(key),
            _ => continue,
        };
        return error;
    }
    // The reads ran in the same atomic step as the failed conditions, so one of them failed.
    CoordError::Backend("etcd refused a transaction whose conditions all held".into())
}

/// The condition "exists, at `expected` if given".
fn exists_at(key: Vec<u8>, expected: Option<u64>) -> Compare {
    match expected {
        Some(v) => Compare::version(key, CompareOp::Equal, etcd_version(v)),
        None => Compare::version(key, CompareOp::Greater, 0),
    }
}

/// etcd's version of rota's `version`.
fn etcd_version(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX - 1) + 1
}

/// rota's version of etcd's `version` (of an existing key, so at least 1).
pub(crate) fn rota_version(version: i64) -> u64 {
    u64::try_from(version - 1).unwrap_or(0)
}

fn unexpected(key: &str) -> CoordError {
    CoordError::Backend(format!("etcd answered the write of {key} unexpectedly"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_offset_by_one() {
        assert_eq!(etcd_version(0), 1);
        assert_eq!(rota_version(1), 0);
        for v in [0, 1, 41, u32::MAX as u64] {
            assert_eq!(rota_version(etcd_version(v)), v);
        }
    }
}

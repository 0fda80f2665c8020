//! What a claim takes: the earliest due tasks across the claimed partitions, in exact due
//! order (due time, then id), read as a merge of the partitions' due index ranges.

use crate::backend;
use rota_model::Epoch;
use rota_scheduler::{Claim, Millis, StoreError, TaskId};
use rusqlite::{CachedStatement, Connection, params};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A claim's choice: the tasks to take, each with its claim's epoch, earliest first, and the
/// earliest due time after the claim's among its partitions.
pub(crate) struct Due {
    pub tasks: Vec<(TaskId, Epoch)>,
    pub next_due: Option<Millis>,
}

/// A task's place in due order.
type Key = (Millis, TaskId);

/// The `limit` earliest tasks due by `now` across the `claims`' partitions. Each partition's
/// range is read a page at a time and the pages merged, so a claim reads at most `limit` plus
/// a page per partition; taking `limit` from each partition and cutting would read `limit`
/// times the partitions (twelve times what it takes, on a backlog).
pub(crate) fn earliest(
    conn: &Connection,
    claims: &[Claim],
    now: Millis,
    limit: usize,
) -> Result<Due, StoreError> {
    let page = (limit / claims.len().max(1)).clamp(16, 256);
    let mut ranges = Ranges {
        stmt: conn
            .prepare_cached(
                "SELECT scheduled_at, id FROM tasks INDEXED BY tasks_pending_due \
                 WHERE partition = ?1 AND status = 'PENDING' AND scheduled_at <= ?2 \
                   AND (scheduled_at, id) > (?3, ?4) \
                 ORDER BY scheduled_at, id LIMIT ?5",
            )
            .map_err(backend)?,
        now,
        page,
    };
    // Per partition, the rest of the page read and whether the range may go on past it.
    let mut pages = claims
        .iter()
        .map(|c| ranges.page(c.partition, (Millis::MIN, TaskId::MIN)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut heads: BinaryHeap<Reverse<(Key, usize)>> = pages
        .iter()
        .enumerate()
        .filter_map(|(i, (rows, _))| rows.front().map(|&key| Reverse((key, i))))
        .collect();
    let mut tasks = Vec::with_capacity(limit);
    while tasks.len() < limit {
        let Some(Reverse((key, i))) = heads.pop() else {
            break;
        };
        tasks.push((key.1, claims[i].epoch));
        pages[i].0.pop_front();
        if pages[i].0.is_empty() && pages[i].1 {
            pages[i] = ranges.page(claims[i].partition, key)?;
        }
        if let Some(&next) = pages[i].0.front() {
            heads.push(Reverse((next, i)));
        }
    }
    Ok(Due {
        tasks,
        next_due: next_due(conn, claims, now)?,
    })
}

/// The due index ranges of a claim's partitions.
struct Ranges<'c> {
    stmt: CachedStatement<'c>,
    now: Millis,
    page: usize,
}

impl Ranges<'_> {
    /// The next page of `partition`'s tasks due by `now` after `after`, and whether more may
    /// follow it.
    fn page(&mut self, partition: u32, after: Key) -> Result<(VecDeque<Key>, bool), StoreError> {
        let rows = self
            .stmt
            .query_map(
                params![partition, self.now, after.0, after.1, self.page as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(backend)?
            .collect::<Result<VecDeque<Key>, _>>()
            .map_err(backend)?;
        let more = rows.len() == self.page;
        Ok((rows, more))
    }
}

/// The earliest due time after `now` among the `claims`' partitions.
fn next_due(
    conn: &Connection,
    claims: &[Claim],
    now: Millis,
) -> Result<Option<Millis>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT min(scheduled_at) FROM tasks INDEXED BY tasks_pending_due \
             WHERE partition = ?1 AND status = 'PENDING' AND scheduled_at > ?2",
        )
        .map_err(backend)?;
    let mut earliest: Option<Millis> = None;
    for c in claims {
        let at: Option<Millis> = stmt
            .query_row(params![c.partition, now], |r| r.get(0))
            .map_err(backend)?;
        earliest = earliest.into_iter().chain(at).min();
    }
    Ok(earliest)
}

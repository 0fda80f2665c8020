//! The schedules' clock, one round: a worker reads the due schedules of the partitions it leads
//! and fires each one's due ticks with a fenced compare-and-set write (see the module
//! documentation of [`super`] for why that fires each tick once).

use super::{LOOKAHEAD_MS, Run, Schedule, plan, tick_key};
use crate::store::DueSchedulesQuery;
use crate::{Claim, Millis, ScheduleWrite, ScheduleWritten, StoreError, TaskStore};
use rota_model::InstanceId;
use tracing::warn;

/// Schedules read per round at most: a round with that many fires again at once.
const DUE_BATCH: usize = 100;

/// Rounds of compare-and-set on one schedule before it is left to the next round.
const ROUNDS: usize = 4;

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockRound {
    /// Ticks whose task this round created.
    pub fired: u64,
    /// Ticks whose task existed already (a second firing, refused by the store's uniqueness):
    /// zero unless something else fired the same tick.
    pub duplicates: u64,
    /// Schedules whose missed ticks their policy left out.
    pub skipped: u64,
    /// Partitions the store refused (no longer ours under the epoch we hold).
    pub refused: Vec<u32>,
    /// When the next round is due (a tick's lookahead), if any schedule is known to tick.
    pub wake_at: Option<Millis>,
    /// Store failures of single schedules (the round went on with the others).
    pub errors: u64,
}

/// Fires every due tick of the active schedules on `claims`' partitions, as of `now`.
pub async fn fire_due(
    store: &dyn TaskStore,
    owner: &InstanceId,
    claims: &[Claim],
    partitions: u32,
    now: Millis,
) -> Result<ClockRound, StoreError> {
    let query = DueSchedulesQuery {
        partitions: claims.iter().map(|c| c.partition).collect(),
        before: now + LOOKAHEAD_MS,
        limit: DUE_BATCH,
    };
    let due = store.due_schedules(query).await?;
    let mut round = ClockRound {
        wake_at: due.next_tick.map(|t| t - LOOKAHEAD_MS),
        ..ClockRound::default()
    };
    if due.schedules.len() == DUE_BATCH {
        round.wake_at = Some(now);
    }
    for schedule in due.schedules {
        let Some(claim) = claims.iter().find(|c| c.partition == schedule.partition) else {
            continue;
        };
        let name = schedule.def.name.clone();
        match fire_one(store, owner, *claim, schedule, partitions, now, &mut round).await {
            Ok(Some(next)) => {
                let wake = next - LOOKAHEAD_MS;
                round.wake_at = Some(round.wake_at.map_or(wake, |w| w.min(wake)));
            }
            Ok(None) => {}
            Err(StoreError::StaleEpoch { partition, .. }) => {
                if !round.refused.contains(&partition) {
                    round.refused.push(partition);
                }
            }
            Err(e) => {
                warn!(schedule = %name, error = %e, "firing a schedule failed; retrying");
                round.errors += 1;
                let retry = now + 1_000;
                round.wake_at = Some(round.wake_at.map_or(retry, |w| w.min(retry)));
            }
        }
    }
    Ok(round)
}

/// Fires one schedule's due ticks; returns its next tick after them.
async fn fire_one(
    store: &dyn TaskStore,
    owner: &InstanceId,
    claim: Claim,
    mut schedule: Schedule,
    partitions: u32,
    now: Millis,
    round: &mut ClockRound,
) -> Result<Option<Millis>, StoreError> {
    for _ in 0..ROUNDS {
        let Some(next_tick) = schedule.next_tick.filter(|_| !schedule.paused) else {
            return Ok(None);
        };
        let (ticks, skipped, next) = match schedule.def.spec() {
            Ok(spec) => {
                let firing = plan(&spec, &schedule.def, next_tick, now);
                if firing.ticks.is_empty() && firing.next_tick == Some(next_tick) {
                    return Ok(Some(next_tick));
                }
                (firing.ticks, firing.skipped, firing.next_tick)
            }
            Err(e) => {
                // Stored once valid, invalid now (the zone left the time zone database): the
                // schedule stops rather than being looked at again every round.
                warn!(schedule = %schedule.def.name, error = %e, "schedule can no longer be computed; it stops");
                (Vec::new(), false, None)
            }
        };
        let def = &schedule.def;
        let tasks = ticks
            .iter()
            .map(|&t| def.task_for(t, def.due_at(t)))
            .collect();
        let runs = ticks.iter().map(|&t| Run {
            tick: t,
            key: tick_key(&def.name, t),
            manual: false,
        });
        let mut fired = schedule.clone().with_runs(runs);
        fired.next_tick = next;
        fired.last_tick = ticks.last().copied().or(schedule.last_tick);
        fired.revision += 1;
        let written = store
            .write_schedule(ScheduleWrite {
                schedule: fired,
                expected: Some(schedule.revision),
                fence: Some((owner.clone(), claim)),
                tasks,
                partitions,
                now,
            })
            .await?;
        match written {
            ScheduleWritten::Written(tasks) => {
                let created = tasks.iter().filter(|(_, created)| *created).count() as u64;
                round.fired += created;
                round.duplicates += tasks.len() as u64 - created;
                round.skipped += u64::from(skipped);
                return Ok(next);
            }
            // Edited, paused or fired meanwhile: decide again from what is stored.
            ScheduleWritten::Conflict(Some(current)) => schedule = *current,
            ScheduleWritten::Conflict(None) => return Ok(None),
        }
    }
    Ok(schedule.next_tick)
}

//! `[[schedules]]` in the configuration: a deployment's crontab, applied idempotently by
//! `rota init` and at the start of `rota dev`, `rota api` and `rota worker` (a schedule whose
//! definition is already stored is left alone, its clock and pause included). Removing an entry
//! does not delete its schedule: `rota admin schedules delete NAME` does.

use rota_scheduler::schedule::{
    self, DEFAULT_CATCH_UP, MissedTicks, PutMode, PutOutcome, ScheduleDef, TaskTemplate,
};
use rota_scheduler::{DEFAULT_MAX_ATTEMPTS, Millis, TaskStore};
use serde::{Deserialize, Serialize};

/// One `[[schedules]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    /// Unique name.
    pub name: String,
    /// A cron expression (5 fields, or 6 with seconds first)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// ... or an interval: `30s`, `5m`, `2h`, `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// IANA zone of the cron expression (default `UTC`).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// The task each tick creates.
    pub task: TaskEntry,
    /// `skip`, `run-once` (default) or `run-all`.
    #[serde(default = "run_once")]
    pub missed_ticks: String,
    /// With `run-all`: the most missed ticks run (default 10).
    #[serde(default = "catch_up")]
    pub catch_up: u32,
    /// Each tick's task is due up to this much after its tick.
    #[serde(default)]
    pub jitter_ms: u64,
}

/// The task of a `[[schedules]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEntry {
    /// Task name.
    pub name: String,
    /// Any value (a TOML table becomes a JSON object).
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Attempts before FAILED (default 3).
    #[serde(default = "attempts")]
    pub max_attempts: u32,
    /// Partition key of the created tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}
fn run_once() -> String {
    "run-once".into()
}
fn catch_up() -> u32 {
    DEFAULT_CATCH_UP
}
fn attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl ScheduleEntry {
    /// The schedule's definition, checked as the API checks one (`now` for "never fires").
    pub fn definition(&self, now: Millis) -> Result<ScheduleDef, String> {
        let spec = match (&self.cron, &self.every) {
            (Some(cron), None) => cron.clone(),
            (None, Some(every)) => format!("every {}", every.trim()),
            _ => return Err("give exactly one of cron and every".into()),
        };
        let missed = MissedTicks::parse(&self.missed_ticks).ok_or_else(|| {
            format!(
                "missed_ticks = {:?}: use skip, run-once or run-all",
                self.missed_ticks
            )
        })?;
        let def = ScheduleDef {
            name: self.name.clone(),
            spec,
            zone: self.time_zone.clone(),
            task: TaskTemplate {
                name: self.task.name.trim().to_owned(),
                payload: self.task.payload.clone(),
                handler: self.task.handler.clone(),
                max_attempts: self.task.max_attempts,
                partition_key: self.task.partition_key.clone(),
            },
            missed,
            catch_up: self.catch_up,
            jitter_ms: self.jitter_ms,
        };
        def.validate(now).map_err(|e| e.to_string())?;
        Ok(def)
    }
}

/// Checks every entry: names unique, each a valid schedule. Errors name the entry.
pub fn validate(entries: &[ScheduleEntry], now: Millis) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        if !names.insert(entry.name.as_str()) {
            anyhow::bail!("schedules[{i}]: the name {:?} is used twice", entry.name);
        }
        entry
            .definition(now)
            .map_err(|e| anyhow::anyhow!("schedules[{i}] ({:?}): {e}", entry.name))?;
    }
    Ok(())
}

/// Stores every entry (create, or replace what differs); says what changed.
pub async fn apply(
    store: &dyn TaskStore,
    entries: &[ScheduleEntry],
    partitions: u32,
    now: Millis,
) -> anyhow::Result<()> {
    for entry in entries {
        let def = entry
            .definition(now)
            .map_err(|e| anyhow::anyhow!("schedule {:?}: {e}", entry.name))?;
        let (_, outcome) = schedule::put(store, def, PutMode::Replace, partitions, now)
            .await
            .map_err(|e| anyhow::anyhow!("cannot store schedule {:?}: {e}", entry.name))?;
        match outcome {
            PutOutcome::Created => {
                tracing::info!(schedule = %entry.name, "schedule created from the configuration")
            }
            PutOutcome::Updated => {
                tracing::info!(schedule = %entry.name, "schedule updated from the configuration")
            }
            PutOutcome::Unchanged => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_memory::MemoryTaskStore;
    use rota_scheduler::Schedules;

    fn entry(every: &str) -> ScheduleEntry {
        ScheduleEntry {
            name: "beat".into(),
            cron: None,
            every: Some(every.into()),
            time_zone: utc(),
            task: TaskEntry {
                name: "beat".into(),
                payload: serde_json::json!({"n": 1}),
                handler: None,
                max_attempts: 3,
                partition_key: None,
            },
            missed_ticks: run_once(),
            catch_up: catch_up(),
            jitter_ms: 0,
        }
    }

    #[tokio::test]
    async fn applying_the_crontab_again_changes_nothing_and_a_change_replaces() {
        let store = MemoryTaskStore::new();
        let now = 1_700_000_000_000;
        apply(&store, &[entry("30s")], 12, now).await.unwrap();
        let first = store.schedule("beat").await.unwrap().unwrap();
        // Another process starting with the same file, later: the clock is left alone.
        apply(&store, &[entry("30s")], 12, now + 45_000)
            .await
            .unwrap();
        assert_eq!(store.schedule("beat").await.unwrap().unwrap(), first);
        // A paused schedule stays paused across a restart with the same file.
        schedule::pause(&store, "beat", 12, now).await.unwrap();
        apply(&store, &[entry("30s")], 12, now).await.unwrap();
        assert!(store.schedule("beat").await.unwrap().unwrap().paused);
        schedule::resume(&store, "beat", 12, now).await.unwrap();
        apply(&store, &[entry("1m")], 12, now).await.unwrap();
        let changed = store.schedule("beat").await.unwrap().unwrap();
        assert_eq!(changed.def.spec, "every 1m");
        assert_eq!(changed.next_tick, Some((now / 60_000 + 1) * 60_000));
        // A bad entry names itself.
        let mut bad = entry("30s");
        bad.missed_ticks = "sometimes".into();
        let err = validate(&[bad], now).unwrap_err().to_string();
        assert!(
            err.contains("schedules[0]") && err.contains("sometimes"),
            "{err}"
        );
        let twice = validate(&[entry("30s"), entry("1m")], now)
            .unwrap_err()
            .to_string();
        assert!(twice.contains("used twice"), "{twice}");
    }
}

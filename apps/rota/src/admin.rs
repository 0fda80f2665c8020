//! `rota admin`: operate a cluster, either through its API (`--url`, with `ROTA_TOKEN` when the
//! API has tokens: any cluster, `rota dev` included) or straight on the stores its
//! configuration names (`--config`: a production cluster, with no API needed). Both print the
//! same JSON.

use crate::api::ClusterView;
use crate::config::{Config, redact_url};
use crate::crontab::ScheduleEntry;
use crate::roles::{initialised, session, task_store};
use anyhow::Context;
use rota_client::{Client, ScheduleBody, TaskBody};
use rota_cluster::admin::Admin;
use rota_cluster::keys::ClusterKeys;
use rota_model::InstanceId;
use rota_scheduler::worker::wall_clock_ms;
use std::sync::Arc;

/// What `rota admin` can do.
pub enum AdminCommand {
    /// Print the cluster's status as JSON.
    Status,
    /// Enable or disable an instance.
    Enable(String, bool),
    /// Maintenance mode on or off.
    Maintenance(bool),
    /// Ask the controller to reconcile now.
    Rebalance,
    /// Schedules.
    Schedules(ScheduleCommand),
}

/// What `rota admin schedules` can do.
pub enum ScheduleCommand {
    /// Every schedule, as JSON.
    List,
    /// One schedule with its next fire times and last runs, as JSON.
    Show(String),
    /// Create or replace one.
    Put(Box<ScheduleEntry>),
    /// Delete one.
    Delete(String),
    /// Pause one.
    Pause(String),
    /// Resume one.
    Resume(String),
    /// Fire one now, once.
    Trigger(String),
}

/// Prints `value` as pretty JSON on stdout.
fn print<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Says that a cluster action is done.
fn done(command: &AdminCommand) {
    match command {
        AdminCommand::Enable(id, true) => println!("instance {id} enabled"),
        AdminCommand::Enable(id, false) => println!("instance {id} disabled"),
        AdminCommand::Maintenance(on) => println!("maintenance {}", if *on { "on" } else { "off" }),
        AdminCommand::Rebalance => println!("rebalance requested"),
        AdminCommand::Status | AdminCommand::Schedules(_) => {}
    }
}

/// `rota admin --url URL ...`: through the API.
pub async fn through_api(client: &Client, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Status => print(&client.cluster().await?)?,
        AdminCommand::Enable(ref id, enabled) => {
            client.set_instance_enabled(id, enabled).await?;
            done(&command);
        }
        AdminCommand::Maintenance(on) => {
            client.set_maintenance(on).await?;
            done(&command);
        }
        AdminCommand::Rebalance => {
            client.rebalance().await?;
            done(&command);
        }
        AdminCommand::Schedules(command) => match command {
            ScheduleCommand::List => print(&client.all_schedules().await?)?,
            ScheduleCommand::Show(name) => print(&client.schedule(&name).await?)?,
            ScheduleCommand::Put(entry) => {
                let put = client.put_schedule(&entry.name, &body_of(&entry)?).await?;
                let outcome = if put.created { "Created" } else { "Updated" };
                eprintln!("schedule {:?}: {outcome}", entry.name);
                print(&put.value)?;
            }
            ScheduleCommand::Delete(name) => {
                client.delete_schedule(&name).await?;
                eprintln!("schedule {name:?} deleted");
            }
            ScheduleCommand::Pause(name) => print(&client.pause_schedule(&name).await?)?,
            ScheduleCommand::Resume(name) => print(&client.resume_schedule(&name).await?)?,
            ScheduleCommand::Trigger(name) => print(&client.trigger_schedule(&name).await?.task)?,
        },
    }
    Ok(())
}

/// A schedule as the CLI describes it, as the API takes it.
fn body_of(entry: &ScheduleEntry) -> anyhow::Result<ScheduleBody> {
    let missed = serde_json::from_value(serde_json::Value::String(entry.missed_ticks.clone()))
        .with_context(|| {
            format!(
                "--missed-ticks {:?}: use skip, run-once or run-all",
                entry.missed_ticks
            )
        })?;
    Ok(ScheduleBody {
        name: Some(entry.name.clone()),
        cron: entry.cron.clone(),
        every: entry.every.clone(),
        time_zone: Some(entry.time_zone.clone()),
        task: TaskBody {
            name: entry.task.name.clone(),
            payload: Some(serde_json::value::to_raw_value(&entry.task.payload)?),
            handler: entry.task.handler.clone(),
            max_attempts: Some(entry.task.max_attempts),
            partition_key: entry.task.partition_key.clone(),
        },
        missed_ticks: Some(missed),
        catch_up: Some(entry.catch_up),
        jitter_ms: Some(entry.jitter_ms),
    })
}

/// `rota admin --config FILE ...`: straight on the stores the configuration names.
pub async fn direct(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    let command = match command {
        AdminCommand::Schedules(c) => return schedules_direct(config, c).await,
        other => other,
    };
    initialised(config).await?;
    let session = session(config).await?;
    let keys = ClusterKeys::new(&config.cluster.name);
    let admin = Admin::with_keys(session.clone(), keys.clone());
    match command {
        AdminCommand::Status => {
            let view = ClusterView {
                session: session.clone(),
                keys,
            };
            let status = crate::status::cluster_status(
                &view,
                config.cluster.partitions,
                &redact_url(&config.storage.url),
            )
            .await?;
            print(&status)?;
        }
        AdminCommand::Enable(ref id, enabled) => {
            admin.set_enabled(&InstanceId::new(id), enabled).await?;
            done(&command);
        }
        AdminCommand::Maintenance(on) => {
            admin.set_maintenance(on).await?;
            done(&command);
        }
        AdminCommand::Rebalance => {
            admin.request_rebalance(rota_cluster::now_ms()).await?;
            done(&command);
        }
        AdminCommand::Schedules(_) => unreachable!("handled above"),
    }
    let _ = session.close().await;
    Ok(())
}

/// `rota admin schedules ...` on the task store, by the same rules as the API.
async fn schedules_direct(config: &Config, command: ScheduleCommand) -> anyhow::Result<()> {
    use crate::api::schedules::view_of;
    use rota_scheduler::schedule::{self, PutMode};
    let resource = initialised(config).await?;
    let store = task_store(config, &Arc::default()).await?;
    let (store, partitions, now) = (&*store, resource.partitions, wall_clock_ms());
    match command {
        ScheduleCommand::List => {
            let mut views = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store.schedules(after.as_deref(), 500).await?;
                let last = page.last().map(|s| s.def.name.clone());
                for s in page {
                    views.push(view_of(store, s, false).await?);
                }
                match last {
                    Some(last) if views.len() % 500 == 0 => after = Some(last),
                    _ => break,
                }
            }
            print(&views)?;
        }
        ScheduleCommand::Show(name) => match store.schedule(&name).await? {
            Some(s) => print(&view_of(store, s, true).await?)?,
            None => anyhow::bail!("no schedule named {name:?}"),
        },
        ScheduleCommand::Put(entry) => {
            let def = entry
                .definition(now)
                .map_err(|e| anyhow::anyhow!("schedule {:?}: {e}", entry.name))?;
            let (s, outcome) = schedule::put(store, def, PutMode::Replace, partitions, now).await?;
            eprintln!("schedule {:?}: {outcome:?}", s.def.name);
            print(&view_of(store, s, false).await?)?;
        }
        ScheduleCommand::Delete(name) => {
            schedule::delete(store, &name, now).await?;
            eprintln!("schedule {name:?} deleted");
        }
        ScheduleCommand::Pause(name) => {
            let s = schedule::pause(store, &name, partitions, now).await?;
            print(&view_of(store, s, false).await?)?;
        }
        ScheduleCommand::Resume(name) => {
            let s = schedule::resume(store, &name, partitions, now).await?;
            print(&view_of(store, s, false).await?)?;
        }
        ScheduleCommand::Trigger(name) => {
            let (_, task) = schedule::trigger(store, &name, partitions, now).await?;
            print(&crate::api::tasks::view(task))?;
        }
    }
    Ok(())
}

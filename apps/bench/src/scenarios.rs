//! The scenarios, each through the public API ([`rota_client`]) as any client would: a backlog
//! due at one moment and burnt down, a steady rate of single creates and their start lag, and a
//! worker's SIGKILL under load. Every figure comes from the tasks as the API reports them
//! afterwards (their due, start and finish times), so nothing is counted that the store did not
//! record.

use crate::cluster::Cluster;
use crate::progress::Progress;
use crate::report::Figure;
use crate::{thousands, time, wall_clock_ms};
use anyhow::{Context, bail};
use rota_client::{Client, CreateTask, TaskQuery, TaskStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What one burn-down measured.
pub struct BurnDown {
    pub insert_per_s: f64,
    pub per_s: f64,
    seconds: f64,
    /// The same, timed as a user would from outside: until the API's backlog read zero.
    stopwatch_seconds: f64,
    insert_overran: bool,
}

impl BurnDown {
    pub fn figure(&self, n: usize) -> Figure {
        let mut f = Figure::new(format!("burn-down {}", thousands(n)))
            .value("tasks/s", self.per_s)
            .value("s", self.seconds)
            .value("tasks/s by stopwatch", n as f64 / self.stopwatch_seconds)
            .note(
                "tasks/s: from the due moment to the last finishedAt; by stopwatch: to the moment \
                 GET /tasks/backlog read zero",
            );
        if self.insert_overran {
            f = f.note("the insert ran past the due time: timed from the last insert");
        }
        f
    }
}

/// Inserts `n` tasks due at one moment (after the insert is expected to end), waits for all to
/// finish, and times the burn-down from the due moment (or the last insert, if later) to the
/// last completion.
pub async fn burn_down(
    cluster: &Cluster,
    name: &str,
    n: usize,
    clients: usize,
    expected_insert_per_s: f64,
) -> anyhow::Result<BurnDown> {
    let lead = Duration::from_secs_f64(n as f64 / expected_insert_per_s * 1.5 + 1.0);
    let due = wall_clock_ms() + lead.as_millis() as i64;
    let task = CreateTask::new(name).due(time::format(due)).handler("noop");
    let started = Instant::now();
    let batches = n.div_ceil(1_000);
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Progress::new(format!("insert {}", thousands(n)), n);
    let mut joins = Vec::new();
    for _ in 0..clients.min(batches) {
        let (next, progress, task, client) = (
            next.clone(),
            progress.clone(),
            task.clone(),
            cluster.client.clone(),
        );
        joins.push(tokio::spawn(async move {
            let mut first_id = i64::MAX;
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(first_id);
                }
                let size = (n - b * 1_000).min(1_000);
                let created = client
                    .create_tasks(&vec![task.clone(); size])
                    .await
                    .context("POST /tasks/batch")?;
                if let Some(t) = created.first() {
                    first_id = first_id.min(t.id);
                }
                progress.add(size);
            }
        }));
    }
    let mut first_id = i64::MAX;
    for join in joins {
        first_id = first_id.min(join.await??);
    }
    let inserted = started.elapsed();
    progress.finish();
    let insert_end = wall_clock_ms();
    let insert_per_s = n as f64 / inserted.as_secs_f64();
    let until_due = (due - wall_clock_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(until_due)).await;
    let emptied =
        wait_for_backlog(&cluster.client, format!("burn-down {}", thousands(n)), n).await?;
    let tasks = read_tasks(&cluster.client, name, first_id - 1, n).await?;
    let last_finish = tasks.iter().map(|t| t.finished).max().unwrap_or(due);
    let from = due.max(insert_end);
    let seconds = (last_finish - from).max(1) as f64 / 1000.0;
    Ok(BurnDown {
        insert_per_s,
        per_s: n as f64 / seconds,
        seconds,
        stopwatch_seconds: (emptied - from).max(1) as f64 / 1000.0,
        insert_overran: insert_end > due,
    })
}

/// A finished task's times, as the API reports them.
pub struct Times {
    partition: u32,
    due: i64,
    started: i64,
    finished: i64,
}

/// Reads back the `n` tasks named `name` with ids above `after`; every one must be COMPLETED.
async fn read_tasks(
    client: &Client,
    name: &str,
    after: i64,
    n: usize,
) -> anyhow::Result<Vec<Times>> {
    let mut out = Vec::with_capacity(n);
    let mut query = TaskQuery {
        name: Some(name.to_owned()),
        limit: Some(1000),
        cursor: (after > 0).then(|| after.to_string()),
        ..TaskQuery::default()
    };
    loop {
        let page = client.list_tasks(&query).await.context("GET /tasks")?;
        for t in &page.tasks {
            if t.status != TaskStatus::Completed {
                bail!(
                    "task {} ended {:?} (expected COMPLETED): {t:?}",
                    t.id,
                    t.status
                );
            }
            let parse = |what: &str, text: Option<&String>| -> anyhow::Result<i64> {
                let text = text.with_context(|| format!("task {} without {what}", t.id))?;
                time::parse(text)
            };
            out.push(Times {
                partition: t.partition_id,
                due: parse("scheduledTime", Some(&t.scheduled_time))?,
                started: parse("startedAt", t.started_at.as_ref())?,
                finished: parse("finishedAt", t.finished_at.as_ref())?,
            });
        }
        match page.next_cursor {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    if out.len() != n {
        bail!(
            "{} tasks named {name} were found, {n} were created",
            out.len()
        );
    }
    Ok(out)
}

/// Polls `/tasks/backlog` until nothing is pending or running, showing progress over `n` tasks.
/// Fails if the backlog stops shrinking for a minute.
/// Waits until the API's backlog (PENDING and RUNNING tasks) reads zero; the wall-clock
/// milliseconds of the answer that read it.
async fn wait_for_backlog(client: &Client, label: String, n: usize) -> anyhow::Result<i64> {
    let progress = Progress::new(label, n);
    let mut last = (u64::MAX, Instant::now());
    let mut previous: Option<(u64, Instant)> = None;
    let mut pace: Option<f64> = None; // tasks a second, at the last count that went down
    loop {
        let backlog = client.backlog().await.context("GET /tasks/backlog")?;
        let (read_at, live) = (Instant::now(), backlog.pending + backlog.running);
        progress.set(n.saturating_sub(live as usize));
        if live == 0 {
            progress.finish();
            return Ok(wall_clock_ms());
        }
        if live < last.0 {
            last = (live, read_at);
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("the backlog has stayed at {live} tasks for a minute");
        }
        // Counting is not free on the store: poll every half second, and more often as the
        // end nears (a quarter of the time left at the last pace seen, at least 10 ms; a tail
        // that stands still keeps the pace it had), so that the moment it reads zero is a
        // stopwatch's to within a few percent.
        if let Some((before, at)) = previous.filter(|(before, _)| *before > live) {
            pace = Some((before - live) as f64 / read_at.duration_since(at).as_secs_f64());
        }
        let left = pace.map_or(Duration::MAX, |pace| {
            Duration::try_from_secs_f64(live as f64 / pace / 4.0).unwrap_or(Duration::MAX)
        });
        let pause = left.clamp(Duration::from_millis(10), Duration::from_millis(500));
        previous = Some((live, read_at));
        tokio::time::sleep(pause).await;
    }
}

/// Sends `rate` single creates a second for `seconds`, each due when the API receives it, then
/// reports start - due over all of them.
pub async fn latency(
    cluster: &Cluster,
    name: &str,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<(Figure, Vec<i64>)> {
    let (ids, sent_per_s) = steady_load(
        &cluster.client,
        name,
        rate,
        Duration::from_secs(seconds),
        None,
    )
    .await?;
    let n = ids.len();
    wait_for_backlog(&cluster.client, "latency: finishing".into(), n).await?;
    let first = ids.iter().min().copied().unwrap_or(1);
    let tasks = read_tasks(&cluster.client, name, first - 1, n).await?;
    let mut lags: Vec<i64> = tasks.iter().map(|t| t.started - t.due).collect();
    lags.sort_unstable();
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize] as f64;
    let figure = Figure::new(format!(
        "latency at {} tasks/s for {seconds} s",
        thousands(rate as usize)
    ))
    .value("p50 ms", pct(0.5))
    .value("p99 ms", pct(0.99))
    .value("max ms", *lags.last().unwrap_or(&0) as f64)
    .note(format!(
        "start - due over {} tasks, sent at {sent_per_s:.0}/s",
        thousands(n)
    ));
    Ok((figure, lags))
}

/// Sends `rate` creates a second for `length` from 32 clients on a fixed schedule (a late client
/// catches up rather than lowering the rate); `at_half` runs once, half way. Returns the created
/// ids and the rate achieved.
async fn steady_load(
    client: &Client,
    name: &str,
    rate: u32,
    length: Duration,
    mut at_half: Option<&mut (dyn FnMut() -> anyhow::Result<()> + Send)>,
) -> anyhow::Result<(Vec<i64>, f64)> {
    const CLIENTS: u32 = 32;
    let total = (u64::from(rate) * length.as_millis() as u64 / 1000) as usize;
    let progress = Progress::new(format!("steady load {rate}/s"), total);
    let start = tokio::time::Instant::now();
    let task = CreateTask::new(name).handler("noop");
    let mut joins = Vec::new();
    for c in 0..CLIENTS {
        let (client, task, progress) = (client.clone(), task.clone(), progress.clone());
        joins.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut k = c as usize;
            while k < total {
                let at = start + Duration::from_secs_f64(k as f64 / f64::from(rate));
                tokio::time::sleep_until(at).await;
                let created = client
                    .create_task(&task, None)
                    .await
                    .context("POST /tasks")?;
                ids.push(created.value.id);
                progress.add(1);
                k += CLIENTS as usize;
            }
            anyhow::Ok(ids)
        }));
    }
    if let Some(action) = at_half.as_mut() {
        tokio::time::sleep_until(start + length / 2).await;
        action()?;
    }
    let mut ids = Vec::with_capacity(total);
    for join in joins {
        ids.extend(join.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.finish();
    Ok((ids, total as f64 / elapsed))
}

/// Under a steady load, SIGKILLs one worker half way and measures, for each partition it led,
/// how long after the kill that partition's tasks started running again elsewhere.
pub async fn failover(cluster: &mut Cluster, name: &str, rate: u32) -> anyhow::Result<Figure> {
    let victim = cluster
        .worker_ids()
        .first()
        .cloned()
        .context("a worker to kill")?;
    let status = cluster.client.cluster().await.context("GET /cluster")?;
    let led: Vec<u32> = status
        .partitions
        .iter()
        .filter(|p| {
            p.holders
                .iter()
                .any(|h| h.instance == victim && h.state == "MASTER")
        })
        .map(|p| p.partition)
        .collect();
    if led.is_empty() {
        bail!("worker {victim} leads no partition: nothing to fail over");
    }
    let timeout = cluster.session_timeout;
    let length = (timeout * 2).max(Duration::from_secs(10)) + Duration::from_secs(4);
    let client = cluster.client.clone();
    let mut killed_at = 0i64;
    let (ids, _) = {
        let mut kill = || -> anyhow::Result<()> {
            killed_at = wall_clock_ms();
            cluster.kill_worker(&victim)
        };
        steady_load(&client, name, rate, length, Some(&mut kill)).await?
    };
    let n = ids.len();
    wait_for_backlog(&client, "failover: finishing".into(), n).await?;
    let first = ids.iter().min().copied().unwrap_or(1);
    let tasks = read_tasks(&client, name, first - 1, n).await?;
    // Per partition of the victim: the first start, after the kill, of a task due after it.
    let mut back: std::collections::BTreeMap<u32, i64> = Default::default();
    let mut worst_lag = 0i64;
    for t in tasks
        .iter()
        .filter(|t| led.contains(&t.partition) && t.due >= killed_at)
    {
        let at = back.entry(t.partition).or_insert(t.started);
        *at = (*at).min(t.started);
        worst_lag = worst_lag.max(t.started - t.due);
    }
    if back.len() != led.len() {
        bail!("some of {victim}'s partitions ran nothing after the kill");
    }
    let failover = back.values().map(|&at| at - killed_at).max().unwrap_or(0);
    Ok(Figure::new(format!(
        "failover after SIGKILL of a worker ({} partitions)",
        led.len()
    ))
    .value("s", failover as f64 / 1000.0)
    .value("session timeout s", timeout.as_secs_f64())
    .value("worst lag s", worst_lag as f64 / 1000.0)
    .note(format!("steady load of {rate} tasks/s")))
}

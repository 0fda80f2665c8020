//! What one task costs the database: the burn-down of a backlog, with PostgreSQL counting each
//! statement (`pg_stat_statements`), divided by the tasks. Statements are sorted by what they
//! do for a task (its insert, its claim, its completion) or for the cluster (leases, ownership,
//! notifications: "other writes"); the reads (no WAL) are left out. Beside them, the whole
//! database's WAL and the task table's tuple counts over the same time, which include what no
//! statement of rota's wrote (autovacuum, checkpoints).

use crate::cluster::Cluster;
use crate::report::Figure;
use crate::scenarios;
use anyhow::Context;
use std::time::Duration;

/// The classes of statements, by the text PostgreSQL normalised; a statement with no WAL is a
/// read.
const BY_CLASS: &str = "
SELECT class, sum(wal_bytes), sum(wal_records), sum(wal_fpi), sum(shared_blks_dirtied),
       sum(calls), sum(total_exec_time)
FROM (SELECT *, CASE
        WHEN wal_records = 0 THEN 'reads'
        WHEN query LIKE '%INSERT INTO rota_tasks%' THEN 'insert'
        WHEN query LIKE '%SET status = ''RUNNING''%' OR query LIKE '%rota_claim(%' THEN 'claim'
        WHEN query LIKE '%AS c(id, epoch, outcome%' THEN 'completion'
        ELSE 'other writes' END AS class
      FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())) s
GROUP BY class ORDER BY class";

/// The task table's tuples written so far (inserted, updated, of which HOT), its autovacuum and
/// autoanalyze runs, and the server's checkpoints.
const TUPLES: &str = "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, autovacuum_count, \
                      autoanalyze_count, \
                      (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter) \
                      FROM pg_stat_user_tables WHERE relname = 'rota_tasks'";

/// How long PostgreSQL may hold back its cumulative statistics (WAL, tables) before its
/// backends report them: idle backends report within 10 s.
const STATS_DELAY: Duration = Duration::from_secs(12);

/// Burns down `n` tasks named `name` with every statement counted; the figures per task.
pub async fn cost(
    cluster: &Cluster,
    name: &str,
    n: usize,
    clients: usize,
) -> anyhow::Result<Vec<Figure>> {
    cluster
        .query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await?;
    tokio::time::sleep(STATS_DELAY).await;
    let tuples_before = numbers(&cluster.query(TUPLES).await?);
    cluster
        .query("SELECT pg_stat_statements_reset(), pg_stat_reset_shared('wal')")
        .await?;
    scenarios::burn_down(cluster, name, n, clients, 50_000.0).await?;
    let classes = cluster.query(BY_CLASS).await?;
    tokio::time::sleep(STATS_DELAY).await;
    let wal = numbers(
        &cluster
            .query("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
            .await?,
    );
    let tuples = numbers(&cluster.query(TUPLES).await?);
    let per_task = |v: f64| v / n as f64;
    // A class's sums, in BY_CLASS's order, as a figure per task.
    let writes = |name: &str, sums: &[f64]| {
        let per = |i: usize| per_task(sums[i]);
        Figure::new(format!("cost: {name}"))
            .value("WAL B/task", per(0))
            .value("WAL records/task", per(1))
            .value("FPI/task", per(2))
            .value("blocks dirtied/task", per(3))
            .value("statements/1k tasks", per(4) * 1000.0)
            .value("database ms/1k tasks", per(5) * 1000.0)
    };
    let mut figures = Vec::new();
    let mut all = [0.0; 6];
    for line in classes.lines().filter(|l| !l.trim().is_empty()) {
        let (class, rest) = line.split_once('|').context("a class and its sums")?;
        let sums = numbers(rest);
        if class == "reads" {
            let per = |i: usize| per_task(sums[i]) * 1000.0;
            figures.push(
                Figure::new("cost: reads")
                    .value("statements/1k tasks", per(4))
                    .value("database ms/1k tasks", per(5)),
            );
            continue;
        }
        for (total, x) in all.iter_mut().zip(&sums) {
            *total += x;
        }
        figures.push(writes(class, &sums));
    }
    figures.push(
        writes("every write of rota's", &all)
            .note("pg_stat_statements, over the insert and the burn-down"),
    );
    let delta = |i: usize| per_task(tuples[i] - tuples_before[i]);
    figures.push(
        Figure::new("cost: the whole database")
            .value("WAL B/task", per_task(wal[2]))
            .value("WAL records/task", per_task(wal[0]))
            .value("FPI/task", per_task(wal[1]))
            .value("rows inserted/task", delta(0))
            .value("rows updated/task", delta(1))
            .value("of which HOT/task", delta(2))
            .value("autovacuums", tuples[3] - tuples_before[3])
            .value("autoanalyzes", tuples[4] - tuples_before[4])
            .value("checkpoints", tuples[5] - tuples_before[5])
            .note(format!(
                "pg_stat_wal and the task table's counts, read {} s after the last completion: \
                 autovacuum and checkpoints included",
                STATS_DELAY.as_secs()
            )),
    );
    Ok(figures)
}

/// The numbers of one `|`-separated row (empty sums read as 0).
fn numbers(row: &str) -> Vec<f64> {
    row.trim()
        .split('|')
        .map(|x| x.trim().parse().unwrap_or(0.0))
        .collect()
}

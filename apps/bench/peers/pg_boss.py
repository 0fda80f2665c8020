#!/usr/bin/env python3
"""pg-boss, a peer rota measures itself against, on a throwaway PostgreSQL.

usage: python3 apps/bench/peers/pg_boss.py [N] [PROCESSES]

Installs Node 22 and pg-boss 12 from the npm registry into ~/.cache/rota-peers, starts
PostgreSQL (the Debian binaries, default settings) on a free port in a temporary directory,
creates a queue, inserts N no-op jobs with pg-boss's own bulk `insert` (batches of 10,000),
then starts PROCESSES worker processes, each with pg-boss's fastest documented settings for
short jobs (`work` with batches of 100 completed together, 4 local workers, fetching
continuously while batches come back full, NOTIFY on, 0.5 s polling otherwise), and times
them from their start until no job is left to run (the backlog polled every 20 ms, as the
database counts it). Prints one JSON line. Needs root (PostgreSQL runs as the postgres user).
"""
import json, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from graphile_worker import CACHE, drain, install, report, start_postgres, stop  # noqa: E402

SCRIPT = r"""
import { PgBoss } from 'pg-boss';
const [mode, url, n] = process.argv.slice(2);
const boss = new PgBoss({ connectionString: url, max: 10, supervise: false, schedule: false });
boss.on('error', (e) => { console.error(e); process.exit(1); });
await boss.start();
if (mode === 'insert') {
  await boss.createQueue('noop', { notify: true });
  const total = Number(n);
  for (let i = 0; i < total; i += 10000) {
    const jobs = [];
    for (let j = i; j < Math.min(total, i + 10000); j++) jobs.push({ data: { i: j } });
    await boss.insert('noop', jobs);
  }
  await boss.stop({ graceful: false });
} else {
  await boss.work('noop', { batchSize: 100, localConcurrency: 4, burstWhenBatchFull: true,
                            pollingIntervalSeconds: 0.5, notifyPollingIntervalSeconds: 0.5 },
                  async () => {});
  process.on('SIGTERM', async () => { await boss.stop({ graceful: false }); process.exit(0); });
}
"""

LEFT = ("SELECT count(*) FROM pgboss.job WHERE name = 'noop' "
        "AND state IN ('created', 'retry', 'active')")


def ensure_peer():
    node = install("pg-boss@12", "pg-boss/package.json")
    script = os.path.join(CACHE, "pg_boss_peer.mjs")
    with open(script, "w") as f:
        f.write(SCRIPT)
    return node, script


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if len(args) > 0 else 100_000
    k = int(args[1]) if len(args) > 1 else 2
    node, script = ensure_peer()
    version = json.load(open(os.path.join(CACHE, "node_modules/pg-boss/package.json")))["version"]
    tmp = tempfile.mkdtemp(prefix="peer-")
    os.chmod(tmp, 0o777)
    pg, url = start_postgres(tmp, [])
    workers = []
    try:
        t0 = time.time()
        subprocess.run([node, script, "insert", url, str(n)], cwd=CACHE, check=True,
                       capture_output=True)
        insert_s = time.time() - t0
        workers = [subprocess.Popen([node, script, "work", url], cwd=CACHE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(k)]
        exec_s = drain(url, LEFT, workers, "pg-boss")
        report(f"pg-boss {version}", n, k, insert_s, exec_s)
    finally:
        stop(workers, pg, tmp)


if __name__ == "__main__":
    main()

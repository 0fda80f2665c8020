#!/usr/bin/env python3
"""apalis, a peer rota measures itself against, on a throwaway PostgreSQL.

usage: python3 apps/bench/peers/apalis.py [N] [PROCESSES]

Builds the small program in `apalis/` (apalis 0.7 and its PostgreSQL storage, from crates.io;
release build, its target directory in ~/.cache/rota-peers), starts PostgreSQL (the Debian
binaries, default settings) on a free port in a temporary directory, runs apalis's migrations,
inserts N no-op jobs with apalis's own SQL function (`apalis.push_job`, one statement), then
starts PROCESSES worker processes, each with 24 jobs at once and apalis's fastest documented
settings for short jobs (100 jobs a fetch, a fetch every 10 ms, NOTIFY on), and times them from
their start until no job is left to run (the jobs polled every 20 ms, as the database counts
them). Prints one JSON line. Needs root (PostgreSQL runs as the postgres user).
"""
import os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from graphile_worker import CACHE, drain, psql, report, start_postgres, stop  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LEFT = "SELECT count(*) FROM apalis.jobs WHERE job_type = 'noop' AND status <> 'Done'"


def ensure_peer():
    """The peer program, built in release mode."""
    target = os.path.join(CACHE, "apalis-target")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                    os.path.join(HERE, "apalis/Cargo.toml"), "--target-dir", target],
                   check=True)
    return os.path.join(target, "release/apalis-peer")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if len(args) > 0 else 100_000
    k = int(args[1]) if len(args) > 1 else 2
    peer = ensure_peer()
    tmp = tempfile.mkdtemp(prefix="peer-")
    os.chmod(tmp, 0o777)
    pg, url = start_postgres(tmp, [])
    workers = []
    try:
        subprocess.run([peer, "setup", url], check=True, capture_output=True)
        t0 = time.time()
        psql(url, "SELECT count(apalis.push_job('noop', '{}'::json)) "
                  f"FROM generate_series(1, {n})")
        insert_s = time.time() - t0
        workers = [subprocess.Popen([peer, "work", url, "24"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for _ in range(k)]
        exec_s = drain(url, LEFT, workers, "apalis")
        report("apalis 0.7 (PostgreSQL storage)", n, k, insert_s, exec_s)
    finally:
        stop(workers, pg, tmp)


if __name__ == "__main__":
    main()

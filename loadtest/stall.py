#!/usr/bin/env python3
"""A Redis stall under steady load, and what linkhit does after it (issue #17; docs/PERFORMANCE.md).

    python3 loadtest/stall.py                                   # target/release/linkhit
    python3 loadtest/stall.py --servers base@/tmp/linkhit-base,new --stall 0.5 --seconds 12

The set-up of tail.py (linkhit pinned to CPU 1 with one worker thread, wrk and Redis on CPU 0, 100 % bot
traffic over `--links` links, every code requested once first). Then, per server, one wrk run of
`--seconds`; `--at` seconds in, Redis is stopped (SIGSTOP) for `--stall` seconds. /metrics is read every
0.25 s. Printed per server: req/s and p99 of the run, hits that went through the journal
(`linkhit_journal_spilled_total`) and how many of them after Redis answered again, how long the store was
unhealthy after Redis answered (up to the end of the load at most), the click thread's CPU per hit, and at the end counted against answered
(the broadcast's hits against `linkhit_redirects_total{status="302"}`, once the journal is empty).
Servers run one after the other, each with a Redis of its own.

    python3 loadtest/stall.py --replay 5 --servers base@/tmp/linkhit-base,new

With --replay S, the journal's replay rate instead: wrk for S seconds while Redis is stopped (every batch
journaled), SIGTERM, Redis resumed, then a fresh start of the same binary on that journal, timed from
the start of the process until the journal is empty: hits replayed per second (start-up included), and
counted against answered.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lh  # noqa: E402
import tail  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{", 1)[0]
        if name == "linkhit_redirects_total" and 'status="302"' not in series:
            continue
        out[name] = out.get(name, 0.0) + float(value)
    return out


def start(name, binary, env, args, tmp):
    """linkhit pinned as in tail.py, `--links` links created, every code requested once (cached, the
    pipeline warm): (process, port, codes file, API key)."""
    proc, port = tail.start_linkhit(binary, env, tmp, name)
    codes = os.path.join(tmp, f"codes-{name}.txt")
    try:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "loadtest", "create_links.py"), "--base",
                              f"http://127.0.0.1:{port}", "--admin-token", tail.ADMIN, "--links", str(args.links),
                              "--out", codes], check=True, capture_output=True, text=True).stdout
        tail.warm(port, codes, args.connections)
        tail.wrk(port, codes, 4, args.connections)
    except BaseException:
        proc.terminate()
        raise
    time.sleep(1)
    return proc, port, codes, json.loads(out.strip().splitlines()[-1])["api_key"]


def run(name, binary, args, tmp):
    redis, rport = tail.start_redis()
    procs = [redis]
    try:
        proc, port, codes, key = start(name, binary, {"LINKHIT_REDIS_URL": f"redis://127.0.0.1:{rport}/"}, args, tmp)
        procs.append(proc)
        result = {}
        load = threading.Thread(target=lambda: result.update(tail.wrk(port, codes, args.seconds, args.connections)))
        samples = []
        started = time.monotonic()
        clicks0, m0 = tail.click_thread_seconds(proc.pid), metrics(port)
        load.start()
        stopped = resumed = None
        while load.is_alive():
            now = time.monotonic() - started
            if stopped is None and now >= args.at:
                os.kill(redis.pid, signal.SIGSTOP)
                stopped = now
            if stopped is not None and resumed is None and now >= stopped + args.stall:
                os.kill(redis.pid, signal.SIGCONT)
                resumed = now
            m = metrics(port)
            samples.append((now, m.get("linkhit_store_healthy", 1.0), m.get("linkhit_journal_spilled_total", 0.0)))
            time.sleep(0.25)
        load.join()
        clicks1, m1 = tail.click_thread_seconds(proc.pid), metrics(port)
        hits = m1.get("linkhit_redirects_total", 0.0) - m0.get("linkhit_redirects_total", 0.0)
        # Unhealthy after Redis answered: from `resumed` to the last unhealthy sample.
        if resumed is None:
            raise SystemExit("the stall outlasted the run: raise --seconds or lower --at/--stall")
        unhealthy = [t for t, healthy, _ in samples if healthy < 1.0 and t >= resumed]
        spilled_at_resume = next((s for t, _, s in samples if t >= resumed), samples[-1][2])
        deadline = time.monotonic() + 120
        while metrics(port).get("linkhit_journal_bytes", 0.0) > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        m2 = metrics(port)
        _, stats = lh.api(port, "GET", "/api/v1/broadcasts/loadtest/stats", key=key)
        spilled = m2.get("linkhit_journal_spilled_total", 0.0) - m0.get("linkhit_journal_spilled_total", 0.0)
        return {
            "server": name,
            "req_per_s": round(result["requests"] / (result["duration_us"] / 1e6)),
            "p99_us": result["p99_us"],
            "spilled": int(spilled),
            "spilled_after_resume": int(m1.get("linkhit_journal_spilled_total", 0.0) - spilled_at_resume),
            "unhealthy_after_resume_s": round(max(unhealthy) - resumed + 0.25, 2) if unhealthy else 0.0,
            "click_thread_us_per_hit": round((clicks1 - clicks0) / hits * 1e6, 2) if hits else None,
            "counted": stats["hits"],
            "answered": int(m2.get("linkhit_redirects_total", 0.0)),
            "dropped": int(m2.get("linkhit_hits_dropped_total", 0.0)),
        }
    finally:
        redis.send_signal(signal.SIGCONT)  # a stopped Redis would not end on SIGTERM
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


def replay(name, binary, args, tmp):
    redis, rport = tail.start_redis()
    env = {"LINKHIT_REDIS_URL": f"redis://127.0.0.1:{rport}/"}
    procs = [redis]
    try:
        proc, port, codes, key = start(name, binary, env, args, tmp)
        procs.append(proc)
        os.kill(redis.pid, signal.SIGSTOP)
        tail.wrk(port, codes, args.replay, args.connections)
        first = metrics(port)
        answered = int(first.get("linkhit_redirects_total", 0.0))
        proc.terminate()
        proc.wait(timeout=60)
        os.kill(redis.pid, signal.SIGCONT)
        started = time.monotonic()  # from the start of the process: its start-up is in the figure
        journal = {"LINKHIT_JOURNAL_DIR": os.path.join(tmp, f"journal-{name}")}  # the first process's
        proc, port = tail.start_linkhit(binary, dict(env, **journal), tmp, f"{name}-replay")
        procs.append(proc)
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-F", "2999", "-g", "-p", str(proc.pid), "-o",
                                     os.path.join(tmp, f"perf-{name}.data"), "--", "sleep", "3"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + 300
        while metrics(port).get("linkhit_journal_bytes", 0.0) > 0:
            if time.monotonic() > deadline:
                raise SystemExit("the journal was not empty 300 s after the start")
            time.sleep(0.05)
        seconds = time.monotonic() - started
        if args.perf:
            perf.wait()
            print(f"perf data of the replay: {os.path.join(tmp, f'perf-{name}.data')}", file=sys.stderr)
        m = metrics(port)
        _, stats = lh.api(port, "GET", "/api/v1/broadcasts/loadtest/stats", key=key)
        replayed = m.get("linkhit_journal_replayed_total", 0.0)
        return {"server": name, "replayed": int(replayed), "seconds": round(seconds, 2),
                "hits_per_s": round(replayed / seconds), "counted": stats["hits"], "answered": answered,
                "dropped": int(first.get("linkhit_hits_dropped_total", 0.0) + m.get("linkhit_hits_dropped_total", 0.0))}
    finally:
        redis.send_signal(signal.SIGCONT)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=f"linkhit@{os.path.join(ROOT, 'target', 'release', 'linkhit')}",
                   help="name@binary,...; a bare name means target/release/linkhit")
    p.add_argument("--links", type=int, default=20_000)
    p.add_argument("--seconds", type=int, default=12)
    p.add_argument("--at", type=float, default=3.0, help="seconds into the run when Redis stops")
    p.add_argument("--stall", type=float, default=0.5, help="seconds Redis stays stopped")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--replay", type=int, default=0, metavar="S",
                   help="measure the replay of S seconds of journaled load instead")
    p.add_argument("--perf", action="store_true", help="with --replay: perf record the replaying process")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="linkhit-stall-")
    for spec in args.servers.split(","):
        name, _, binary = spec.partition("@")
        binary = binary or os.path.join(ROOT, "target", "release", "linkhit")
        print(json.dumps((replay if args.replay else run)(name, binary, args, tmp)), flush=True)


if __name__ == "__main__":
    main()

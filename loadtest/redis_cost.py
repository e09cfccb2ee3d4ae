#!/usr/bin/env python3
"""Redis's CPU per counted hit, and where it goes (issue #17, budget 2).

    python3 loadtest/redis_cost.py                         # target/release/linkhit, 100,000 links
    python3 loadtest/redis_cost.py --binary /tmp/other --warm 8 LINKHIT_RECENT_FOLD=0

Starts a private redis-server on CPU 0 and linkhit (pinned to CPU 1, as in tail.py) over it, creates the
links, warms the cache with `--warm` seconds of the same 100 %-bot traffic (every code requested, so the
measured window has no cache fills), resets Redis's statistics, runs wrk for `--seconds`, and prints
Redis's CPU (user+system from /proc) per request and `INFO commandstats` per request: EVALSHA is the
counting script with the commands it runs (HINCRBY, LPUSH, ...) counted inside it as well. Then, on the
same Redis in the same minute, the floor: Redis's CPU per plain `INCRBY <link bots> 1` (and per
`HINCRBY <link counters> bot_hits 1`, the layout before session 10), pipelined 250 deep over as many
keys as there are links (redis-benchmark; no script, no guard): what one exact per-link count costs this
VM right now, whatever its speed. Extra arguments NAME=VALUE are passed
to linkhit's environment. Needs wrk, redis-server, redis-benchmark, taskset.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tail  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "linkhit"))
    p.add_argument("--links", type=int, default=100_000)
    p.add_argument("--warm", type=int, default=8, help="seconds of traffic before measuring")
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--wrk-cpu", default="0", help="the CPU wrk runs on: 0 shares Redis's (as tail.py), 1 linkhit's")
    p.add_argument("--floor-cpu", default="1", help="the CPU redis-benchmark runs on for the floor")
    p.add_argument("--perf", action="store_true", help="perf record Redis over the measured window and print its top symbols")
    p.add_argument("env", nargs="*", help="NAME=VALUE for linkhit")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="linkhit-rcost-")
    redis, rport = tail.start_redis()
    procs = [redis]
    try:
        env = {"LINKHIT_REDIS_URL": f"redis://127.0.0.1:{rport}/", **dict(a.split("=", 1) for a in args.env)}
        proc, port = tail.start_linkhit(args.binary, env, tmp, "0")
        procs.append(proc)
        codes = os.path.join(tmp, "codes.txt")
        tail.create_links(port, args.links, codes)
        tail.warm(port, codes)
        tail.wrk(port, codes, args.warm, 64, args.wrk_cpu)
        time.sleep(1)
        cli = ["redis-cli", "-p", str(rport)]
        subprocess.run(cli + ["CONFIG", "RESETSTAT"], check=True, stdout=subprocess.DEVNULL)
        before = tail.cpu_seconds(redis.pid)
        perf = None
        if args.perf:
            data = os.path.join(tmp, "redis.perf.data")
            perf = subprocess.Popen(["perf", "record", "-F", "2999", "-g", "-p", str(redis.pid), "-o", data, "--",
                                     "sleep", str(args.seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = tail.wrk(port, codes, args.seconds, 64, args.wrk_cpu)
        time.sleep(0.5)  # counting lags the redirects by a tick
        n = max(out["requests"], 1)
        cpu = tail.cpu_seconds(redis.pid) - before
        print(f"{n / args.seconds:,.0f} req/s  Redis CPU {cpu * 1e6 / n:.2f} µs per request (every request a counted hit)")
        stats = subprocess.run(cli + ["INFO", "commandstats"], capture_output=True, text=True, check=True).stdout
        rows = []
        for line in stats.splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line.split(":", 1)
                kv = dict(x.split("=") for x in rest.split(","))
                rows.append((int(kv["usec"]), name[len("cmdstat_"):], int(kv["calls"])))
        for usec, name, calls in sorted(rows, reverse=True):
            print(f"  {name:20} {calls:>9,} calls  {usec / n:.3f} µs per request  {usec / max(calls, 1):.2f} µs per call")
        if perf is not None:
            perf.wait()
            print(f"Redis's top symbols over the window (perf data: {data}):")
            rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none",
                                  "--sort", "dso,symbol"], capture_output=True, text=True, check=True).stdout
            for line in [l for l in rep.splitlines() if l.strip() and not l.startswith("#")][:30]:
                print("  " + line.strip()[:140])
        proc.terminate()
        proc.wait(timeout=15)
        calls = 2_000_000
        # The floor of the layout before session 10 (a field of the counters hash) and of today's (a string
        # of its own per link).
        for command in (["HINCRBY", "lh:cnt:{__rand_int__}", "bot_hits", "1"], ["INCRBY", "lh:bots:{__rand_int__}", "1"]):
            before = tail.cpu_seconds(redis.pid)
            subprocess.run(["taskset", "-c", args.floor_cpu, "redis-benchmark", "-p", str(rport), "-P", "250", "-c", "1", "-n",
                            str(calls), "-r", str(args.links), "-q", *command], check=True, stdout=subprocess.DEVNULL)
            floor = (tail.cpu_seconds(redis.pid) - before) * 1e6 / calls
            print(f"floor: Redis CPU {floor:.2f} µs per pipelined {command[0]} (redis-benchmark -P 250 over"
                  f" {args.links:,} keys); a counted hit is {cpu * 1e6 / n / floor:.2f}x that")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where the click thread's time goes at saturation, cache misses included (`perf`; issue #17, budget 2).

    python3 loadtest/perf_clicks.py                       # target/release/linkhit over Redis, 100,000 links
    python3 loadtest/perf_clicks.py --binary /tmp/other --store embedded
    perf annotate -i <printed perf.data> --stdio -s linkhit::click::pipeline::intake::Intake::record

The set-up of tail.py (linkhit pinned to CPU 1 with one worker thread, wrk and Redis on CPU 0, 100 %
bot traffic, every code requested once first), then `perf record -g` of linkhit for `--seconds` in the
middle of a wrk run. Prints the click thread's share of linkhit's samples and its top symbols.
Callgrind (`instructions.py`) counts instructions and cannot see a cache miss; this can. Needs perf, wrk,
redis-server, taskset.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tail  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def report(data, *extra):
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none", *extra],
                         capture_output=True, text=True, check=True).stdout
    return [l for l in out.splitlines() if l.strip() and not l.startswith("#")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "linkhit"))
    p.add_argument("--store", choices=["redis", "embedded"], default="redis")
    p.add_argument("--links", type=int, default=100_000)
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--redis-nice", type=int, default=0, metavar="N",
                   help="Redis at nice N (19: starved, so commits are slow and the journal path runs)")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="linkhit-perf-")
    data = os.path.join(tmp, "perf.data")
    procs = []
    try:
        env = {}
        if args.store == "redis":
            redis, rport = tail.start_redis(args.redis_nice)
            procs.append(redis)
            env["LINKHIT_REDIS_URL"] = f"redis://127.0.0.1:{rport}/"
        proc, port = tail.start_linkhit(args.binary, env, tmp, "0")
        procs.append(proc)
        codes = os.path.join(tmp, "codes.txt")
        tail.create_links(port, args.links, codes)
        tail.warm(port, codes)  # every code cached
        tail.wrk(port, codes, 6, 64)  # the pipeline warm
        load = threading.Thread(target=tail.wrk, args=(port, codes, args.seconds + 6, 64))
        load.start()
        time.sleep(2)
        subprocess.run(["perf", "record", "-F", "2999", "-g", "-p", str(proc.pid), "-o", data, "--", "sleep",
                        str(args.seconds)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load.join()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)
    print("share of linkhit's samples by thread:")
    for line in report(data, "--sort", "comm")[:4]:
        print("  " + line.strip())
    print(f"click thread (linkhit-clicks), top {args.top} symbols (% of all linkhit samples):")
    for line in report(data, "--comm", "linkhit-clicks", "--sort", "symbol")[:args.top]:
        print("  " + line.strip()[:140])
    for comm in ("tokio-runtime-w",):
        lines = report(data, "--comm", comm, "--sort", "symbol")[:args.top // 2]
        if lines:
            print(f"{comm}, top symbols (% of all linkhit samples):")
            for line in lines:
                print("  " + line.strip()[:140])
    print(f"perf data: {data}")


if __name__ == "__main__":
    main()

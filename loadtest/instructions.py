#!/usr/bin/env python3
"""Instructions per request under `valgrind --tool=callgrind`: a figure the machine's noise cannot move
(issue #17). The same fixed request script (keep-alive, one connection, a fixed sequence of codes, the
same user agent) against:

  nginx      one worker, `map $uri` of every code + `return 302` (the baseline)
  bare       linkhit, one tokio worker thread, LINKHIT_CAPTURE=false
  capture    linkhit, one worker thread, capture on, embedded store (every hit classified and counted)
  capture-redis  the same over a Redis store (a redis-server this script starts; Redis's own work is not
             counted, only linkhit's: building and sending the commands, reading the replies)
  redis      the other side of capture-redis: Redis's instructions per request (counting every hit,
             answering the webhook worker's polls), linkhit running natively; the per-hit figure of
             budget 2's Redis side that the VM's speed cannot move
  redis-nofold  the same with LINKHIT_RECENT_FOLD=0 (every bot hit listed in recent clicks, as before
             session 8)

Instrumentation is switched on after the warm-up (every code requested once) and off after the measured
requests (and, for `capture`, after the pipeline has counted them), so start-up and link creation are not
counted. Only the server's instructions are counted (the client is not instrumented).

    python3 loadtest/instructions.py                    # 2,000 links, 20,000 requests, 3 repeats
    python3 loadtest/instructions.py --requests 50000 --repeats 2

Needs valgrind (callgrind_control), nginx, target/release/linkhit.
"""
import argparse
import glob
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lh  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = "loadtest-admin-token-0123456789"
BOT_UA = "facebookexternalhit/1.1 Facebot Twitterbot/1.0"


def callgrind(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def run_requests(port, paths):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for path in paths:
        conn.request("GET", path, headers={"User-Agent": BOT_UA})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 302:
            raise SystemExit(f"{path}: {resp.status}")
    conn.close()


def total_instructions(out_prefix):
    """The `summary:` of the dump taken after the measured requests (`<prefix>.<pid>.1`; the file written at
    exit is not part of the measurement)."""
    total = 0
    for path in glob.glob(out_prefix + ".*.1"):
        with open(path) as f:
            for line in f:
                if line.startswith("summary:"):
                    total += int(line.split()[1])
                    break
    return total


def measure(kind, binary, codes, args, tmp):
    out = os.path.join(tmp, f"callgrind-{kind}-{time.time_ns()}")
    port = lh.free_port()
    redis = None
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
    if kind == "nginx":
        conf = lh.nginx_conf(tmp, port, codes)
        proc = subprocess.Popen(vg + ["nginx", "-p", tmp, "-c", conf], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    else:
        # `redis*` kinds instrument Redis (linkhit runs natively); the others instrument linkhit.
        on_redis = kind.startswith("redis")
        env = dict(os.environ, LINKHIT_LISTEN=f"127.0.0.1:{port}", LINKHIT_ADMIN_TOKEN=ADMIN,
                   LINKHIT_WORKER_THREADS="1", LINKHIT_CLICK_HOLD="0", RUST_LOG="warn",
                   LINKHIT_JOURNAL_DIR=os.path.join(tmp, f"journal-{time.time_ns()}"),
                   LINKHIT_CAPTURE="false" if kind == "bare" else "true")
        env.pop("LINKHIT_REDIS_URL", None)
        if kind == "redis-nofold":
            env["LINKHIT_RECENT_FOLD"] = "0"
        if on_redis or kind == "capture-redis":
            rport = lh.free_port()
            redis = subprocess.Popen((vg if on_redis else []) + ["redis-server", "--port", str(rport), "--bind",
                                     "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lh.wait_port(rport, timeout=120)
            env["LINKHIT_REDIS_URL"] = f"redis://127.0.0.1:{rport}/"
        proc = subprocess.Popen(([] if on_redis else vg) + [binary], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        lh.wait_port(port, timeout=120)
        if kind != "nginx":
            # The same codes as nginx's map: created with explicit codes is not in the API, so create links
            # and use the codes linkhit made.
            status, ws = lh.api(port, "POST", "/api/v1/workspaces", {"name": "ir"}, ADMIN)
            assert status == 201, ws
            recipients = [{"recipient": f"+1202555{i:04d}"} for i in range(len(codes))]
            status, made = lh.api(port, "POST", "/api/v1/broadcasts/ir/links",
                                  {"target_url": "https://shop.example.com/fall-campaign?utm_source=sms",
                                   "recipients": recipients}, ws["api_key"])
            assert status == 201, made
            codes = [l["code"] for l in made["links"]]
        rng = random.Random(1)
        paths = [f"/{rng.choice(codes)}" for _ in range(args.requests)]
        run_requests(port, [f"/{c}" for c in codes])  # warm-up: every code once
        counted = kind.startswith(("capture", "redis"))
        if counted:
            time.sleep(1.0)  # the warm-up's hits counted before measuring
        measured = redis if kind.startswith("redis") else proc
        callgrind(measured.pid, "--instr=on")
        callgrind(measured.pid, "--zero")
        run_requests(port, paths)
        if counted:
            time.sleep(1.0)  # the pipeline counts the measured hits (every 10 ms tick, then a batch)
        callgrind(measured.pid, "--dump")
        callgrind(measured.pid, "--instr=off")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if redis is not None:
            redis.terminate()
            redis.wait()
    return total_instructions(out) / args.requests


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "linkhit"))
    p.add_argument("--links", type=int, default=2_000)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kinds", default="nginx,bare,capture")
    p.add_argument("--keep", action="store_true", help="keep the callgrind files (callgrind_annotate them)")
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool} (apt-get install valgrind nginx)")
    tmp = tempfile.mkdtemp(prefix="linkhit-ir-")
    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    codes = ["".join(rng.choice(alphabet) for _ in range(8)) for _ in range(args.links)]
    results = {}
    for kind in args.kinds.split(","):
        runs = [measure(kind, args.binary, codes, args, tmp) for _ in range(args.repeats)]
        if not all(runs):
            raise SystemExit(f"{kind}: callgrind counted nothing: {runs}")
        spread = (max(runs) - min(runs)) / statistics.median(runs) * 100
        results[kind] = {"instructions_per_request": round(statistics.median(runs)), "runs": [round(r) for r in runs],
                         "spread_percent": round(spread, 2)}
        print(f"{kind:8} {statistics.median(runs):>10,.0f} instructions/request  runs {[round(r) for r in runs]}"
              f"  spread {spread:.2f} %", flush=True)
    print("JSON " + json.dumps(results))
    if args.keep:
        print(f"callgrind files in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

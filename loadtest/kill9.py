#!/usr/bin/env python3
"""The loss bound of `kill -9` during a Redis outage, measured.

Starts a private redis-server and the release binary, creates a broadcast, stops Redis (SIGSTOP), taps
links from several threads, kills linkhit with SIGKILL in the middle of the taps, resumes Redis, starts
linkhit again on the same journal directory and compares the hits it counts with the 302s that were
answered before the kill. Prints one line per round and a summary.

    cargo build --release && python3 loadtest/kill9.py --rounds 5
    python3 loadtest/kill9.py --flush-interval 0.2 --threads 8 --seconds 3

Needs: redis-server on PATH. Standard library only.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import lh
from lh import free_port, wait_port


def api(port, method, path, body=None, key=None):
    return lh.api(port, method, path, body, key or ADMIN)


ADMIN = "kill9-admin-token-0123456789"
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")


def start_linkhit(binary, port, redis_port, journal, flush):
    env = dict(os.environ, LINKHIT_LISTEN=f"127.0.0.1:{port}", LINKHIT_ADMIN_TOKEN=ADMIN,
               LINKHIT_REDIS_URL=f"redis://127.0.0.1:{redis_port}/", LINKHIT_JOURNAL_DIR=journal,
               LINKHIT_CLICK_FLUSH_INTERVAL=str(flush), LINKHIT_TRUSTED_PROXIES="127.0.0.1/32",
               RUST_LOG="warn")
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def tapper(port, codes, stop, answered, lock):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    mine = 0
    i = random.randrange(len(codes))
    try:
        while not stop.is_set():
            code = codes[i % len(codes)]
            conn.request("GET", f"/{code}", headers={"User-Agent": IPHONE,
                                                   "X-Forwarded-For": f"198.51.{i % 250}.{1 + i % 200}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 302:
                mine += 1
            i += 1
    except (OSError, http.client.HTTPException):
        pass  # the server was killed
    with lock:
        answered[0] += mine


def round_(args, binary, n):
    redis_port, port = free_port(), free_port()
    journal = tempfile.mkdtemp(prefix="linkhit-kill9-")
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_port(redis_port)
        lh = start_linkhit(binary, port, redis_port, journal, args.flush_interval)
        _, ws = api(port, "POST", "/api/v1/workspaces", {"name": "kill9"})
        key = ws["api_key"]
        sent_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        recipients = [{"recipient": f"+1202555{i:04d}"} for i in range(1000)]
        _, body = api(port, "POST", "/api/v1/broadcasts/k9/links",
                      {"target_url": "https://shop.example/", "sent_at": sent_at, "recipients": recipients}, key)
        codes = [l["code"] for l in body["links"]]
        # Warm the cache (these taps count normally), then stop Redis.
        for c in codes:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", f"/{c}", headers={"User-Agent": "curl/8"})
            conn.getresponse().read()
            conn.close()
        warm = len(codes)
        os.kill(redis.pid, signal.SIGSTOP)
        stop, lock, answered = threading.Event(), threading.Lock(), [0]
        threads = [threading.Thread(target=tapper, args=(port, codes, stop, answered, lock))
                   for _ in range(args.threads)]
        started = time.time()
        for t in threads:
            t.start()
        time.sleep(random.uniform(0.3 * args.seconds, args.seconds))
        lh.send_signal(signal.SIGKILL)
        killed_at = time.time()
        lh.wait()
        stop.set()
        for t in threads:
            t.join()
        os.kill(redis.pid, signal.SIGCONT)
        lh = start_linkhit(binary, port, redis_port, journal, args.flush_interval)
        expected = warm + answered[0]
        deadline, counted = time.time() + 60, 0
        while time.time() < deadline:
            _, stats = api(port, "GET", "/api/v1/broadcasts/k9/stats", key=key)
            counted = stats["hits"]
            if counted >= expected or not any(f.endswith(".jsonl") for f in os.listdir(journal)):
                time.sleep(0.5)
                _, stats = api(port, "GET", "/api/v1/broadcasts/k9/stats", key=key)
                counted = stats["hits"]
                break
            time.sleep(0.1)
        lh.send_signal(signal.SIGTERM)
        lh.wait()
        rate = answered[0] / max(killed_at - started, 1e-9)
        lost = expected - counted
        bound = rate * (args.flush_interval + 0.01)  # one flush interval + one 10 ms drain tick
        print(json.dumps({"round": n, "answered": expected, "counted": counted, "lost": lost,
                          "tap_rate_per_s": round(rate), "lost_ms_of_taps": round(1000 * lost / rate),
                          "bound_hits": round(bound), "flush_interval_s": args.flush_interval}))
        return expected, counted, rate
    finally:
        if redis.poll() is None:
            os.kill(redis.pid, signal.SIGCONT)
            redis.kill()
        shutil.rmtree(journal, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default="target/release/linkhit")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0, help="taps last up to this long before the kill")
    p.add_argument("--flush-interval", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    random.seed(args.seed)
    print(f"# seed {args.seed}, {args.threads} threads, flush interval {args.flush_interval} s")
    results = [round_(args, args.binary, n) for n in range(args.rounds)]
    losses = [a - c for a, c, _ in results]
    ms = [1000 * (a - c) / r for a, c, r in results]
    print(f"# lost per kill: {min(losses)}..{max(losses)} hits = {min(ms):.0f}..{max(ms):.0f} ms of taps "
          f"(bound: flush interval {1000 * args.flush_interval:.0f} ms + 10 ms); "
          f"over-counted in {sum(1 for l in losses if l < 0)} rounds")


if __name__ == "__main__":
    main()

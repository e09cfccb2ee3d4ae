#!/usr/bin/env python3
"""Tail latency with click capture against the bare redirect, in one pinned run (issue #17).

    python3 loadtest/tail.py                      # 100,000 links, 3 rounds x 5 s, -c64
    python3 loadtest/tail.py --rounds 5 --seconds 5 --links 100000
    python3 loadtest/tail.py --open-loop 0.5      # then the same servers open-loop at half bare's req/s

linkhit is pinned to CPU 1 (one tokio worker thread), wrk and Redis to CPU 0; 100 % bot traffic (a preview
user agent: every hit is classified and counted, no webhooks). Three servers over the same codes:
  bare      LINKHIT_CAPTURE=false (the redirect alone)
  embedded  capture on, embedded store
  redis     capture on, Redis store
  nginx     (when asked for) nginx, one worker on CPU 1, `map` of the same codes + `return 302`
Rounds alternate bare/embedded/redis so the machine's drift hits all three alike; medians are printed
with the per-round figures, plus linkhit's CPU per request (and its click thread's alone: the click work), Redis's CPU per request
and the hits dropped (must be 0). With --open-loop F, each server is then driven
open-loop (oha -q, --latency-correction: latency counted from when a request was due, so a stall is
not hidden by the generator waiting for it) at F x the baseline's median closed-loop req/s, same
rounds, and its p50/p99/p99.9 printed. Needs target/release/linkhit (cargo build --release), wrk,
redis-server, taskset, and oha (cargo install oha) for --open-loop.
"""
import argparse
import json
import os
import resource
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
HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def click_thread_seconds(pid):
    """CPU seconds of the click thread (`linkhit-clicks`: intake and committer), 0 if there is none."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != "linkhit-clicks":
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / HZ
        except FileNotFoundError:
            pass
    return total


# Command prefixes that set each load generator's priority (empty: normal). `--open-loop-rt`: oha at
# real-time priority (SCHED_FIFO 1), so that it never waits behind Redis on the CPU they share, while
# Redis still has every moment it leaves idle; not for wrk, whose saturating real-time run starves the
# loopback's network processing and Redis itself (docs/PERFORMANCE.md, session 11). `--wrk-nice N`: wrk
# at nice N.
PRIORITY = {"wrk": [], "oha": []}


def start_redis(nice=0):
    """A private redis-server on CPU 0 (the load generator's), keeping nothing on disk: (process, port).
    `nice` > 0 lowers its priority under the generator's (see --redis-nice). LOADTEST_REDIS_ARGS
    (environment) adds arguments, e.g. "--disable-thp no" for an experiment."""
    port = lh.free_port()
    extra = os.environ.get("LOADTEST_REDIS_ARGS", "").split()
    proc = subprocess.Popen(["nice", "-n", str(nice), "taskset", "-c", "0", "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", *extra], stdout=subprocess.DEVNULL)
    lh.wait_port(port)
    return proc, port


def start_linkhit(binary, env_extra, tmp, name):
    port = lh.free_port()
    env = dict(os.environ, LINKHIT_LISTEN=f"127.0.0.1:{port}", LINKHIT_ADMIN_TOKEN=ADMIN,
               LINKHIT_JOURNAL_DIR=os.path.join(tmp, f"journal-{name}"), LINKHIT_WORKER_THREADS="1",
               LINKHIT_CLICK_HOLD="0", RUST_LOG="warn")
    env.pop("LINKHIT_REDIS_URL", None)
    env.update(env_extra)
    log = open(os.path.join(tmp, f"{name}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", "1", binary], env=env, stdout=log, stderr=log)
    lh.wait_port(port)
    return proc, port


def create_links(port, links, codes_file):
    """`links` links on the linkhit at `port` (create_links.py), their codes written to `codes_file`."""
    subprocess.run([sys.executable, os.path.join(ROOT, "loadtest", "create_links.py"), "--base",
                    f"http://127.0.0.1:{port}", "--admin-token", ADMIN, "--links", str(links), "--out", codes_file],
                   check=True, stdout=subprocess.DEVNULL)


def wrk(port, codes_file, seconds, connections, cpu="0", sequential=False):
    env = dict(os.environ, CODES_FILE=codes_file, BOT_PERCENT="100")
    if sequential:
        env["SEQUENTIAL"] = "1"
    out = subprocess.run([*PRIORITY["wrk"], "taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", os.path.join(ROOT, "loadtest", "wrk.lua"), f"http://127.0.0.1:{port}"],
                         env=env, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("JSON "))
    return json.loads(line[5:])


def warm(port, codes_file, connections=64):
    """Every code requested, in file order, round and round, then linkhit's cache checked to hold them
    all. Random picks for two seconds (what this did before session 13) left about a fifth of 100,000
    codes uncached: their first request in a measured round waited on the store, and with Redis that
    made the first rounds' p99 (Redis's "one bad round in three" of sessions 8-12)."""
    with open(codes_file) as f:
        links = sum(1 for line in f if line.strip())
    wrk(port, codes_file, max(2, links // 25_000 + 1), connections, sequential=True)
    import urllib.request
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except Exception:  # nginx has no /metrics
        return
    cached = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("linkhit_cache_links "))
    if cached < links:
        print(f"warning: the warm-up cached {cached:,.0f} of {links:,} links", file=sys.stderr, flush=True)


def hits_dropped(port):
    """Hits the server dropped so far, at any stage (linkhit_hits_dropped_total): 0 means every answered
    redirect was kept for counting (nginx, which counts nothing: 0)."""
    import urllib.error
    import urllib.request
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except urllib.error.HTTPError:
        return 0.0
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("linkhit_hits_dropped_total"))


def generator_seconds():
    """CPU seconds used by this script's finished children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def oha(port, codes_file, seconds, connections, rate, urls_file):
    """Open-loop: `rate` requests/s whatever the latency, latencies corrected for coordinated omission."""
    if not os.path.exists(urls_file):
        with open(codes_file) as f, open(urls_file, "w") as out:
            for line in f:
                if line.strip():
                    out.write(f"http://127.0.0.1:{port}/{line.strip()}\n")
    started, used = time.monotonic(), generator_seconds()
    out = subprocess.run([*PRIORITY["oha"], "taskset", "-c", "0", "oha", "--no-tui", "--output-format", "json", "--redirect", "0",
                          "-z", f"{seconds}s", "-c", str(connections), "-q", str(rate), "--latency-correction",
                          "-H", f"User-Agent: {BOT_UA}", "--urls-from-file", urls_file],
                         capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    pct = j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    # The generator's share of CPU 0 (which it shares with Redis): near 100 %, its own queueing is in p99.
    busy = (generator_seconds() - used) / (time.monotonic() - started)
    return {"requests": sum(codes.values()), "status": codes, "rps": j["summary"]["requestsPerSec"],
            "generator_cpu": busy,
            "p50_us": round(pct["p50"] * 1e6), "p99_us": round(pct["p99"] * 1e6),
            "p999_us": round(pct["p99.9"] * 1e6)}


BOT_UA = "facebookexternalhit/1.1 Facebot Twitterbot/1.0"  # wrk.lua's preview user agent


# The servers a run can compare; `REDIS_URL` is replaced by the run's own Redis.
VARIANTS = {
    "bare": {"LINKHIT_CAPTURE": "false"},
    "embedded": {},
    "redis": {"LINKHIT_REDIS_URL": "REDIS_URL"},
    # The redirect alone over the Redis store (cache refreshes, no capture).
    "redis-bare": {"LINKHIT_CAPTURE": "false", "LINKHIT_REDIS_URL": "REDIS_URL"},
    # The click pipeline on the redirect worker instead of its own thread (LINKHIT_CLICK_THREAD=false).
    "embedded-shared": {"LINKHIT_CLICK_THREAD": "false"},
    "redis-shared": {"LINKHIT_CLICK_THREAD": "false", "LINKHIT_REDIS_URL": "REDIS_URL"},
    # The commit size before session 5 (a commit is the click thread's longest stretch without a yield).
    "embedded-b1000": {"LINKHIT_CLICK_BATCH": "1000"},
    "redis-b1000": {"LINKHIT_CLICK_BATCH": "1000", "LINKHIT_REDIS_URL": "REDIS_URL"},
    # Smaller commits: shorter Redis runs on the load generator's CPU.
    "redis-b100": {"LINKHIT_CLICK_BATCH": "100", "LINKHIT_REDIS_URL": "REDIS_URL"},
    # Every hit listed in recent clicks, as before LINKHIT_RECENT_FOLD (the flood's bot repeats unfolded).
    "embedded-nofold": {"LINKHIT_RECENT_FOLD": "0"},
    "redis-nofold": {"LINKHIT_RECENT_FOLD": "0", "LINKHIT_REDIS_URL": "REDIS_URL"},
    # Not linkhit: nginx, one worker pinned like linkhit, `map` of the same codes + `return 302`.
    "nginx": {},
}


def start_nginx(codes_file, tmp):
    """nginx on CPU 1, one worker, a `map` of every code and `return 302` (the baseline of issue #17)."""
    port = lh.free_port()
    with open(codes_file) as f:
        conf = lh.nginx_conf(tmp, port, [c.strip() for c in f if c.strip()])
    proc = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", tmp, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lh.wait_port(port)
    return proc, port


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "linkhit"))
    p.add_argument("--links", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--servers", default="bare,embedded,redis",
                   help="comma-separated, from: " + ", ".join(VARIANTS) + " (the first is the baseline); "
                        "NAME@BINARY runs that variant with another build")
    p.add_argument("--open-loop", type=float, default=0.0, metavar="F",
                   help="also run open-loop (oha) at F x the baseline's closed-loop req/s (e.g. 0.5)")
    p.add_argument("--rate", type=int, default=0, help="open-loop at this req/s instead (implies --open-loop)")
    p.add_argument("--redis-nice", type=int, default=0, metavar="N",
                   help="run Redis at nice N: the load generator, which shares its CPU, then goes first, so the "
                        "latencies it reads are not its own queueing behind Redis (Redis on a host of its own)")
    p.add_argument("--open-loop-rt", action="store_true",
                   help="run oha at real-time priority (chrt -f 1): the open-loop latencies are then not its own "
                        "queueing behind Redis on CPU 0")
    p.add_argument("--wrk-nice", type=int, default=0, metavar="N",
                   help="run wrk at nice N (e.g. -10: ahead of Redis on CPU 0)")
    args = p.parse_args()
    if args.wrk_nice:
        PRIORITY["wrk"] = ["nice", "-n", str(args.wrk_nice)]
    if args.open_loop_rt:
        PRIORITY["oha"] = ["chrt", "-f", "1"]
    tmp = tempfile.mkdtemp(prefix="linkhit-tail-")
    procs = []
    try:
        redis, rport = start_redis(args.redis_nice)
        procs.append(redis)
        redis_url = f"redis://127.0.0.1:{rport}/"
        # `name@path`: that variant with another binary (two builds compared round by round).
        binaries = {spec: spec.partition("@")[2] or args.binary for spec in args.servers.split(",")}
        servers = {spec: {k: v.replace("REDIS_URL", redis_url) for k, v in VARIANTS[spec.partition("@")[0]].items()}
                   for spec in binaries}
        base = next(iter(servers))
        ports = {}
        # linkhit servers first (each creates its links); nginx then maps the first one's codes.
        for name in sorted(servers, key=lambda n: n.startswith("nginx")):
            codes = os.path.join(tmp, f"codes-{list(servers).index(name)}.txt")
            if name.startswith("nginx"):
                first = next(n for n in servers if not n.startswith("nginx"))
                shutil.copy(os.path.join(tmp, f"codes-{list(servers).index(first)}.txt"), codes)
                proc, port = start_nginx(codes, tmp)
            else:
                proc, port = start_linkhit(binaries[name], servers[name], tmp, str(len(ports)))
                create_links(port, args.links, codes)
            procs.append(proc)
            ports[name] = (proc, port)
            # Warm the cache: every code once.
            warm(port, codes, args.connections)
        results = {name: [] for name in servers}
        for r in range(args.rounds):
            for name in servers:
                proc, port = ports[name]
                before, redis_before = cpu_seconds(proc.pid), cpu_seconds(redis.pid)
                clicks_before = click_thread_seconds(proc.pid)
                out = wrk(port, os.path.join(tmp, f"codes-{list(servers).index(name)}.txt"), args.seconds, args.connections)
                if "LINKHIT_REDIS_URL" in servers[name]:  # counting lags the redirects by one tick: let it finish
                    time.sleep(0.3)
                cpu = cpu_seconds(proc.pid) - before
                out["cpu_us_per_request"] = cpu * 1e6 / max(out["requests"], 1)
                out["redis_us_per_request"] = (cpu_seconds(redis.pid) - redis_before) * 1e6 / max(out["requests"], 1)
                out["click_thread_us_per_request"] = (
                    (click_thread_seconds(proc.pid) - clicks_before) * 1e6 / max(out["requests"], 1))
                results[name].append(out)
                print(f"round {r + 1} {name:15} {out['requests'] / args.seconds:>10,.0f} req/s  "
                      f"p50 {out['p50_us']:>6} µs  p99 {out['p99_us']:>6} µs  "
                      f"{out['cpu_us_per_request']:.2f} µs CPU/req (click thread "
                      f"{out['click_thread_us_per_request']:.2f})", flush=True)
        time.sleep(1)
        dropped = {name: hits_dropped(port) for name, (_, port) in ports.items()}
        print("\nmedians:")
        bare_p99 = statistics.median(r["p99_us"] for r in results[base])
        bare_cpu = statistics.median(r["cpu_us_per_request"] for r in results[base])
        summary = {}
        for name, rounds in results.items():
            rps = statistics.median(r["requests"] / args.seconds for r in rounds)
            p99 = statistics.median(r["p99_us"] for r in rounds)
            cpu = statistics.median(r["cpu_us_per_request"] for r in rounds)
            rcpu = statistics.median(r["redis_us_per_request"] for r in rounds)
            ccpu = statistics.median(r["click_thread_us_per_request"] for r in rounds)
            summary[name] = {"req_per_s": round(rps), "p99_us": p99, "cpu_us_per_request": round(cpu, 2),
                             "click_thread_us_per_request": round(ccpu, 2),
                             "redis_us_per_request": round(rcpu, 2), "hits_dropped": dropped[name]}
            print(f"  {name:15} {rps:>10,.0f} req/s  p99 {p99:>6} µs (x{p99 / bare_p99:.2f} bare)  "
                  f"{cpu:.2f} µs CPU/req (+{cpu - bare_cpu:.2f} over bare; click thread {ccpu:.2f})  "
                  f"Redis {rcpu:.2f} µs/req  hits dropped {dropped[name]:,.0f}")
        if args.open_loop > 0 or args.rate > 0:
            rate = args.rate or round(args.open_loop * summary[base]["req_per_s"])
            print(f"\nopen loop at {rate:,} req/s" + ("" if args.rate else f" ({args.open_loop} x {base}'s closed-loop median)"))
            open_results = {name: [] for name in servers}
            for r in range(args.rounds):
                for name in servers:
                    proc, port = ports[name]
                    before, redis_before = cpu_seconds(proc.pid), cpu_seconds(redis.pid)
                    out = oha(port, os.path.join(tmp, f"codes-{list(servers).index(name)}.txt"), args.seconds, args.connections, rate,
                              os.path.join(tmp, f"urls-{list(servers).index(name)}.txt"))
                    out["cpu_us_per_request"] = (cpu_seconds(proc.pid) - before) * 1e6 / max(out["requests"], 1)
                    out["cpu0"] = out["generator_cpu"] + (cpu_seconds(redis.pid) - redis_before) / args.seconds
                    open_results[name].append(out)
                    print(f"round {r + 1} {name:15} {out['rps']:>10,.0f} req/s  p50 {out['p50_us']:>6} µs  "
                          f"p99 {out['p99_us']:>6} µs  p99.9 {out['p999_us']:>6} µs  CPU 0 busy {out['cpu0']:.0%} "
                          f"(generator {out['generator_cpu']:.0%})  {out['status']}", flush=True)
            open_base = statistics.median(r["p99_us"] for r in open_results[base])
            print("medians:")
            for name, rounds in open_results.items():
                p99 = statistics.median(r["p99_us"] for r in rounds)
                p999 = statistics.median(r["p999_us"] for r in rounds)
                cpu = statistics.median(r["cpu_us_per_request"] for r in rounds)
                cpu0 = statistics.median(r["cpu0"] for r in rounds)
                summary[name]["open_loop"] = {"rate": rate, "p50_us": statistics.median(r["p50_us"] for r in rounds),
                                              "p99_us": p99, "p999_us": p999, "cpu_us_per_request": round(cpu, 2),
                                              "cpu0_busy": round(cpu0, 3)}
                summary[name]["open_loop"]["hits_dropped"] = hits_dropped(ports[name][1]) - dropped[name]
                print(f"  {name:15} p99 {p99:>6} µs (x{p99 / open_base:.2f} {base})  p99.9 {p999:>6} µs  "
                      f"{cpu:.2f} µs CPU/req  CPU 0 (generator + Redis) busy {cpu0:.0%}  "
                      f"hits dropped {summary[name]['open_loop']['hits_dropped']:,.0f}")
        print("JSON " + json.dumps(summary))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()

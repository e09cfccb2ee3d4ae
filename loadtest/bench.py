#!/usr/bin/env python3
"""linkhit load test: linkhit (Redis, click capture, webhooks configured) against an nginx `map` +
`return 302` baseline over the same codes, on this machine, with wrk.

    python3 loadtest/bench.py                         # 100,000 links, 10 s per run, 64 connections
    python3 loadtest/bench.py --links 1000000 --runs 5 --duration 20
    python3 loadtest/bench.py --scenarios nginx,cache-hit --connections 16,64,512

Needs: cargo, redis-server, nginx, wrk (Debian packages), python3. The chart needs matplotlib (the script
creates a venv under loadtest/out/venv for it). Every server it starts listens on 127.0.0.1 and is
stopped at the end. Results: a table on stdout, loadtest/out/results.json and loadtest/out/results.png.

Scenarios:
  nginx           the baseline: nginx, one worker, a map of every code, return 302
  cache-hit       linkhit, warm cache, 100 % bot user agents (counted, no webhooks)
  bot-heavy       linkhit, warm cache, 90 % bots, 10 % humans (each human click fires a webhook)
  human-webhooks  linkhit, warm cache, 100 % humans: every request is a webhook; waits for the drain
                  and checks that every human click was delivered
  bots-N          linkhit, warm cache, N % bots (e.g. bots-50): the bot/human mix sweep
  cache-miss      a second linkhit with a 1-entry cache: every request reads Redis
  404-flood       random codes that do not exist; reports how many reached Redis
  redis-hang      cache hits while Redis is SIGSTOPped for the whole run; checks every hit is counted
                  after SIGCONT
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lh  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = "loadtest-admin-token-0123456789"
HZ = os.sysconf("SC_CLK_TCK")
PROCS = []


free_port = lh.free_port


def wait_port(port, timeout=30):
    lh.wait_port(port, timeout)


def start(cmd, env=None, **kw):
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=ROOT, **kw)
    PROCS.append(p)
    return p


def api(base, method, path, key, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"null")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return total


def rss_mib(pids):
    total = 0
    for pid in pids:
        try:
            total += next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
        except (FileNotFoundError, StopIteration):
            pass
    return total / 1024


def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except FileNotFoundError:
        return []


def wrk(port, codes_file, duration, connections, bot_percent=0, random_codes=False, threads=1, sequential=False):
    env = {**os.environ, "CODES_FILE": codes_file, "BOT_PERCENT": str(bot_percent), "RANDOM_CODES": "1" if random_codes else "0",
           "SEQUENTIAL": "1" if sequential else "0"}
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", "loadtest/wrk.lua",
                          f"http://127.0.0.1:{port}"], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("JSON "))
    return json.loads(line[5:])


def measure(name, port, pids, codes_file, args, connections, store_pids=(), **kw):
    c0, s0 = cpu_ticks(pids), cpu_ticks(store_pids)
    r = wrk(port, codes_file, args.duration, connections, **kw)
    c1, s1 = cpu_ticks(pids), cpu_ticks(store_pids)
    secs = r["duration_us"] / 1e6
    return {
        "redis_cpu_us_per_req": (s1 - s0) / HZ / max(1, r["requests"]) * 1e6,
        "scenario": name, "connections": connections, "requests": r["requests"],
        "req_per_s": r["requests"] / secs, "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
        "p999_ms": r["p999_us"] / 1000, "errors": r["errors"], "cpu_us_per_req": (c1 - c0) / HZ / max(1, r["requests"]) * 1e6,
        "rss_mib": rss_mib(pids),
    }


def metric(base, name):
    """One unlabelled gauge or counter from linkhit's /metrics."""
    for line in urllib.request.urlopen(base + "/metrics").read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def stats(base, key):
    return api(base, "GET", "/api/v1/broadcasts/loadtest/stats", key)


def wait_counted(base, key, expected, timeout=120):
    started = time.time()
    while time.time() - started < timeout:
        s = stats(base, key)
        if s["hits"] >= expected:
            return s, time.time() - started
        time.sleep(0.05)
    return stats(base, key), None


def receiver_stats(wport):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{wport}/stats"))


def redis_cmd(rport, *args):
    return subprocess.run(["redis-cli", "-p", str(rport), *args], capture_output=True, text=True).stdout


def redis_gets(rport):
    for line in redis_cmd(rport, "info", "commandstats").splitlines():
        if line.startswith("cmdstat_get:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def nginx_conf(dirpath, port, codes, target):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "map.conf"), "w") as f:
        for c in codes:
            f.write(f"/{c} {target};\n")
    conf = f"""
worker_processes 1;
daemon off;
pid {dirpath}/nginx.pid;
error_log {dirpath}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    map_hash_max_size {max(2048, 2 * len(codes))};
    map_hash_bucket_size 128;
    keepalive_requests 1000000;
    client_body_temp_path {dirpath}/tmp;
    proxy_temp_path {dirpath}/tmp;
    fastcgi_temp_path {dirpath}/tmp;
    uwsgi_temp_path {dirpath}/tmp;
    scgi_temp_path {dirpath}/tmp;
    map $uri $target {{
        default "";
        include {dirpath}/map.conf;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($target = "") {{ return 404; }}
            add_header Cache-Control "private, max-age=0" always;
            return 302 $target;
        }}
    }}
}}
"""
    path = os.path.join(dirpath, "nginx.conf")
    open(path, "w").write(conf)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--links", type=int, default=100_000)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", default="64", help="comma-separated; each scenario runs at each")
    p.add_argument("--runs", type=int, default=1, help="alternating nginx/linkhit runs; medians are reported")
    p.add_argument("--scenarios", default="nginx,cache-hit,bot-heavy,human-webhooks,cache-miss,404-flood,redis-hang")
    p.add_argument("--out", default=os.path.join(ROOT, "loadtest", "out"))
    p.add_argument("--no-build", action="store_true")
    a = p.parse_args()
    scenarios = a.scenarios.split(",")
    conns = [int(c) for c in a.connections.split(",")]
    os.makedirs(a.out, exist_ok=True)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "linkhit", "--example", "receiver"], cwd=ROOT, check=True)

    rport, lport, mport, nport, wport = (free_port() for _ in range(5))
    redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    wait_port(rport)
    receiver = start(["target/release/examples/receiver", f"127.0.0.1:{wport}"])
    base_env = {"LINKHIT_REDIS_URL": f"redis://127.0.0.1:{rport}/", "LINKHIT_ADMIN_TOKEN": ADMIN,
                "LINKHIT_WEBHOOK_ALLOW_PRIVATE": "true", "RUST_LOG": "warn",
                "LINKHIT_JOURNAL_DIR": os.path.join(a.out, "journal")}
    linkhit = start(["target/release/linkhit"], env={**base_env, "LINKHIT_LISTEN": f"127.0.0.1:{lport}"})
    wait_port(lport)
    wait_port(wport)
    base = f"http://127.0.0.1:{lport}"

    ws = api(base, "POST", "/api/v1/workspaces", ADMIN, {"name": "loadtest"})
    key = ws["api_key"]
    target = "https://shop.example.com/fall-campaign?utm_source=sms"
    # Bulk create: only the HTTP exchanges are timed (the client's JSON work is not linkhit's).
    codes, create_secs, n = [], 0.0, 0
    while n < a.links:
        size = min(100_000, a.links - n)
        rec = [{"recipient": f"+1{2000000000 + n + i}", "message_id": f"m{n + i}"} for i in range(size)]
        data = json.dumps({"target_url": target, "recipients": rec}).encode()
        req = urllib.request.Request(base + "/api/v1/broadcasts/loadtest/links", method="POST", data=data,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=600) as r:
            raw = r.read()
        create_secs += time.monotonic() - t0
        codes += [l["code"] for l in json.loads(raw)["links"]]
        n += size
    codes_file = os.path.join(a.out, "codes.txt")
    open(codes_file, "w").write("\n".join(codes) + "\n")
    api(base, "PUT", "/api/v1/webhooks", key, {"click_url": f"http://127.0.0.1:{wport}/hook"})
    print(f"created {len(codes)} links in {create_secs:.2f} s ({len(codes) / create_secs:,.0f} links/s)", flush=True)

    nginx = None
    if "nginx" in scenarios:
        conf = nginx_conf(os.path.join(a.out, "nginx"), nport, codes, target)
        os.makedirs(os.path.join(a.out, "nginx", "tmp"), exist_ok=True)
        nginx = start(["nginx", "-c", conf, "-p", os.path.join(a.out, "nginx")])
        wait_port(nport)
    lpids = [linkhit.pid]
    rss_created = rss_mib(lpids)
    # Warm linkhit's cache: walk every code in order (random picks would leave a third of them cold),
    # at a pace of well under 20,000 cache misses per second, then check the cache holds them all.
    warm = wrk(lport, codes_file, max(3, len(codes) // 20_000 + 2), 16, bot_percent=100, sequential=True)
    cached = metric(base, "linkhit_cache_links")
    rss_cached = rss_mib(lpids)
    print(f"warm-up: {warm['requests']:,} requests, {cached:,.0f} links cached, linkhit RSS {rss_cached:.0f} MiB", flush=True)
    if cached < len(codes):
        sys.exit("the warm-up did not cache every code; raise its duration")
    counted = wait_counted(base, key, 1)[0]["hits"]

    results = []
    expected_hits = counted
    for c in conns:
        for run in range(a.runs):
            for sc in scenarios:
                if sc == "nginx":
                    time.sleep(0.5)
                    results.append(measure("nginx", nport, [nginx.pid] + children(nginx.pid), codes_file, a, c))
                elif sc in ("cache-hit", "bot-heavy", "human-webhooks") or sc.startswith("bots-"):
                    bots = int(sc[5:]) if sc.startswith("bots-") else {"cache-hit": 100, "bot-heavy": 90, "human-webhooks": 0}[sc]
                    before = receiver_stats(wport)["distinct_ids"]
                    human_before = stats(base, key)["human_hits"]
                    r = measure(sc, lport, lpids, codes_file, a, c, store_pids=[redis.pid], bot_percent=bots)
                    # Wait for the counters to hold every request served, then for the webhooks.
                    s, lag = wait_counted(base, key, expected_hits + r["requests"])
                    expected_hits = s["hits"]
                    r["counted_after_s"] = lag
                    humans = s["human_hits"] - human_before
                    t1 = time.time()
                    while time.time() - t1 < 300 and receiver_stats(wport)["distinct_ids"] - before < humans:
                        time.sleep(0.1)
                    delivered = receiver_stats(wport)["distinct_ids"] - before
                    r.update({"human_clicks": humans, "webhooks_delivered": delivered,
                              "webhook_drain_s": round(time.time() - t1, 2)})
                    results.append(r)
                elif sc == "cache-miss":
                    mport2 = free_port()
                    cold = start(["target/release/linkhit"], env={**base_env, "LINKHIT_LISTEN": f"127.0.0.1:{mport2}",
                                                                  "LINKHIT_CACHE_CAPACITY": "1", "LINKHIT_CAPTURE": "false"})
                    wait_port(mport2)
                    results.append(measure("cache-miss", mport2, [cold.pid], codes_file, a, c, store_pids=[redis.pid], bot_percent=100))
                    cold.send_signal(signal.SIGTERM)
                    cold.wait()
                elif sc == "404-flood":
                    g0 = redis_gets(rport)
                    r = measure("404-flood", lport, lpids, codes_file, a, c, store_pids=[redis.pid], random_codes=True)
                    r["redis_gets"] = redis_gets(rport) - g0
                    r["redis_share"] = r["redis_gets"] / max(1, r["requests"])
                    results.append(r)
                elif sc == "redis-hang":
                    redis.send_signal(signal.SIGSTOP)
                    try:
                        r = measure("redis-hang", lport, lpids, codes_file, a, c, bot_percent=100)
                    finally:
                        redis.send_signal(signal.SIGCONT)
                    s, lag = wait_counted(base, key, expected_hits + r["requests"], timeout=300)
                    expected_hits = s["hits"]
                    r["counted_after_s"] = lag
                    results.append(r)
                print(json.dumps(results[-1]), flush=True)

    # Medians per (scenario, connections).
    table = {}
    for r in results:
        table.setdefault((r["scenario"], r["connections"]), []).append(r)
    rows = []
    nginx_rps = {c: statistics.median(x["req_per_s"] for x in table.get(("nginx", c), [{"req_per_s": 0}])) for c in conns}
    for (sc, c), rs in table.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("req_per_s", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_req", "redis_cpu_us_per_req", "rss_mib")}
        row = {"scenario": sc, "connections": c, "runs": len(rs), **{k: round(v, 3) for k, v in med.items()},
               "ratio_to_nginx": round(med["req_per_s"] / nginx_rps[c], 3) if nginx_rps.get(c) else None}
        for extra in ("human_clicks", "webhooks_delivered", "webhook_drain_s", "counted_after_s", "redis_gets", "redis_share"):
            if extra in rs[-1]:
                row[extra] = rs[-1][extra]
        rows.append(row)
    summary = {"links": len(codes), "create_seconds": round(create_secs, 3), "links_per_second": round(len(codes) / create_secs),
               "rss_mib_after_create": round(rss_created), "rss_mib_all_cached": round(rss_cached),
               "duration_s": a.duration, "runs": a.runs, "machine": f"{os.cpu_count()} cores", "rows": rows}
    json.dump(summary, open(os.path.join(a.out, "results.json"), "w"), indent=2)

    print(f"\n{'scenario':16} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'CPU µs/req':>10} {'Redis µs':>8} {'RSS MiB':>8} {'×nginx':>7}  notes")
    for r in rows:
        notes = []
        if "webhooks_delivered" in r:
            notes.append(f"webhooks {r['webhooks_delivered']}/{r['human_clicks']} drained {r['webhook_drain_s']} s")
        if "redis_share" in r:
            notes.append(f"Redis saw {r['redis_share']:.2%}")
        if r.get("counted_after_s") is not None:
            notes.append(f"counted +{r['counted_after_s']:.2f} s")
        ratio = f"{r['ratio_to_nginx']:.2f}" if r["ratio_to_nginx"] else "-"
        print(f"{r['scenario']:16} {r['connections']:>5} {r['req_per_s']:>9,.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['p999_ms']:>7.2f} "
              f"{r['cpu_us_per_req']:>10.1f} {r['redis_cpu_us_per_req']:>8.1f} {r['rss_mib']:>8.0f} {ratio:>7}  {'; '.join(notes)}")
    chart(rows, a.out)


def chart(rows, out):
    venv = os.path.join(out, "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    code = r'''
import json, sys
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = json.load(open(sys.argv[1]))["rows"]
labels = [f"{r['scenario']}\n{r['connections']}c" for r in rows]
fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5))
a.bar(labels, [r["req_per_s"] for r in rows], color="#0b5cad"); a.set_title("throughput (req/s)"); a.tick_params(axis="x", labelsize=7)
x = range(len(rows)); w = 0.27
for i, (k, c) in enumerate([("p50_ms", "#7fb2e5"), ("p99_ms", "#0b5cad"), ("p999_ms", "#b35900")]):
    b.bar([j + (i - 1) * w for j in x], [r[k] for r in rows], w, label=k.replace("_ms", ""), color=c)
b.set_xticks(list(x)); b.set_xticklabels(labels, fontsize=7); b.set_yscale("log"); b.set_title("latency (ms, log)"); b.legend()
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110)
'''
    subprocess.run([py, "-c", code, os.path.join(out, "results.json"), os.path.join(out, "results.png")], check=True)
    print(f"\nwrote {os.path.join(out, 'results.json')} and {os.path.join(out, 'results.png')}")


if __name__ == "__main__":
    try:
        main()
    finally:
        for proc in PROCS:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                    proc.wait(timeout=10)
                except Exception:
                    proc.kill()

#!/usr/bin/env python3
"""Scale-out of counting and webhook delivery: 1 vs 3 Redis Cluster masters x 1 vs 2 redirectors (issue #17).

    python3 loadtest/scaleout.py                                   # 1x1,3x1,1x2,3x2; 10 s per phase; 20,000 links
    python3 loadtest/scaleout.py --seconds 3 --links 5000 --configs 1x1,3x2 --connections 64

A configuration MxR is a fresh Redis Cluster of M masters (no replicas; redis-cli --cluster create, or
CLUSTER ADDSLOTSRANGE below 3 masters) and R linkhit redirectors on it (LINKHIT_ROLE all, default worker
threads, LINKHIT_CLICK_HOLD=0). The links are created once, through the first redirector, and every
redirector serves them all (its cache warmed by one sequential pass). One wrk per redirector, run
concurrently, the connections split between them. Two phases of --seconds each:
  count    100 % bot hits (a preview user agent): counted/s = hits / (first hit -> all counted). Asserts
           redirects answered (sum of linkhit_redirects_total{status="302"}) == hits counted (broadcast
           stats); wrk's completed requests are printed too (up to --connections fewer: in flight at its end)
  webhook  100 % human hits (an iPhone user agent): every hit is a click event to a local receiver (this
           script in --receiver mode); deliveries/s = distinct webhook-ids / (first hit -> last delivery).
           Asserts every human hit counted was delivered
Per phase, the CPU seconds (utime + stime) of every process over the phase, per hit, by component
(linkhit, redis = all masters, wrk, receiver), the busiest master, Redis commands per hit and the
machine's busy cores (/proc/stat). From the measured costs the arithmetic for 100,000 clicks/s on real
hosts is printed last. On a 2-core machine more processes add no cores: expect no gain, read where
the CPU goes. Classification shortcuts that would turn wrk's humans into bots are off (fast-after-send,
fast-after-delivery, sweeps), as are the webhook link budget and backlog cap. Ends with a "JSON {...}"
line. Needs target/release/linkhit, redis-server 7+, redis-cli, wrk.
"""
import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lh  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = "loadtest-admin-token-0123456789"
HZ = os.sysconf("SC_CLK_TCK")
PROCS = []
RECEIVER = None  # the webhook receiver process (this script with --receiver)


def receiver(port):
    """A webhook receiver: 200 to every POST, counts events and distinct webhook-ids; GET -> stats JSON."""
    st = {"events": 0, "last": 0.0}
    ids = set()

    class Hook(asyncio.Protocol):
        def connection_made(self, transport):
            self.t, self.buf = transport, b""

        def data_received(self, data):
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                lines = self.buf[:end].decode("latin-1").split("\r\n")
                fields = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
                size = end + 4 + int(fields.get("content-length", 0))
                if len(self.buf) < size:
                    return
                self.buf = self.buf[size:]
                body = b"ok"
                if lines[0].startswith("GET"):
                    body = json.dumps({**st, "distinct": len(ids)}).encode()
                else:
                    st["events"] += 1
                    st["last"] = time.monotonic()
                    ids.add(fields.get("webhook-id"))
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(loop.create_server(Hook, "127.0.0.1", port, backlog=1024))
    loop.run_forever()


def start(cmd, env=None, log=None):
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log or subprocess.DEVNULL,
                         stderr=log or subprocess.DEVNULL, cwd=ROOT)
    PROCS.append(p)
    return p


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p in PROCS:
            PROCS.remove(p)


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def machine_busy():
    """Seconds of CPU the whole machine spent busy (every core), from /proc/stat."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / HZ  # user, nice, system, irq, softirq: not idle, iowait, steal


def cluster_port():
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = random.randrange(20000, 40000)
        try:
            for p in (port, port + 10000):
                socket.create_server(("127.0.0.1", p)).close()
            return port
        except OSError:
            pass


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True).stdout


def start_cluster(n, tmp):
    """n masters (0: one standalone redis-server, the no-cluster baseline); returns (processes, ports, URL)."""
    if n == 0:
        port = lh.free_port()
        node = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        lh.wait_port(port)
        return [node], [port], f"redis://127.0.0.1:{port}/"
    ports, nodes = [cluster_port() for _ in range(n)], []
    for port in ports:
        d = os.path.join(tmp, f"redis-{port}")
        os.makedirs(d)
        nodes.append(start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                            "--cluster-config-file", os.path.join(d, "nodes.conf"), "--dir", d, "--save", "",
                            "--appendonly", "no"]))
    for port in ports:
        lh.wait_port(port)
    if n >= 3:
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True)
    else:  # redis-cli --cluster create wants at least 3 masters: assign the slots by hand
        for i, port in enumerate(ports):
            redis_cli(port, "cluster", "addslotsrange", str(16384 * i // n), str(16384 * (i + 1) // n - 1))
            if i:
                redis_cli(port, "cluster", "meet", "127.0.0.1", str(ports[0]))
    deadline = time.time() + 30
    while not all("cluster_state:ok" in redis_cli(p, "cluster", "info") for p in ports):
        if time.time() > deadline:
            raise SystemExit("the cluster did not reach cluster_state:ok")
        time.sleep(0.1)
    return nodes, ports, "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def metric(port, name):
    for line in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def redis_calls(port):
    """{command: [calls, µs]} of one Redis node, from INFO commandstats."""
    out = {}
    for line in redis_cli(port, "info", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[8:].split(":", 1)
            f = dict(kv.split("=") for kv in fields.split(","))
            out[name] = [int(f["calls"]), int(f["usec"])]
    return out


# wrk.lua, stopped after MAX_REQUESTS answers (0 = never): the webhook phase sends a fixed number of clicks.
LIMITED = """dofile(os.getenv("WRK_LUA"))
local limit, answered = tonumber(os.getenv("MAX_REQUESTS")), 0
if limit > 0 then
  function response()
    answered = answered + 1
    if answered >= limit then wrk.thread:stop() end
  end
end
"""


def wrk(port, codes, seconds, connections, bot_percent, sequential=False, max_requests=0):
    env = {"CODES_FILE": codes, "BOT_PERCENT": str(bot_percent), "SEQUENTIAL": "1" if sequential else "0",
           "WRK_LUA": os.path.join(ROOT, "loadtest", "wrk.lua"), "MAX_REQUESTS": str(max_requests)}
    script = os.path.join(os.path.dirname(codes), "limited.lua")
    if not os.path.exists(script):
        open(script, "w").write(LIMITED)
    p = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}"],
                         env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    PROCS.append(p)
    return p


def wrk_result(p):
    out = p.communicate()[0]
    PROCS.remove(p)
    if p.returncode != 0:
        raise SystemExit(f"wrk failed:\n{out}")
    return json.loads(next(l for l in out.splitlines() if l.startswith("JSON "))[5:])


def run_config(masters, nred, a, tmp, binary, rport):
    """Both phases on one fresh MxR setup; returns {phase: row}."""
    name = f"{masters}x{nred}"
    nodes, ports, url = start_cluster(masters, os.path.join(tmp, name))
    procs = list(nodes)
    try:
        env = {"LINKHIT_REDIS_URL": url,
               "LINKHIT_ADMIN_TOKEN": ADMIN, "LINKHIT_CLICK_HOLD": "0", "RUST_LOG": "warn",
               "LINKHIT_WEBHOOK_ALLOW_PRIVATE": "true", "LINKHIT_CLICK_FAST_AFTER_SEND": "0",
               "LINKHIT_CLICK_FAST_AFTER_DELIVERY": "0", "LINKHIT_SWEEP_RECIPIENTS": "0",
               "LINKHIT_WEBHOOK_LINK_BUDGET": "0", "LINKHIT_WEBHOOK_MAX_BACKLOG": "100000000"}
        lports, lhs = [], []
        for i in range(nred):  # one after the other: the first creates the shared code-check key
            port = lh.free_port()
            log = open(os.path.join(tmp, f"{name}-linkhit-{i}.log"), "w")
            lhs.append(start([binary], {**env, "LINKHIT_LISTEN": f"127.0.0.1:{port}",
                                        "LINKHIT_JOURNAL_DIR": os.path.join(tmp, name, f"journal-{i}")}, log))
            procs.append(lhs[-1])
            lh.wait_port(port)
            lports.append(port)
        codes = os.path.join(tmp, f"{name}-codes.txt")
        created = json.loads(subprocess.run(
            [sys.executable, os.path.join(ROOT, "loadtest", "create_links.py"), "--base", f"http://127.0.0.1:{lports[0]}",
             "--admin-token", ADMIN, "--links", str(a.links), "--out", codes], check=True, capture_output=True, text=True).stdout)
        key = created["api_key"]
        status, _ = lh.api(lports[0], "PUT", "/api/v1/webhooks", {"click_url": f"http://127.0.0.1:{rport}/hook"}, key)
        assert status == 200, f"webhook configuration answered {status}"
        # Warm every redirector's cache: each code once, in order.
        for p in [wrk(port, codes, max(2, a.links // 10_000 + 1), 16, 100, sequential=True) for port in lports]:
            wrk_result(p)
        for port in lports:
            cached = metric(port, "linkhit_cache_links")
            assert cached >= a.links, f"the warm-up cached {cached:.0f} of {a.links} links on :{port}"

        def stats():
            return lh.api(lports[0], "GET", "/api/v1/broadcasts/loadtest/stats", key=key)[1]

        def answered():
            return sum(metric(p, 'linkhit_redirects_total{status="302"}') for p in lports)

        def dropped():
            return {stage: sum(metric(p, f'linkhit_hits_dropped_total{{stage="{stage}"}}') for p in lports)
                    for stage in ("capture", "journal", "in_doubt_expired")}

        def receiver_stats():
            return json.load(urllib.request.urlopen(f"http://127.0.0.1:{rport}/stats", timeout=10))

        groups = {"linkhit": [p.pid for p in lhs], "redis": [p.pid for p in nodes], "receiver": [RECEIVER.pid]}
        rows = {}
        for phase in ("count", "webhook"):
            deadline = time.monotonic() + 120
            while (s0 := stats())["hits"] != answered():  # the warm-up (or the last phase) fully counted
                assert time.monotonic() < deadline, f"{name}: the warm-up was not counted: {s0['hits']} of {answered()}"
                time.sleep(0.05)
            a0, r0 = answered(), receiver_stats()
            calls0 = [redis_calls(p) for p in ports]
            cpu0 = {g: [cpu(pid) for pid in pids] for g, pids in groups.items()}
            busy0, t0 = machine_busy(), time.monotonic()
            split = [a.connections // nred + (i < a.connections % nred) for i in range(nred)]
            children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if phase == "count":
                runs = [wrk(port, codes, a.seconds, c, 100) for port, c in zip(lports, split)]
            else:  # a fixed number of clicks: they arrive far faster than they are delivered
                runs = [wrk(port, codes, 600, c, 0, max_requests=a.webhook_hits // nred) for port, c in zip(lports, split)]
                # wrk's main thread sleeps out -d even after its threads stopped: interrupt it (it then
                # reports as usual) once every redirector answered its share.
                while answered() - a0 < nred * (a.webhook_hits // nred) and all(p.poll() is None for p in runs):
                    assert time.monotonic() - t0 < 300, f"{name}: the webhook phase's clicks were not answered"
                    time.sleep(0.02)
                for p in runs:
                    p.send_signal(signal.SIGINT)
            results = [wrk_result(p) for p in runs]
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the wrks' CPU: the only children reaped
            wrk_secs = max(r["duration_us"] for r in results) / 1e6
            while True:  # every answered redirect counted?
                s, n = stats(), answered() - a0
                if s["hits"] - s0["hits"] == n:
                    break
                assert time.monotonic() - t0 < a.seconds + 120, (
                    f"{name} {phase}: {s['hits'] - s0['hits']} of {n} counted; dropped: {dropped()}")
                time.sleep(0.05)
            t_end, hits, humans = time.monotonic(), int(n), s["human_hits"] - s0["human_hits"]
            row = {"config": name, "phase": phase, "masters": masters, "redirectors": nred, "hits": hits,
                   "wrk_requests": sum(r["requests"] for r in results), "wrk_errors": sum(r["errors"] + r["status_errors"] for r in results),
                   "answered_per_s": round(hits / wrk_secs), "counted_per_s": round(hits / (t_end - t0)),
                   "counted_after_wrk_s": round(t_end - t0 - wrk_secs, 2), "p99_ms": max(r["p99_us"] for r in results) / 1000}
            if phase == "webhook":
                assert humans == hits, f"{name}: only {humans} of {hits} hits were human"
                while (r := receiver_stats())["distinct"] - r0["distinct"] < humans:
                    assert time.monotonic() - t0 < a.seconds + 300, f"{name}: {r['distinct'] - r0['distinct']} of {humans} delivered"
                    time.sleep(0.1)
                delivered = r["distinct"] - r0["distinct"]
                assert delivered == humans, f"{name}: {delivered} webhook events for {humans} human hits"
                row.update(delivered=delivered, duplicates=r["events"] - r0["events"] - delivered,
                           deliveries_per_s=round(delivered / (r["last"] - t0)), drained_after_wrk_s=round(r["last"] - t0 - wrk_secs, 2))
            wall, per = time.monotonic() - t0, lambda secs: round(secs * 1e6 / hits, 2)
            used = {g: [cpu(pid) - c for pid, c in zip(groups[g], cpu0[g])] for g in groups}
            used["wrk"] = [children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime]
            row["us_per_hit"] = {g: per(sum(v)) for g, v in used.items()}
            row["us_per_hit_busiest_master"] = per(max(used["redis"]))
            cmds = {}
            for port, before in zip(ports, calls0):
                for c, (n, us) in redis_calls(port).items():
                    n0, us0 = before.get(c, (0, 0))
                    cmds[c] = [cmds.get(c, [0, 0])[0] + n - n0, cmds.get(c, [0, 0])[1] + us - us0]
            row["redis_cmds_per_hit"] = round(sum(n for n, _ in cmds.values()) / hits, 3)
            # Where Redis's time goes: the costliest commands (calls and µs inside Redis per hit).
            row["redis_commands"] = {c: [round(n / hits, 3), round(us / hits, 2)]
                                     for c, (n, us) in sorted(cmds.items(), key=lambda kv: -kv[1][1])[:6]}
            row["busy_cores"] = round((machine_busy() - busy0) / wall, 2)
            row["other_cores"] = round(row["busy_cores"] - sum(map(sum, used.values())) / wall, 2)
            rows[phase] = row
            assert hits == row["wrk_requests"] or 0 <= hits - row["wrk_requests"] <= a.connections, row
            print(f"{name} {phase}: answered {hits} == counted {s['hits'] - s0['hits']} (wrk completed "
                  f"{row['wrk_requests']})" + (f", delivered {row['delivered']} of {humans}" if phase == "webhook" else ""), flush=True)
        return rows
    finally:
        stop(procs)


def arithmetic(rows):
    """What 100,000 clicks/s needs, from the measured CPU per hit of the widest configuration."""
    out = []
    for phase, what in (("count", "bot hits counted"), ("webhook", "human clicks counted + delivered")):
        r = max((r for r in rows if r["phase"] == phase), key=lambda r: (r["masters"], r["redirectors"]))
        lhc, rc = r["us_per_hit"]["linkhit"] * 0.1, r["us_per_hit"]["redis"] * 0.1
        hot = 1e6 / max(r["us_per_hit_busiest_master"], 1e-9)
        out.append(f"100k {what}/s ({r['config']} costs): linkhit {r['us_per_hit']['linkhit']:.1f} µs/hit -> {lhc:.1f} cores "
                   f"(= {-(-lhc // 8):.0f} redirector hosts of 8 cores at 100 %); Redis {r['us_per_hit']['redis']:.1f} µs/hit -> "
                   f"{rc:.1f} cores = at least {-(-rc // 0.7):.0f} masters at 70 %; the busiest master took "
                   f"{r['us_per_hit_busiest_master']:.1f} µs/hit (saturates one core at {hot:,.0f} hits/s)")
    return out


def main():
    global RECEIVER
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "linkhit"))
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--links", type=int, default=20_000)
    p.add_argument("--configs", default="1x1,3x1,1x2,3x2", help="comma-separated MASTERSxREDIRECTORS")
    p.add_argument("--connections", type=int, default=64, help="in all, split between the redirectors")
    p.add_argument("--webhook-hits", type=int, default=20_000, help="human hits of the webhook phase, in all")
    p.add_argument("--keep", action="store_true", help="keep the run's directory (linkhit and Redis logs)")
    p.add_argument("--receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.receiver:
        return receiver(a.receiver)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="linkhit-scaleout-")
    try:
        binary = shutil.copy(a.binary, os.path.join(tmp, "linkhit"))  # a rebuild during the run cannot swap it
        rport = lh.free_port()
        RECEIVER = start([sys.executable, os.path.abspath(__file__), "--receiver", str(rport)])
        lh.wait_port(rport)
        rows = []
        for c in a.configs.split(","):
            m, r = (int(x) for x in c.split("x"))
            rows += run_config(m, r, a, tmp, binary, rport).values()
        print(f"\n{'config':6} {'phase':8} {'hits':>8} {'answer/s':>9} {'count/s':>8} {'deliv/s':>8} {'p99 ms':>7} "
              f"{'µs/hit: linkhit':>15} {'redis':>6} {'(top)':>6} {'wrk':>5} {'recv':>5} {'cmd/hit':>7} {'busy':>5} {'other':>5}")
        for r in rows:
            u = r["us_per_hit"]
            print(f"{r['config']:6} {r['phase']:8} {r['hits']:>8} {r['answered_per_s']:>9,} {r['counted_per_s']:>8,} "
                  f"{r.get('deliveries_per_s', 0):>8,} {r['p99_ms']:>7.1f} {u['linkhit']:>15.1f} {u['redis']:>6.1f} "
                  f"{r['us_per_hit_busiest_master']:>6.1f} {u['wrk']:>5.1f} {u['receiver']:>5.1f} {r['redis_cmds_per_hit']:>7.3f} "
                  f"{r['busy_cores']:>5.2f} {r['other_cores']:>5.2f}")
        print(f"\n(busy = the machine's busy cores over the phase, of {os.cpu_count()}; other = busy cores not "
              "spent in linkhit, redis, wrk or the receiver)")
        lines = arithmetic(rows)
        print("\n".join(lines))
        print("JSON " + json.dumps({"seconds": a.seconds, "links": a.links, "connections": a.connections,
                                    "cores": os.cpu_count(), "rows": rows, "arithmetic": lines}))
    finally:
        stop(list(PROCS))
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

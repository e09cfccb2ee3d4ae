#!/usr/bin/env python3
"""An SMS campaign simulated against a real linkhit: how many human clicks does it count right?

One broadcast of --recipients links; each recipient's SMS is delivered a few seconds after the send and
then, per a seeded random plan:
  - link-preview fetchers at delivery (iMessage, Google Messages, Samsung Messages — and "stealth"
    previews with a stock Chrome user agent);
  - cloud link scanners with stock browser user agents from hosting networks (AWS, Azure, GCP ranges),
    seconds after delivery, sweeping many recipients;
  - a scanner from an ordinary address sweeping recipients within seconds;
  - people: realistic phones and browsers, a log-normal delay (median 3 minutes), 30 % of them behind a
    few carrier-grade NAT addresses, 3 % on a cloud VPN (hosting addresses: counted as bots, a known
    miss), 15 % tapping twice; some links get a preview first and the person later (the pair the hold
    window is for);
  - a slow re-scanner opening 3 % of the links one by one 10-20 minutes later from an ordinary address
    with a phone's user agent (indistinguishable from a person: a known false positive).
Delivery reports come for half the recipients.

Time is compressed by --scale (default 5: a 3-minute delay takes 36 s), and linkhit's time rules are
scaled the same way (LINKHIT_CLICK_FAST_AFTER_SEND, _AFTER_DELIVERY, LINKHIT_SWEEP_WINDOW, _AFTER_SEND,
LINKHIT_CLICK_HOLD), so every rule sees what it would see in real time.

It reports human-click precision and recall twice: from the stats API (per link) and from the webhooks
(every event matched to the tap it reports), and how many bot webhooks arrived. Seed and parameters are
printed; the same seed gives the same plan.

    cargo build --release && python3 loadtest/simulate.py --seed 1
    python3 loadtest/simulate.py --seed 2 --recipients 600 --store redis

Needs: redis-server for --store redis. Standard library only.
"""
import argparse
import heapq
import http.client
import http.server
import json
import math
import os
import random
import signal
import subprocess
import tempfile
import threading
import time

import lh
from lh import free_port, wait_port


def api(port, method, path, body=None, key=None):
    return lh.api(port, method, path, body, key or ADMIN)


ADMIN = "simulate-admin-token-0123456789"
PHONES = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1",
]
PREVIEWS = [
    "facebookexternalhit/1.1 Facebot Twitterbot/1.0",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/138.0.0.0 Mobile Safari/537.36 GoogleMessages/20.1",
    "Mozilla/5.0 (X11; Ubuntu; Linux i686; rv:24.0) Gecko/20100101 Firefox/24.0",
]
STOCK_DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
CLOUD_SCANNERS = ["3.2.8.17", "4.144.0.23", "8.34.212.9"]  # AWS, Azure, GCP ranges of the built-in list
PLAIN_SCANNER = "192.0.2.77"


def plan(rng, n):
    """Every tap: (simulated seconds after send, recipient, user agent, client ip, is_human)."""
    taps, delivered = [], {}
    nat = [f"100.64.{i}.1" for i in range(5)]
    for r in range(n):
        d = rng.uniform(1.0, 6.0)
        delivered[r] = d
        u = rng.random()
        if u < 0.45:
            taps.append((d + rng.uniform(0.2, 1.5), r, rng.choice(PREVIEWS), f"198.18.{r // 250}.{r % 250 + 1}", False))
        elif u < 0.55:
            taps.append((d + rng.uniform(0.2, 2.0), r, PHONES[r % len(PHONES)], f"198.18.{r // 250}.{r % 250 + 1}", False))
        if rng.random() < 0.35:
            delay = max(15.0, rng.lognormvariate(math.log(180.0), 1.0))
            v = rng.random()
            if v < 0.3:
                ip = rng.choice(nat)
            elif v < 0.33:
                ip = rng.choice(["3.2.8.200", "4.144.9.9"])  # a person on a cloud VPN: counted as a bot
            else:
                ip = f"198.51.{100 + r // 250}.{r % 250 + 1}"
            ua = rng.choice(PHONES)
            taps.append((d + delay, r, ua, ip, True))
            if rng.random() < 0.15:
                taps.append((d + delay + rng.uniform(5.0, 60.0), r, ua, ip, True))
    # Cloud scanners: each sweeps 30 % of the recipients, seconds after their delivery.
    for ip in CLOUD_SCANNERS:
        for r in rng.sample(range(n), int(0.3 * n)):
            taps.append((delivered[r] + rng.uniform(2.0, 8.0), r, STOCK_DESKTOP, ip, False))
    # A scanner on an ordinary address sweeps 20 % within half a minute of delivery.
    for r in rng.sample(range(n), int(0.2 * n)):
        taps.append((delivered[r] + rng.uniform(2.0, 30.0), r, rng.choice(PHONES), PLAIN_SCANNER, False))
    # A slow re-scanner: 3 % of the links, one at a time, 10-20 minutes after send, from an ordinary
    # address with a phone's user agent — nothing tells it from a person (counted as human).
    for r in rng.sample(range(n), int(0.03 * n)):
        taps.append((rng.uniform(600.0, 1200.0), r, PHONES[0], "192.0.2.200", False))
    taps.sort()
    return taps, delivered


class Receiver:
    def __init__(self):
        self.events = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.events.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]


def pr(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return round(precision, 4), round(recall, 4)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default="target/release/linkhit")
    p.add_argument("--store", choices=["embedded", "redis"], default="embedded")
    p.add_argument("--recipients", type=int, default=400)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=float, default=5.0, help="time compression (rules scaled alike)")
    p.add_argument("--max-delay", type=float, default=1200.0, help="longest simulated delay, seconds")
    args = p.parse_args()
    rng = random.Random(args.seed)
    taps, delivered = plan(rng, args.recipients)
    taps = [t for t in taps if t[0] <= args.max_delay]
    s = args.scale
    params = {"seed": args.seed, "recipients": args.recipients, "scale": s, "store": args.store,
              "taps": len(taps), "human_taps": sum(1 for t in taps if t[4])}
    print("# " + json.dumps(params))

    procs = []
    env = dict(os.environ, LINKHIT_ADMIN_TOKEN=ADMIN, LINKHIT_WEBHOOK_ALLOW_PRIVATE="true", RUST_LOG="warn",
               LINKHIT_TRUSTED_PROXIES="127.0.0.1/32", LINKHIT_KEEP_FULL_IP="true",
               LINKHIT_JOURNAL_DIR=tempfile.mkdtemp(prefix="linkhit-sim-"),
               LINKHIT_CLICK_FAST_AFTER_SEND=str(10 / s), LINKHIT_CLICK_FAST_AFTER_DELIVERY=str(5 / s),
               LINKHIT_SWEEP_WINDOW=str(30 / s), LINKHIT_SWEEP_AFTER_SEND=str(120 / s),
               LINKHIT_CLICK_HOLD=str(10 / s), LINKHIT_CLICK_FLUSH_INTERVAL="0.05",
               LINKHIT_WEBHOOK_LINK_BUDGET="0")
    if args.store == "redis":
        rport = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL))
        wait_port(rport)
        env["LINKHIT_REDIS_URL"] = f"redis://127.0.0.1:{rport}/"
    port = free_port()
    env["LINKHIT_LISTEN"] = f"127.0.0.1:{port}"
    procs.append(subprocess.Popen([args.binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        wait_port(port)
        receiver = Receiver()
        _, ws = api(port, "POST", "/api/v1/workspaces", {"name": "sim"})
        key = ws["api_key"]
        api(port, "PUT", "/api/v1/webhooks", {"click_url": f"http://127.0.0.1:{receiver.port}/hook", "format": "fields",
                                              "click_fields": ["event_id", "recipient", "user_agent", "ip"]}, key)
        recipients = [{"recipient": f"+1202555{r:04d}", "message_id": f"sim-{r}"} for r in range(args.recipients)]
        _, body = api(port, "POST", "/api/v1/broadcasts/sim/links",
                      {"target_url": "https://shop.example/sale", "recipients": recipients}, key)
        codes = [l["code"] for l in body["links"]]
        start = time.time()
        # Delivery reports for half the recipients, a moment after delivery.
        reports = sorted((delivered[r] + 0.5, r) for r in range(args.recipients) if rng.random() < 0.5)
        queue = [(t[0] / s, 0, i) for i, t in enumerate(taps)] + [(t / s, 1, r) for t, r in reports]
        heapq.heapify(queue)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        answered = [False] * len(taps)
        while queue:
            at, kind, i = heapq.heappop(queue)
            wait = start + at - time.time()
            if wait > 0:
                time.sleep(wait)
            if kind == 1:
                r = i
                sent_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + delivered[r] / s))
                frac = f"{(start + delivered[r] / s) % 1:.3f}"[1:]
                api(port, "POST", "/api/v1/delivery-reports",
                    {"reports": [{"message_id": f"sim-{r}", "status": "delivered", "at": sent_at + frac + "Z"}]}, key)
                continue
            _, r, ua, ip, _human = taps[i]
            for _attempt in range(2):
                try:
                    conn.request("GET", f"/{codes[r]}", headers={"User-Agent": ua, "X-Forwarded-For": ip})
                    resp = conn.getresponse()
                    resp.read()
                    answered[i] = resp.status == 302
                    break
                except (OSError, http.client.HTTPException):
                    # An idle keep-alive connection the server closed: open a new one.
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        time.sleep(2 + 20 / s)
        # Stats API: per link, counted human hits against the plan's.
        tp = fp = fn = 0
        wrong = []
        for r, code in enumerate(codes):
            _, st = api(port, "GET", f"/api/v1/links/{code}/stats", key=key)
            truth = sum(1 for i, t in enumerate(taps) if t[1] == r and t[4] and answered[i])
            counted = st["human_hits"]
            tp += min(truth, counted)
            fp += max(0, counted - truth)
            fn += max(0, truth - counted)
            if counted != truth and len(wrong) < 10:
                _, clicks = api(port, "GET", f"/api/v1/links/{code}/clicks?limit=20", key=key)
                wrong.append({"recipient": r, "truth": truth, "counted": counted,
                              "hits": [(c["class"], c["reason"], c["ip"], c["at"][11:23], c.get("signals")) for c in clicks["clicks"]]})
        stats_p, stats_r = pr(tp, fp, fn)
        # Webhooks: every event matched to the tap it reports (recipient, user agent, address).
        pending = {}
        for i, t in enumerate(taps):
            if answered[i]:
                pending.setdefault((f"+1202555{t[1]:04d}", t[2], t[3]), []).append(t[4])
        wtp = wfp = 0
        for e in receiver.events:
            kinds = pending.get((e.get("recipient"), e.get("user_agent"), e.get("ip")), [])
            if True in kinds:
                kinds.remove(True)
                wtp += 1
            else:
                wfp += 1
        human_truth = sum(1 for i, t in enumerate(taps) if t[4] and answered[i])
        hook_p, hook_r = pr(wtp, wfp, human_truth - wtp)
        _, b = api(port, "GET", "/api/v1/broadcasts/sim/stats", key=key)
        print(json.dumps({
            "stats_api": {"precision": stats_p, "recall": stats_r, "tp": tp, "fp": fp, "fn": fn},
            "webhooks": {"precision": hook_p, "recall": hook_r, "events": len(receiver.events), "bot_events": wfp},
            "broadcast": {"human_hits": b["human_hits"], "bot_hits": b["bot_hits"], "unique_clicks": b["unique_clicks"],
                          "delivered": b["delivered"], "bot_reasons": b["bot_reasons"]},
            "wall_seconds": round(time.time() - start, 1),
            "miscounted_links": wrong,
        }, indent=1))
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    main()

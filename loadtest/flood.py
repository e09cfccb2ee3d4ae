#!/usr/bin/env python3
"""A webhook flood, measured: memory stays bounded and another workspace's event still arrives.

Workspace A's receiver accepts connections and never answers. One public link of A is flooded with
human-looking taps by wrk for --seconds; then workspace B (its own, healthy receiver) gets one tap,
and the script reports how long B's event took to arrive, linkhit's RSS (embedded store) or Redis's
used memory (--store redis) before and after the flood, and A's backlog and dead letters.

    cargo build --release && python3 loadtest/flood.py --store embedded
    python3 loadtest/flood.py --store redis --seconds 10

Needs: wrk, redis-server (for --store redis). The hold window is 0 (LINKHIT_CLICK_HOLD=0).
"""
import argparse
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import lh
from lh import free_port, wait_port


def api(port, method, path, body=None, key=None):
    return lh.api(port, method, path, body, key or ADMIN)


ADMIN = "flood-admin-token-0123456789"
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")


def hanging_receiver():
    """Accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    held = []

    def run():
        while True:
            conn, _ = srv.accept()
            held.append(conn)

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], held


def fast_receiver():
    arrivals = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            arrivals.append(time.time())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1], arrivals


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def redis_used_mib(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1]) / 1048576
    return 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default="target/release/linkhit")
    p.add_argument("--store", choices=["embedded", "redis"], default="embedded")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args()

    procs = []
    env = dict(os.environ, LINKHIT_ADMIN_TOKEN=ADMIN, LINKHIT_WEBHOOK_ALLOW_PRIVATE="true", RUST_LOG="warn",
               LINKHIT_CLICK_HOLD="0", LINKHIT_JOURNAL_DIR=tempfile.mkdtemp(prefix="linkhit-flood-"))
    redis_port = None
    if args.store == "redis":
        redis_port = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL))
        wait_port(redis_port)
        env["LINKHIT_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/"
    port = free_port()
    env["LINKHIT_LISTEN"] = f"127.0.0.1:{port}"
    lh = subprocess.Popen([args.binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(lh)
    try:
        wait_port(port)
        hang_port, held = hanging_receiver()
        fast_port, arrivals = fast_receiver()
        _, a = api(port, "POST", "/api/v1/workspaces", {"name": "a"})
        _, b = api(port, "POST", "/api/v1/workspaces", {"name": "b"})
        api(port, "PUT", "/api/v1/webhooks", {"click_url": f"http://127.0.0.1:{hang_port}/hook"}, a["api_key"])
        api(port, "PUT", "/api/v1/webhooks", {"click_url": f"http://127.0.0.1:{fast_port}/hook"}, b["api_key"])
        # Sent an hour ago, as a test makes a human (README): taps right after creation are previews.
        sent_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        _, link_a = api(port, "POST", "/api/v1/links", {"target_url": "https://shop.example/a", "sent_at": sent_at}, a["api_key"])
        _, link_b = api(port, "POST", "/api/v1/links", {"target_url": "https://shop.example/b", "sent_at": sent_at}, b["api_key"])
        time.sleep(1)
        before = rss_mib(lh.pid) if args.store == "embedded" else redis_used_mib(redis_port)
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(f'wrk.headers["User-Agent"] = "{IPHONE}"\n')
        script.close()
        out = subprocess.run(["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "-s", script.name,
                              f"http://127.0.0.1:{port}/{link_a['code']}"], capture_output=True, text=True).stdout
        requests = next((int(l.split()[0]) for l in out.splitlines() if "requests in" in l), 0)
        time.sleep(1)
        sent = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", f"/{link_b['code']}", headers={"User-Agent": IPHONE})
        conn.getresponse().read()
        while not arrivals and time.time() - sent < 60:
            time.sleep(0.01)
        b_secs = arrivals[0] - sent if arrivals else float("inf")
        time.sleep(2)
        after = rss_mib(lh.pid) if args.store == "embedded" else redis_used_mib(redis_port)
        _, dead = api(port, "GET", "/api/v1/webhooks/dead-letters?limit=10000", key=a["api_key"])
        reasons = {}
        for d in dead["dead_letters"]:
            reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
        what = "linkhit RSS" if args.store == "embedded" else "Redis used_memory"
        print(json.dumps({
            "store": args.store, "flood_taps": requests, "flood_seconds": args.seconds,
            "b_event_seconds": round(b_secs, 3), f"{what} before MiB": round(before, 1),
            f"{what} after MiB": round(after, 1), "a_backlog": dead["backlog"],
            "a_dead_letters_kept": len(dead["dead_letters"]), "a_dead_letter_reasons": reasons,
            "a_receiver_connections_held": len(held),
        }))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Creates a workspace and N links (one broadcast, one recipient each) through linkhit's API and writes
their codes, one per line. Standard library only.

    python3 loadtest/create_links.py --base http://127.0.0.1:8080 --admin-token T --links 100000 --out codes.txt
"""
import argparse
import json
import time
import urllib.request


def call(url, token, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--admin-token", required=True)
    p.add_argument("--links", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100_000, help="recipients per bulk request")
    p.add_argument("--target", default="https://shop.example.com/fall-campaign?utm_source=sms")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    ws = call(f"{a.base}/api/v1/workspaces", a.admin_token, {"name": "loadtest"})
    key = ws["api_key"]
    codes, started, n = [], time.monotonic(), 0
    while n < a.links:
        size = min(a.batch, a.links - n)
        recipients = [{"recipient": f"+1{2000000000 + n + i}", "message_id": f"m{n + i}"} for i in range(size)]
        out = call(f"{a.base}/api/v1/broadcasts/loadtest/links", key, {"target_url": a.target, "recipients": recipients})
        codes.extend(link["code"] for link in out["links"])
        n += size
    elapsed = time.monotonic() - started
    with open(a.out, "w") as f:
        f.write("\n".join(codes) + "\n")
    print(json.dumps({"links": len(codes), "seconds": round(elapsed, 3),
                      "links_per_second": round(len(codes) / elapsed), "api_key": key}))


if __name__ == "__main__":
    main()

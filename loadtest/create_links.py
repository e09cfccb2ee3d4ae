#!/usr/bin/env python3
"""Creates a workspace and N links (one broadcast, one recipient each) through linkhit's API and writes
their codes, one per line. Standard library only.

    python3 loadtest/create_links.py --base http://127.0.0.1:8080 --admin-token T --links 100000 --out codes.txt
"""
import argparse
import json
import time
import urllib.request


def post(url, token, data):
    req = urllib.request.Request(
        url, data=data, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return resp.read()


def call(url, token, body):
    return json.loads(post(url, token, json.dumps(body).encode()))


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
    # Only the HTTP exchanges are timed: building the request JSON and parsing the answer in Python
    # is the client's work, not linkhit's (and costs this script about as much as linkhit's own).
    codes, elapsed, n = [], 0.0, 0
    while n < a.links:
        size = min(a.batch, a.links - n)
        recipients = [{"recipient": f"+1{2000000000 + n + i}", "message_id": f"m{n + i}"} for i in range(size)]
        data = json.dumps({"target_url": a.target, "recipients": recipients}).encode()
        started = time.monotonic()
        raw = post(f"{a.base}/api/v1/broadcasts/loadtest/links", key, data)
        elapsed += time.monotonic() - started
        codes.extend(link["code"] for link in json.loads(raw)["links"])
        n += size
    with open(a.out, "w") as f:
        f.write("\n".join(codes) + "\n")
    print(json.dumps({"links": len(codes), "seconds": round(elapsed, 3),
                      "links_per_second": round(len(codes) / elapsed), "api_key": key}))


if __name__ == "__main__":
    main()

"""Helpers shared by the loadtest scripts that start linkhit themselves (flood.py, kill9.py,
simulate.py, ...): free ports, waiting for a listener, one JSON API call, and the nginx baseline's
configuration. Standard library only."""
import http.client
import json
import os
import socket
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port}")


def api(port, method, path, body=None, key=None):
    """One API call with a bearer token; returns (status, parsed JSON or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data else None)


TARGET = "https://shop.example.com/fall-campaign?utm_source=sms"


def nginx_conf(tmp, port, codes):
    """The baseline of issue #17: one nginx worker, a `map $uri` of every code and `return 302` (404 for
    anything else). Writes `tmp/nginx.conf` and returns its path (`nginx -p tmp -c path`)."""
    conf = os.path.join(tmp, "nginx.conf")
    mapping = "".join(f"    /{c} {TARGET};\n" for c in codes)
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; error_log {tmp}/nginx-error.log;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  map_hash_bucket_size 128; map_hash_max_size 262144;
  map $uri $target {{ default ""; {mapping} }}
  server {{ listen 127.0.0.1:{port}; location / {{ if ($target = "") {{ return 404; }} return 302 $target; }} }}
}}
""")
    return conf

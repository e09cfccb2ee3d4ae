#!/usr/bin/env python3
"""What one counted bot hit costs Redis at the least, in instructions (callgrind): the floor below
linkhit's counting script (issue #17, budget 2). Each way keeps an exact per-link bot count for a
batch of hits on distinct links (a flood's usual batch), on a Redis this script starts under
`valgrind --tool=callgrind`:

  native   a pipeline of plain `HINCRBY counters bot_hits 1`, one per hit (no script: no guard, so
           not what linkhit can do; the floor of any per-link counter)
  script   one `EVALSHA` per batch looping `redis.call('HINCRBY', KEYS[j], 'bot_hits', '1')` (what
           linkhit's `R` operation does, without the guard and the broadcast's counters)
  incr-native / incr-script  the same two with the count in a string of its own per link
           (`INCRBY bots 1`): what linkhit does since session 10
  incr-multi   incr-native inside `MULTI`/`EXEC` (what a once-only native run would need)
  incr1-script incr-script with `INCR` (one argument less per hit)
  incr1-locals the same with `redis.call` and `KEYS` read once into locals (Redis 7 looks every global
               up through its protected global table): linkhit's `R` run since session 10
  mget-mset    one `MGET` of the batch's keys and one `MSET` of the values + 1 (two calls per batch
               instead of one per hit; Lua formats every value back)
  bitfield one `EVALSHA` per batch calling `BITFIELD key INCRBY i64 #ord 1 ...` on one string per
           broadcast (counters by the link's position in its broadcast: one call per batch instead of
           one per hit)

Compare with `python3 loadtest/instructions.py --kinds redis`: Redis's instructions per request under
linkhit's real counting (guard, broadcast counters, replies, the webhook worker's polls included).

    python3 loadtest/redis_floor.py                       # 100,000 links, 200 batches of 250
    python3 loadtest/redis_floor.py --ways script --batch 100

Needs valgrind (callgrind_control) and redis-server. Standard library only.
"""
import argparse
import glob
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lh  # noqa: E402

SCRIPTS = {
    "script": "for j = 1, #KEYS do redis.call('HINCRBY', KEYS[j], 'bot_hits', '1') end return 0",
    "bitfield": "redis.call('BITFIELD', KEYS[1], unpack(ARGV)) return 0",
    "incr-script": "for j = 1, #KEYS do redis.call('INCRBY', KEYS[j], '1') end return 0",
    "incr1-script": "for j = 1, #KEYS do redis.call('INCR', KEYS[j]) end return 0",
    "incr1-locals": "local call, keys = redis.call, KEYS for j = 1, #keys do call('INCR', keys[j]) end return 0",
    "mget-mset": "local v = redis.call('MGET', unpack(KEYS)) local a = {} "
                 "for j = 1, #KEYS do a[2 * j - 1] = KEYS[j] a[2 * j] = (tonumber(v[j]) or 0) + 1 end "
                 "redis.call('MSET', unpack(a)) return 0",
}


def encode(args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


class Redis:
    """A minimal RESP client: pipelines of commands, replies read in order (errors raise)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.file = self.sock.makefile("rb")

    def reply(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"-":
            raise SystemExit(f"redis: {rest.decode()}")
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2]
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        return rest

    def pipe(self, commands):
        self.sock.sendall(b"".join(encode(c) for c in commands))
        return [self.reply() for _ in commands]


def measure(way, args, tmp):
    out = os.path.join(tmp, f"callgrind-{way}-{time.time_ns()}")
    port = lh.free_port()
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
                             "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lh.wait_port(port, timeout=120)
        r = Redis(port)
        codes = [f"c{i:07d}" for i in range(args.links)]
        for k in range(0, args.links, 1000):
            r.pipe([["HSET", f"lh:cnt:{{{c}}}", "bot_hits", "1", "human_hits", "0"] for c in codes[k:k + 1000]])
            r.pipe([["SET", f"lh:bot:{{{c}}}", "1"] for c in codes[k:k + 1000]])
        r.pipe([["SETRANGE", "lh:bcf:{ws:b}", args.links * 8, "x"]])
        sha = r.pipe([["SCRIPT", "LOAD", SCRIPTS.get(way, SCRIPTS["script"])]])[0].decode()
        rng = random.Random(1)
        batches = []
        for _ in range(args.batches):
            picked = rng.sample(range(args.links), args.batch)
            if way == "native":
                batches.append([["HINCRBY", f"lh:cnt:{{{codes[i]}}}", "bot_hits", "1"] for i in picked])
            elif way == "incr-native":
                batches.append([["INCRBY", f"lh:bot:{{{codes[i]}}}", "1"] for i in picked])
            elif way == "incr-multi":
                batches.append([["MULTI"]] + [["INCRBY", f"lh:bot:{{{codes[i]}}}", "1"] for i in picked] + [["EXEC"]])
            elif way in ("incr-script", "incr1-script", "incr1-locals", "mget-mset"):
                batches.append([["EVALSHA", sha, len(picked)] + [f"lh:bot:{{{codes[i]}}}" for i in picked]])
            elif way == "script":
                batches.append([["EVALSHA", sha, len(picked)] + [f"lh:cnt:{{{codes[i]}}}" for i in picked]])
            else:
                ops = [x for i in picked for x in ("INCRBY", "i64", f"#{i}", "1")]
                batches.append([["EVALSHA", sha, 1, "lh:bcf:{ws:b}"] + ops])
        for what in ("--instr=on", "--zero"):
            subprocess.run(["callgrind_control", what, str(proc.pid)], check=True, capture_output=True)
        for batch in batches:
            r.pipe(batch)
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait()
    total = 0
    for path in glob.glob(out + ".*.1"):
        with open(path) as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("summary:"))
    return total / (args.batches * args.batch)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ways", default="native,script,incr-native,incr-multi,incr-script,incr1-script,incr1-locals,mget-mset,bitfield")
    p.add_argument("--links", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--batches", type=int, default=200)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="linkhit-floor-")
    for way in args.ways.split(","):
        print(f"{way:9} {measure(way, args, tmp):>8,.0f} Redis instructions per counted hit", flush=True)


if __name__ == "__main__":
    main()

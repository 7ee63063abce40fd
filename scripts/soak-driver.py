#!/usr/bin/env python3
"""Load driver for scripts/soak: mixed traffic at a fixed rate against one service.

Sends GET /name at --rate requests per second for --seconds, spread over --workers threads
that each keep one HTTP/1.1 connection alive (reconnecting when the server closes it).
The mix, by weight: valid tokens, expired tokens, garbage, and valid tokens of a user
without a profile. Tokens come from the environment (the soak script mints them with the
service's own `mint`). Prints counts by kind and status, latency percentiles, and the
service's RSS (from /proc) at the start, after warm-up and at the end, as one JSON object on
the last line of stdout. Exit status 0 always: scripts/soak judges the figures.
"""

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time

EXPECTED = {"valid": 200, "expired": 401, "garbage": 401, "unknown_user": 404}
MIX = [("valid", 70), ("expired", 10), ("garbage", 10), ("unknown_user", 10)]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Worker(threading.Thread):
    def __init__(self, index, args, schedule, tokens, results, lock):
        super().__init__(daemon=True)
        self.index, self.args, self.schedule = index, args, schedule
        self.tokens, self.results, self.lock = tokens, results, lock
        self.conn = None
        self.rng = random.Random(index)
        self.retries = 0

    def connect(self):
        self.conn = http.client.HTTPConnection(self.args.host, self.args.port, timeout=10)

    def run(self):
        for due, kind in self.schedule:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            token = self.tokens[kind]
            if kind == "garbage":
                token = "".join(self.rng.choice("abcdefghij.-_") for _ in range(self.rng.randint(1, 300)))
            started = time.monotonic()
            outcome = self.request(token)
            took = time.monotonic() - started
            with self.lock:
                self.results.append((kind, outcome, took))

    def request(self, token):
        for attempt in range(2):
            if self.conn is None:
                self.connect()
            try:
                self.conn.request("GET", "/name", headers={"Authorization": f"Bearer {token}"})
                response = self.conn.getresponse()
                body = response.read()
                json.loads(body)  # every answer, error or not, is JSON
                if response.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return str(response.status)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # The server closed an idle kept-alive connection (header read timeout) just
                # as we reused it; the request was never read. Retry once on a new connection.
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    return type(e).__name__
                self.retries += 1
            except Exception as e:  # noqa: BLE001 - every failure is counted, none is fatal
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                return type(e).__name__
        return "unreachable"


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()

    tokens = {
        "valid": os.environ["SOAK_VALID_TOKEN"],
        "expired": os.environ["SOAK_EXPIRED_TOKEN"],
        "unknown_user": os.environ["SOAK_UNKNOWN_USER_TOKEN"],
        "garbage": None,
    }
    rng = random.Random(42)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    total = int(args.seconds * args.rate)
    start = time.monotonic() + 0.2
    schedules = [[] for _ in range(args.workers)]
    for i in range(total):
        schedules[i % args.workers].append((start + i / args.rate, rng.choices(kinds, weights)[0]))

    results, lock = [], threading.Lock()
    workers = [Worker(i, args, s, tokens, results, lock) for i, s in enumerate(schedules)]
    rss = {"start_kib": rss_kib(args.pid)}
    for w in workers:
        w.start()
    time.sleep(max(0.0, start + args.warmup - time.monotonic()))
    rss["after_warmup_kib"] = rss_kib(args.pid)
    last_report = time.monotonic()
    while any(w.is_alive() for w in workers):
        time.sleep(1)
        if time.monotonic() - last_report >= 60:
            last_report = time.monotonic()
            with lock:
                done = len(results)
            print(f"soak: {done}/{total} requests, RSS {rss_kib(args.pid) // 1024} MiB", file=sys.stderr, flush=True)
    wall = time.monotonic() - start
    rss["end_kib"] = rss_kib(args.pid)

    by_kind = {}
    for kind, outcome, took in results:
        entry = by_kind.setdefault(kind, {"outcomes": {}, "latencies": []})
        entry["outcomes"][outcome] = entry["outcomes"].get(outcome, 0) + 1
        entry["latencies"].append(took)
    summary = {
        "requests": len(results),
        "seconds": round(wall, 1),
        "rate": args.rate,
        "retried_on_closed_keepalive": sum(w.retries for w in workers),
        "rss": rss,
        "kinds": {},
    }
    for kind, entry in sorted(by_kind.items()):
        lat = sorted(entry["latencies"])
        unexpected = sum(n for o, n in entry["outcomes"].items() if o != str(EXPECTED[kind]))
        summary["kinds"][kind] = {
            "expected": EXPECTED[kind],
            "outcomes": entry["outcomes"],
            "unexpected": unexpected,
            "p50_ms": round(percentile(lat, 0.50) * 1000, 1),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

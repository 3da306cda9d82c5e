"""Redis work per WebSocket frame in the steady state: `lwl api` + `lwl worker` on a Redis of their own.

INFO commandstats counts every client of a server, so the test starts a dedicated `redis-server` on a
free port. It counts round trips per process from MONITOR (a MULTI..EXEC block or a script is one round
trip; each process names its connections, so CLIENT LIST tells whose they are), checks that MONITOR saw
every command INFO commandstats counted, and leaves out the worker's background loops (heartbeat, job
queue), which run on a clock, not per frame.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Cluster, first_mask, free_port, jpeg_bytes, make_frame

from service.client import Client

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
FRAMES, WARMUP, SNAPSHOT_EVERY = 20, 3, 8
# what redis-py sends once when its pool opens a connection (the worker opens a second one the first time a
# background snapshot write overlaps the next frame, which may fall inside the counted window)
SETUP = {"CLIENT", "HELLO", "AUTH", "SELECT"}


def _start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    import redis

    port = free_port()
    p = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            if r.ping():
                return p, port
        except redis.ConnectionError:
            time.sleep(0.05)
    p.kill()
    raise AssertionError("redis-server did not start")


class Monitor:
    """MONITOR in a thread until the test's own client sends the end marker."""

    END = "lwl-test-monitor-end"

    def __init__(self, port: int) -> None:
        import redis

        self.records: list[dict] = []
        self.conn = redis.Redis(port=port).monitor()
        self.conn.__enter__()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for rec in self.conn.listen():
            if self.END in rec["command"]:
                return
            self.records.append(rec)

    def stop(self, r: Any) -> list[dict]:
        r.echo(self.END)
        self.thread.join(10)
        self.conn.__exit__(None, None, None)
        return self.records


def _round_trips(records: list[dict], names: dict[str, str], prefix: str) -> tuple[Counter, Counter]:
    """Round trips and commands per process name: a MULTI..EXEC block, or an EVALSHA with the commands
    its script runs, is one round trip. The worker's heartbeat and job-queue polls are `background`;
    a connection's set-up commands are counted apart, not as round trips."""
    trips: Counter = Counter()
    cmds: Counter = Counter()
    blocks: dict[str, list[str]] = {}
    last = ""

    def who(src: str, texts: list[str]) -> str:
        bg = any(f"{prefix}:jobqueue" in t or f"{prefix}:worker" in t for t in texts)
        return names.get(src, f"unknown {src}") + (" (background)" if bg else "")

    for rec in records:
        text, src = rec["command"], f"{rec['client_address']}:{rec['client_port']}"
        name = text.split(" ", 1)[0].strip('"').upper()
        if name in SETUP:  # a new pooled connection, opened once: not a per-frame round trip
            cmds[names.get(src, f"unknown {src}") + " (connection set-up)"] += 1
        elif rec["client_type"] == "lua":  # run by the script the last EVALSHA started
            cmds[last] += 1
        elif name == "MULTI":
            blocks[src] = []
        elif name == "EXEC":
            texts = blocks.pop(src, [])
            trips[who(src, texts)] += 1
            cmds[who(src, texts)] += len(texts) + 2
        elif src in blocks:
            blocks[src].append(text)
        else:
            last = who(src, [text])
            trips[last] += 1
            cmds[last] += 1
    return trips, cmds


@pytest.mark.slow
def test_two_round_trips_per_frame_on_api_and_worker(weights: Path, tmp_path: Path) -> None:
    import redis

    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"no {REDIS_SERVER}: the test needs a Redis of its own (INFO counts every client)")
    server, port = _start_redis(tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    c = Cluster(tmp_path, weights, False, LWL_REDIS_URL=url, LWL_HEARTBEAT_S="1",
                LWL_SNAPSHOT_EVERY=str(SNAPSHOT_EVERY))
    monitor = None
    try:
        c.start("api")
        c.start("worker", LWL_WORKER_ID="w1")
        c.wait_ready()
        frames = [jpeg_bytes(make_frame(i % 12)) for i in range(WARMUP + FRAMES + 1)]
        s = Client(c.url).create_session(frames[0], mask=first_mask())
        r = redis.Redis(port=port, client_name="lwl-test")
        from websockets.sync.client import connect

        with connect(s.ws_url + "&max_inflight=1", max_size=None) as ws:
            assert json.loads(ws.recv())["type"] == "ready"
            for f in frames[1 : WARMUP + 1]:  # the first frames load the scripts
                ws.send(f)
                assert json.loads(ws.recv())["type"] == "result"
            monitor = Monitor(port)
            time.sleep(0.3)
            before = r.info("commandstats")
            names = {}
            for i, f in enumerate(frames[WARMUP + 1 :]):
                ws.send(f)
                msg = json.loads(ws.recv())
                assert msg["type"] == "result" and msg["seq"] == WARMUP + 1 + i
                if i == FRAMES // 2:  # every connection of both processes is open now
                    names = {cl["addr"]: cl["name"] for cl in r.client_list()}
            after = r.info("commandstats")
            # and the connections a pool opened since (a second one for an overlapping snapshot write)
            names.update({cl["addr"]: cl["name"] for cl in r.client_list()})
            records = monitor.stop(r)
            monitor = None
        # what MONITOR saw between the two INFO calls: a heartbeat just before or after is in neither count
        marks = [i for i, rec in enumerate(records) if rec["command"].split(" ", 1)[0].strip('"').upper() == "INFO"]
        records = records[marks[0] + 1 : marks[-1]]
        trips, cmds = _round_trips(records, names, c.prefix)
        trips.pop("lwl-test", None)
        seen = sum(cmds.values()) - cmds.pop("lwl-test", 0)
        counted = {k: v["calls"] - before.get(k, {}).get("calls", 0) for k, v in after.items()}
        counted = {k: v for k, v in counted.items() if v and k not in ("cmdstat_info", "cmdstat_client|list")}
        per_frame = {k: v / FRAMES for k, v in trips.items()}
        report = f"round trips per frame {per_frame}, commands {dict(cmds)}, commandstats {counted}"
        print(report)
        # MONITOR saw what INFO counted, up to the blocking reads that straddle the window's edges
        assert abs(seen - sum(counted.values())) <= 3, report
        assert not [k for k in trips if k.startswith("unknown")], report
        # a frame: 2 on each side; the worker also stores a snapshot every SNAPSHOT_EVERY frames, in a write
        # of its own after that frame's answer (so the tens of MB delay no answer)
        assert per_frame.get("lwl-api", 0) <= 2, report
        assert per_frame.get("lwl-worker-w1", 0) <= 2 + 1 / SNAPSHOT_EVERY, report
        assert trips["lwl-api"] >= FRAMES and trips["lwl-worker-w1"] >= FRAMES, report  # all were seen
        assert sum(v for k, v in cmds.items() if "(" not in k) / FRAMES <= 16, report
        assert sum(v for k, v in cmds.items() if "set-up" in k) <= 4, report  # a new connection, not one a frame

        # the image is stored once: in the session's frames stream, which snapshots trim (no replay list)
        rc = redis.Redis(port=port, decode_responses=True)
        assert rc.xlen(f"{c.prefix}:frames:{s.id}") <= SNAPSHOT_EVERY
        assert not rc.exists(f"{c.prefix}:replay:{s.id}")
        assert rc.xlen(f"{c.prefix}:work:w1") <= 1
    finally:
        if monitor is not None:
            monitor.stop(r)
        c.close()
        server.terminate()
        server.wait(10)


"""`geofence demo` as a user runs it (`python -m service.cli demo`, the same `run_demo`): the
engine starts, the day is replayed, the summary finds the planted events, the printed
login opens the desk, the terminal shows no log line (they go to the engine's log file),
and it all stops by itself, or on Ctrl-C, leaving no process."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from sim.demo import add_demo_arguments, demo_options, run_demo
from tests.engine_harness import process_alive
from tests.heavy import heavy_test

TIMEOUT_S = 150


class Demo:
    """The demo in a subprocess of its own session (Ctrl-C goes to the whole group, as
    from a terminal); its output lines as they come."""

    def __init__(self, data: Path, *args: str):
        self.data = data
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "demo", "--data", str(data), "--subjects", "200",
             "--desk-bind", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = TIMEOUT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if self.proc.poll() is not None:
                self._reader.join(5)
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in:\n" + "\n".join(self.lines[-40:]))

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """Whatever happened: no process left, the pipe closed."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(10)
        self.proc.stdout.close()

    def engine_pids(self) -> list[int]:
        return [int(p.read_text()) for p in (self.data / "data").glob("*.pid")]

    def assert_stopped_cleanly(self) -> None:
        """The engine's stop was reported, its status file is gone, and every line printed
        is the demo's own: log lines (the desk's HTTP access log among them) went to the
        log file the banner named."""
        assert "demo: engine stopped" in self.lines
        assert self.lines[-1].startswith("demo: stopped")
        assert not (self.data / "data" / "engine.json").exists()
        log_file = self.data / "data" / "engine.log"
        assert any(line == f"  logs:     {log_file}" for line in self.lines)
        assert "geofence: ready" in log_file.read_text()
        for line in self.lines:
            assert line.startswith(("demo", "geofence demo:", "  ")), line
            assert not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d", line), line


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if process_alive(p)]


def found(lines: list[str], label: str) -> dict[str, tuple[int, int]]:
    """{alarm type: (found, planted)} of one summary line."""
    line = next(x for x in lines if x.strip().startswith(label))
    return {kind: (int(a), int(b)) for a, b, kind in re.findall(r"(\d+)/(\d+) (\w+)", line)}


def test_a_small_demo_finds_the_planted_events_and_stops_by_itself(tmp_path):
    demo = Demo(tmp_path / "demo", "--speed", "4000", "--duration", "6")
    try:
        desk = demo.wait_for(r"desk: +(http://127\.0\.0\.1:\d+)").group(1)
        login = demo.wait_for(r"log in as (demo) / (\S+) +\(3704 ")
        demo.wait_for(r"ZeroMQ PUB on tcp://127\.0\.0\.1:\d+")
        demo.wait_for(r"metrics: +http://127\.0\.0\.1:\d+/metrics")
        demo.wait_for(r"other alarms: \d+")
        alarms = desk_alarms(desk, login.group(1), login.group(2))
        pids = demo.engine_pids()
        assert demo.wait() == 0
    finally:
        demo.kill()
    lines = demo.lines
    assert found(lines, "exits") == {"zone_exit": (4, 4), "zone_return": (4, 4)}
    assert found(lines, "injunction breaches") == {"exclusion_entry": (2, 2)}
    overstays = found(lines, "overstays")
    assert overstays["permit_overstay"] == (2, 2) and overstays["zone_exit"] == (2, 2)
    assert found(lines, "permitted trips") == {"without": (4, 4)}   # "4/4 without an alarm"
    assert any(re.search(r"the day's [\d,]+ fixes from 3 carriers: [\d,]+ accepted, 0 rejected",
                         x) for x in lines)
    assert {a["type"] for a in alarms} >= {"zone_exit", "exclusion_entry"}
    demo.assert_stopped_cleanly()
    assert "aiohttp.access" in (tmp_path / "demo" / "data" / "engine.log").read_text()
    assert len(pids) >= 5 and wait_gone(pids) == []       # 2 workers, ingest, dispatcher, desk
    truth = json.loads((tmp_path / "demo" / "truth.json").read_text())
    assert {r["kind"] for r in truth} >= {"exit", "breach", "overstay", "outage"}


def desk_alarms(url: str, user: str, password: str) -> list[dict]:
    """Log in with the printed login and read the newest alarms."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    body = json.dumps({"user": user, "password": password}).encode()
    request = urllib.request.Request(url + "/api/login", body,
                                     {"Content-Type": "application/json"})
    assert opener.open(request, timeout=10).status == 200
    reply = json.loads(opener.open(url + "/api/alarms?limit=500", timeout=10).read())
    return reply["alarms"] if isinstance(reply, dict) else reply


@heavy_test
def test_ctrl_c_stops_the_carriers_and_every_engine_process(tmp_path):
    demo = Demo(tmp_path / "demo", "--speed", "600")
    try:
        demo.wait_for(r"replaying the last 24 h")
        demo.wait_for(r"demo: replay at")
        pids = demo.engine_pids()
        os.killpg(demo.proc.pid, signal.SIGINT)   # as a terminal's Ctrl-C
        assert demo.wait(30) == 130
    finally:
        demo.kill()
    assert len(pids) >= 5 and wait_gone(pids) == []
    demo.assert_stopped_cleanly()


def test_options_map_one_to_one_onto_run_demo():
    import argparse
    import inspect

    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    options = demo_options(parser.parse_args(["--desk-bind", "127.0.0.1:0", "--keep"]))
    parameters = inspect.signature(run_demo).parameters
    assert set(options) <= set(parameters)
    assert options["desk_bind"] == "127.0.0.1:0" and options["keep"] is True
    assert options["duration"] is None and options["subjects"] == 2032


def test_bad_options_and_foreign_directories_are_refused(tmp_path):
    from sim.demo_setup import DemoError

    with pytest.raises(DemoError, match="at least"):
        run_demo(subjects=5, data=str(tmp_path / "a"))
    with pytest.raises(DemoError, match="speed"):
        run_demo(speed=0.5, data=str(tmp_path / "a"))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not empty"):
        run_demo(subjects=100, data=str(foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"

"""`geofence serve` refuses what cannot work before it starts a child, and a child that
fails the same way three times at start-up stops the tree instead of restarting forever."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import ConfigError, Settings, Storage
from engine.paths import EnginePaths
from service.preflight import StartError, preflight
from service.serve import serve
from service.startup import FAILED, START_UP_TRIES, StartUpWatch
from tests.engine_harness import write_config

START_TIMEOUT_S = 300


def run_serve(config, timeout=START_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`geofence serve` as a real process in its own session; afterwards, every process
    of that session must be gone."""
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--config", str(config),
                             "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert wait_for_no_process_in_session(proc.pid) == []
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for_no_process_in_session(sid: int, timeout_s: float = 60.0) -> list[str]:
    """The live processes left in session `sid` (zombies are gone already: only their
    exit status waits for a reaper), once none is left or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        ps = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-s", str(sid)],
                            capture_output=True, text=True).stdout
        left = [line.strip() for line in ps.splitlines() if line.split()[1][0] != "Z"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def no_child_started(root) -> bool:
    paths = EnginePaths(root)
    return not list(root.glob("*.pid")) and not paths.status_file.exists()


@pytest.mark.parametrize("section, line, key", [
    ("desk", "session_hours = inf", "[desk] session_hours"),
    ("rules", "check_every_s = 0", "[rules] check_every_s"),
    ("rules", "exit_fixes = 0", "[rules] exit_fixes"),
    ("desk", 'bind = "127.0.0.1:99999"', "[desk] bind"),
    ("ingest", "max_fix_age_s = -1", "[ingest] max_fix_age_s"),
    ("rules", "feed_outage_share = nan", "[rules] feed_outage_share"),
])
def test_the_issues_values_are_refused_by_serve_in_one_line_before_any_child(
        tmp_path, section, line, key):
    config = tmp_path / "geofence.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "data"}"\n[{section}]\n{line}\n')
    result = run_serve(config, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]     # one line
    assert result.stderr.startswith(f"geofence: error: {config}: {key}: ")
    assert "must be" in result.stderr
    assert "ready" not in result.stdout
    assert no_child_started(tmp_path / "data")


def test_settings_built_in_code_are_checked_before_any_child(tmp_path):
    settings = Settings(storage=Storage(path=str(tmp_path / "data")))
    bad = replace(settings, rules=replace(settings.rules, exit_fixes=0))
    with pytest.raises(ConfigError, match=r"\[rules\] exit_fixes: must be a whole number"):
        serve(bad, should_stop=lambda: False)
    assert no_child_started(tmp_path / "data")


def test_missing_layer_and_curve_files_are_reported_together(tmp_path):
    settings = Settings(storage=Storage(path=str(tmp_path / "data")))
    settings = replace(
        settings, source="geofence.toml",
        layers=replace(settings.layers, zones=str(tmp_path / "zones.geojson")),
        ingest=replace(settings.ingest, curve_keys=str(tmp_path / "keys"),
                       curve_carriers=str(tmp_path / "carriers")))
    with pytest.raises(StartError) as e:
        preflight(settings)
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("geofence.toml: [layers] zones = ")
    assert "zones.geojson" in problems[0]
    assert problems[1].startswith("geofence.toml: [ingest] curve_keys: ")
    assert problems[2].startswith("geofence.toml: [ingest] curve_carriers: ")
    assert no_child_started(tmp_path / "data")


def test_a_storage_path_that_cannot_be_a_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    config = tmp_path / "geofence.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "file" / "data"}"\n')
    result = run_serve(config, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"geofence: error: {config}: [storage] path '{tmp_path / 'file' / 'data'}' is not a "
        "writable directory: Not a directory"]


def test_a_read_only_storage_path_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        with pytest.raises(StartError, match="is not a writable directory: Read-only file "
                                             "system"):
            preflight(Settings(storage=Storage(path=str(mount))))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_desk_port_taken_stops_serve_with_the_desks_reason_after_three_tries(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, desk=True)
        config.write_text(config.read_text().replace('[desk]\nbind = "127.0.0.1:0"',
                                                     f'[desk]\nbind = "127.0.0.1:{port}"'))
        result = run_serve(config)
    assert result.returncode == 2
    reason = result.stderr.strip().splitlines()[-1]
    assert reason.startswith("geofence: error: desk could not start: ")
    assert "address already in use" in reason and reason.endswith("(3 times in a row)")
    assert result.stderr.count("desk could not start") >= START_UP_TRIES
    assert "ingest could not start" not in result.stderr
    assert "geofence: ready" not in result.stdout
    assert "Traceback" not in result.stderr


def test_three_identical_start_up_failures_in_a_row_stop_the_tree():
    watch = StartUpWatch()
    for _ in range(START_UP_TRIES - 1):
        watch.started("desk")
        watch.message((FAILED, "desk", "port taken"))
        assert watch.exited("desk", 1) is None
    watch.started("desk")
    watch.message((FAILED, "desk", "port taken"))
    assert watch.exited("desk", 1) == "desk could not start: port taken (3 times in a row)"


def test_a_different_reason_or_a_ready_start_begins_the_count_again():
    watch = StartUpWatch()
    for reason in ("port taken", "port taken", "disk full", "disk full"):
        watch.started("ingest")
        watch.message((FAILED, "ingest", reason))
        assert watch.exited("ingest", 1) is None
    watch.started("ingest")
    watch.message(("ingest", "tcp://127.0.0.1:5555", None))
    assert watch.exited("ingest", -9) is None       # crashed after it was ready: restart
    for _ in range(START_UP_TRIES - 1):             # an unreported death counts too
        watch.started("ingest")
        assert watch.exited("ingest", -11) is None
    watch.started("ingest")
    assert watch.exited("ingest", -11) == ("ingest could not start: exited with code -11 "
                                           "before it was ready (3 times in a row)")


def test_a_missing_fixes_store_behind_the_workers_checkpoints_is_refused(tmp_path):
    """A fresh fixes store would number batches from 1 again, below the workers'
    checkpoints: acknowledged fixes would never be evaluated. Refused, with what to do."""
    from service.evaluation_store import EvaluationStore

    settings = replace(Settings(), storage=Storage(path=str(tmp_path / "data")))
    paths = preflight(settings)                       # a new storage path starts
    with EvaluationStore(paths.worker_db(0, 1)) as store:
        store.start_after(120)                        # as if 120 batches were evaluated
    for suffix in ("", "-wal", "-shm"):               # and then the store was removed
        Path(f"{paths.fixes_db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StartError) as refused:
        preflight(settings)
    assert refused.value.problems == [
        f"{paths.fixes_db} is missing, but the workers have evaluated up to batch 120: "
        "restore the storage path from a backup (geofence restore), or put the file back"]
    assert not paths.fixes_db.exists()

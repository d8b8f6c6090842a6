"""Damaged store files, made for real (a broken header, a truncated file, garbage pages):
`geofence store check` finds each, `serve` refuses to start on them with one line, and
damage met after start stops the engine with one line instead of a restart loop."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.paths import EnginePaths
from tests.engine_harness import population_document, write_config
from tests.heavy import heavy

PAGE_BYTES = 4096


def geofence(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *argv], capture_output=True,
                          text=True, timeout=timeout)


def make_storage(root: Path) -> tuple[Path, EnginePaths]:
    """A config and a storage path with every store file, the registry several pages."""
    from alerts.alarm_store import AlarmStore
    from desk.users import UserStore
    from ingest.store import Store
    from service.evaluation_store import EvaluationStore

    config = write_config(root)
    (root / "registry.json").write_text(json.dumps(population_document(200),
                                                   ensure_ascii=False))
    assert geofence("--config", str(config), "registry", "import",
                    str(root / "registry.json")).returncode == 0
    paths = EnginePaths(root / "data")
    for store in (Store(paths.fixes_db), AlarmStore(paths.alarms_db),
                  EvaluationStore(paths.worker_db(0, 1)), UserStore(paths.desk_db)):
        store.close()
    assert not list(paths.root.glob("*-wal"))   # every writer closed: whole files
    return config, paths


def break_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"\x00" * 100)


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage_pages(path: Path, first: int, count: int | None = None) -> None:
    """Overwrite pages first.. (1-based; to the end when `count` is None) with noise."""
    pages = path.stat().st_size // PAGE_BYTES
    last = pages if count is None else first + count - 1
    with open(path, "r+b") as f:
        for page in range(first, last + 1):
            f.seek((page - 1) * PAGE_BYTES)
            f.write(os.urandom(PAGE_BYTES))


def test_store_check_lists_every_file_sound(tmp_path):
    config, paths = make_storage(tmp_path)
    done = geofence("--config", str(config), "store", "check")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = ["alarms.sqlite", "evaluation-0-of-1.sqlite", "fixes.sqlite", "registry.sqlite",
             "desk.sqlite"]
    assert [line.split()[1] for line in lines[:-1]] == names
    assert all(line.startswith("ok ") for line in lines[:-1])
    assert lines[-1] == f"5 store file(s) in {paths.root}: all sound"


def test_store_check_names_each_damaged_file_and_exits_1(tmp_path):
    config, paths = make_storage(tmp_path)
    paths.retired(paths.worker_db(0, 1)).write_bytes(paths.worker_db(0, 1).read_bytes())
    break_header(paths.fixes_db)
    truncate(paths.alarms_db)
    garbage_pages(paths.registry_db, first=3, count=1)
    garbage_pages(paths.retired(paths.worker_db(0, 1)), first=2)
    for flag in ((), ("--quick",)):
        done = geofence("--config", str(config), "store", "check", *flag)
        assert done.returncode == 1, done.stderr
        by_name = {line.split()[1].rstrip(":"): line for line in done.stdout.splitlines()[:-1]}
        assert by_name["fixes.sqlite"].startswith("DAMAGED  fixes.sqlite: its header is not")
        assert by_name["alarms.sqlite"].startswith("DAMAGED  alarms.sqlite: it is truncated")
        assert by_name["registry.sqlite"].startswith("DAMAGED  registry.sqlite: ")
        assert by_name["evaluation-0-of-1.retired"].startswith("DAMAGED  evaluation-0-of-1.retired")
        assert by_name["evaluation-0-of-1.sqlite"].startswith("ok ")
        assert by_name["desk.sqlite"].startswith("ok ")
        assert done.stdout.splitlines()[-1].endswith("4 damaged")


def test_store_check_refuses_a_missing_storage_path(tmp_path):
    config = write_config(tmp_path)
    done = geofence("--config", str(config), "store", "check")
    assert done.returncode == 2
    assert done.stderr == f"geofence: error: storage path {tmp_path / 'data'} does not exist\n"


@pytest.mark.parametrize("damage", [break_header, pytest.param(truncate, marks=heavy)])
def test_serve_refuses_a_damaged_fixes_store_before_any_child_starts(tmp_path, damage):
    config, paths = make_storage(tmp_path)
    damage(paths.fixes_db)
    done = geofence("--config", str(config), "serve")
    assert done.returncode == 2
    assert done.stderr.startswith(f"geofence: error: {paths.fixes_db} is damaged (")
    assert "geofence restore" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not any(paths.pid_file(name).exists() for name in ("ingest", "worker-0",
                                                             "dispatcher"))


def test_damage_met_after_start_stops_the_engine_with_one_line(tmp_path):
    """Garbage in every registry page but the first: the header and schema read fine, so
    serve starts, and the children meet the damage when they load the registry."""
    config, paths = make_storage(tmp_path)
    garbage_pages(paths.registry_db, first=2)
    done = geofence("--config", str(config), "serve", timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("geofence: error")]
    assert errors == [f"geofence: error: a store file in {paths.root} is damaged ("
                      + errors[0].split(" is damaged (", 1)[1]]
    assert "geofence store check" in errors[0]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert "restarting" not in done.stderr       # stopped, not restarted
    assert "CRITICAL" in done.stderr             # the child's one log line

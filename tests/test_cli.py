"""The `geofence` command as a user runs it: exit codes, one-line errors, real output."""

import json
import subprocess
import sys

import pytest

from geofence.builtin import zaozhuang_geojson
from service.cli import main


@pytest.fixture(scope="module")
def zaozhuang_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("layer") / "zaozhuang.geojson"
    path.write_text(json.dumps(zaozhuang_geojson(), ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_locate_prints_the_chain_of_parents(zaozhuang_file, capsys):
    assert main(["locate", "--layer", zaozhuang_file, "117.3", "34.8"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("3704 枣庄市 > 3704")
    assert line.count(" > ") == 2


def test_locate_outside_every_jurisdiction_exits_1(zaozhuang_file, capsys):
    assert main(["locate", "--layer", zaozhuang_file, "120", "34.8"]) == 1
    assert "in no jurisdiction" in capsys.readouterr().out


def test_locate_converts_gcj02_input(zaozhuang_file, capsys):
    from geofence.datum import wgs84_to_gcj02

    lon, lat = wgs84_to_gcj02(117.3, 34.8)
    assert main(["locate", "--layer", zaozhuang_file, "--datum", "gcj02",
                 str(float(lon)), str(float(lat))]) == 0
    gcj = capsys.readouterr().out
    main(["locate", "--layer", zaozhuang_file, "117.3", "34.8"])
    assert gcj == capsys.readouterr().out


def test_layer_check_reports_counts_and_bounds(zaozhuang_file, capsys):
    assert main(["layer", "check", zaozhuang_file]) == 0
    out = capsys.readouterr().out
    assert "features: 66" in out and "bounds:" in out and "no overlaps or gaps" in out


def test_layer_check_json(zaozhuang_file, capsys):
    assert main(["layer", "check", "--json", zaozhuang_file]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["features"] == 66


def test_layer_check_exits_1_on_overlaps(tmp_path, capsys):
    square = [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]
    shifted = [[[1, 1], [3, 1], [3, 3], [1, 3], [1, 1]]]
    layer = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": c, "name": c},
         "geometry": {"type": "Polygon", "coordinates": g}}
        for c, g in (("a", square), ("b", shifted))]}
    path = tmp_path / "overlap.geojson"
    path.write_text(json.dumps(layer))
    assert main(["layer", "check", str(path)]) == 1
    assert "overlap" in capsys.readouterr().out


@pytest.mark.parametrize("content, reason", [
    (None, "cannot read layer"),
    ("not json", "cannot read layer"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", '
     '"properties": {"code": "x", "name": "x"}, "geometry": null}]}', "#0 (code 'x')"),
])
def test_bad_layer_file_gives_one_line_reason_and_exit_2(tmp_path, capsys, content, reason):
    path = tmp_path / "layer.geojson"
    if content is not None:
        path.write_text(content)
    assert main(["layer", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geofence: error: ") and reason in err
    assert err.count("\n") == 1


def test_locate_rejects_out_of_range_coordinates(zaozhuang_file, capsys):
    assert main(["locate", "--layer", zaozhuang_file, "200", "34"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_console_script_help_runs():
    done = subprocess.run([sys.executable, "-m", "service.cli", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout and "locate" in done.stdout


def test_keys_generate_writes_server_and_carrier_pairs(tmp_path, capsys):
    assert main(["keys", "generate", str(tmp_path / "k"), "--carrier", "cmcc"]) == 0
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == ["cmcc.key", "cmcc.key_secret", "server.key", "server.key_secret"]
    assert (tmp_path / "k" / "cmcc.key_secret").stat().st_mode & 0o077 == 0
    assert main(["keys", "generate", str(tmp_path / "k"), "--carrier", "cmcc"]) == 2


def test_registry_import_reports_every_problem_and_changes_nothing(tmp_path, capsys):
    config = tmp_path / "geofence.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "data"}"\n')
    bad = {"offices": [{"code": "370402001", "name": "x", "parent": "nowhere"}],
           "subjects": [{"id": "a", "devices": ["1"], "office": "370402001", "home": ["999"]},
                        {"id": "b", "devices": ["1"], "office": "zzz", "home": ["370402"]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["--config", str(config), "registry", "import", str(path)]) == 2
    err = capsys.readouterr().err
    for problem in ("unknown parent office", "999", "claimed by subjects a and b", "zzz"):
        assert problem in err
    assert main(["--config", str(config), "registry", "export"]) == 0
    assert json.loads(capsys.readouterr().out)["subjects"] == []


def test_a_bad_webhook_in_the_config_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "geofence.toml"
    config.write_text('[alerts.webhooks."370402001"]\nurl = "ftp://x"\nsecret = "s"\n')
    assert main(["--config", str(config), "registry", "export"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "370402001" in err and "url" in err


@pytest.mark.parametrize("argv", [
    ["simulate", "--rate", "-1"], ["simulate", "--rate", "nan"],
    ["simulate", "--linger", "-1"], ["simulate", "--locate-delay", "inf"],
    ["demo", "--locate-delay", "-2"],
    ["demo", "--subjects", "5"], ["locate", "--layer", "/nonexistent.geojson", "117", "34"],
    ["registry", "import", "/nonexistent.json"]])
def test_bad_input_is_one_line_and_a_nonzero_exit_never_a_traceback(argv, tmp_path):
    result = subprocess.run([sys.executable, "-m", "service.cli", *argv], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or "usage:" in result.stderr

"""The console script, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import LINCITY, SIMUTRANS


def auditoryhum(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("auditoryhum")
    env = {**os.environ, "COLUMNS": "400"}  # no wrapping of rich error panels
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env=env)


def test_label_prints_the_clips_labels():
    result = auditoryhum("label", str(LINCITY / "TraficHigh1.wav"))
    assert result.returncode == 0, result.stderr
    labels = result.stdout.strip().split(", ")
    assert "vehicle" in labels and all(l == l.lower() for l in labels)


def test_score_json_gives_every_label_for_every_path(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    paths = [str(LINCITY / "TraficHigh1.wav"), str(SIMUTRANS / "forest.wav")]
    result = auditoryhum("score", *paths, "--label", "car traffic", "--label", "birds singing", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == paths
    traffic, forest = ({s["label"]: s["score"] for s in r["scores"]} for r in rows)
    assert traffic["car traffic"] > traffic["birds singing"]
    assert forest["birds singing"] > forest["car traffic"]
    failed = auditoryhum("score", str(bad), "--label", "x")
    assert failed.returncode == 1 and "not readable" in failed.stderr


def test_run_rejects_a_missing_folder(tmp_path):
    result = auditoryhum("run", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.strip() == f"{tmp_path / 'nowhere'}: no such folder or file"


def test_invalid_settings_are_a_clear_error(tmp_path):
    result = auditoryhum("run", str(tmp_path), "--algorithm", "magic", "--review-fraction", "2")
    assert result.returncode == 2 and "invalid settings" in result.stderr
    assert "algorithm" in result.stderr and "review_fraction" in result.stderr and "Traceback" not in result.stderr

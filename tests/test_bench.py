"""``ksvc bench``: the harness's arithmetic and a short real run of the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ksvc_host import cli
from ksvc_host.bench.harness import Absent, Contender, Measurement, Report, Target


def test_ratios_and_targets_come_from_one_report() -> None:
    r = Report(out=io.StringIO())
    r.add(Measurement("W", "c", "fast", ops_per_s=300.0, p50_us=10.0))
    r.add(Measurement("W", "c", "slow", ops_per_s=100.0, p50_us=40.0))
    r.targets += [
        Target("3x", "W/c/fast", "W/c/slow", 3.0),
        Target("4x", "W/c/fast", "W/c/slow", 4.0),
        Target("latency", "W/c/fast", "W/c/slow", 4.0, metric="p50_us", lower_is_better=True),
        Target("absent", "W/c/fast", "W/c/nobody", 1.0),
    ]
    got = {t["description"]: (t["ratio"], t["met"]) for t in r.evaluate()}
    assert got == {"3x": (3.0, True), "4x": (3.0, False), "latency": (4.0, True), "absent": (None, None)}
    assert "MISS" in r.table() and "n/a" in r.table()


def test_absent_and_failing_contenders_do_not_stop_the_run() -> None:
    class Missing(Contender):
        name = "missing"

        def setup(self) -> None:
            raise Absent("pip install something")

    class Wrong(Contender):
        name = "wrong"

        def run(self, items: list[int], keep: bool) -> list[int] | None:
            return [i + 1 for i in items] if keep else None

    class Right(Wrong):
        name = "right"

        def run(self, items: list[int], keep: bool) -> list[int] | None:
            return list(items) if keep else None

    r = Report(out=io.StringIO())

    def check(items: list[int], got: list[int]) -> str | None:
        return None if got == list(items) else "differs"

    for c in (Missing(), Wrong(), Right()):
        r.measure("W", "c", c, list(range(100)), check, repeat=2)
    assert [(m.contender, m.status) for m in r.measurements] == [
        ("missing", "absent"), ("wrong", "failed"), ("right", "ok")]  # fmt: skip
    assert r.measurements[2].ops_per_s and r.measurements[2].extra["runs"] == 2


def test_cli_bench_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.json"
    assert cli.main(["bench", "w4", "--scale", "0.001", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    ok = [m for m in data["measurements"] if m["status"] == "ok"]
    assert {m["case"] for m in ok} == {"getpid", "getuid", "uname"}  # each equal to the direct call first
    assert data["machine"]["fast_path"] in ("native", "python")
    assert "W4 getpid" in capsys.readouterr().out
    assert cli.main(["bench", "--markdown-from", str(out)]) == 0
    assert "| os.getpid() |" in capsys.readouterr().out


def test_cli_bench_rejects_unknown_workloads(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "w9"]) == 2
    assert "unknown workload(s) w9; choose from w1, w2, w3, w4, w5, echo" in capsys.readouterr().err


def test_w1_checks_every_ksvc_contender_against_os_pread(tmp_path: Path) -> None:
    out = tmp_path / "w1.json"
    assert cli.main(["bench", "w1", "--scale", "0.003", "--dir", str(tmp_path), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    ksvc_rows = [m for m in data["measurements"] if m["contender"].startswith("ksvc")]
    names = {m["contender"] for m in ksvc_rows}
    assert {"ksvc pread_iter (default)", "ksvc asyncio pread_iter (default)", "ksvc batch (default)"} <= names
    # Each was compared with os.pread before it was timed: a wrong result would be "failed".
    assert all(m["status"] in ("ok", "absent") for m in ksvc_rows), [m for m in ksvc_rows if m["status"] != "ok"]
    assert any(m["status"] == "ok" and m["contender"] == "ksvc pread_iter (default)" for m in ksvc_rows)

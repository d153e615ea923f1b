"""``ksvc bench w6``: a tiny run produces every case's rows with numeric ratios (values are not checked)."""

from __future__ import annotations

import io
from pathlib import Path

from ksvc_host import bench
from ksvc_host.bench import w6_per_op as w6
from ksvc_host.bench.harness import Measurement, Report

CASES = (w6.CASE_LOOP, w6.CASE_TASKS, w6.CASE_TASKS_SERVER, w6.CASE_SHARED, w6.CASE_QD64)
NEEDS_SERVER = {w6.CASE_TASKS_SERVER, w6.CASE_QD64}


def test_w6_is_registered() -> None:
    assert bench.WORKLOADS["w6"][0] is w6.run
    assert "w6" in bench.DEFAULT


def test_w6_tiny_run_gives_a_numeric_ratio_per_case(tmp_path: Path) -> None:
    out = io.StringIO()
    report = Report(out=out)
    w6.run(report, directory=str(tmp_path), seconds=0.03, repeat=3)
    assert list(tmp_path.iterdir()) == []  # the data file and its directory are removed
    by_case: dict[str, list[Measurement]] = {}
    for m in report.measurements:
        assert m.workload == "W6"
        by_case.setdefault(m.case, []).append(m)
    assert set(by_case) == set(CASES)
    for case, ms in by_case.items():
        if case in NEEDS_SERVER and any(m.status == "absent" for m in ms):
            assert "skipped" in out.getvalue()  # the reason is printed
            continue
        assert [m.status for m in ms] == ["ok", "ok"], (case, [(m.contender, m.status, m.note) for m in ms])
        base, other = ms
        assert base.ops_per_s and base.ops_per_s > 0 and other.ops_per_s and other.ops_per_s > 0
        assert isinstance(report.ratio(other.key, base.key), float)
        assert other.extra["runs"] == 3 and "x-" in other.extra["ratio_range"] and other.extra["target"]
        if case == w6.CASE_SHARED:
            assert base.p99_us and other.p99_us and other.extra["p99_ratio"].endswith("x")
    targets = {t["description"]: t["ratio"] for t in report.evaluate()}
    assert len(targets) == 6
    for description, ratio in targets.items():
        if not any(case in description for case in NEEDS_SERVER):
            assert isinstance(ratio, float), description
    table = report.table()
    assert all(f"W6 {case}" in table for case in CASES) and "targets" in table

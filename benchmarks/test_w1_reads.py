"""W1 under pytest-benchmark: the same contenders as ``ksvc bench w1``, at queue depth 64.

    pip install './[bench]' ./plugins/ksvc-basic   # plus the server preset's plugins, if wanted
    pytest benchmarks/ --benchmark-columns=min,median,ops

Each benchmark reads the same 20 000 random offsets of one page-cached
64 MiB file. ``ksvc bench`` is the fuller report (every workload, ratios,
targets, JSON); this file lets the standard harness compare runs over time
(``--benchmark-autosave``, ``--benchmark-compare``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ksvc_host.bench import w1_reads
from ksvc_host.bench.harness import Absent, Contender

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed (pip install './[bench]')")

OPS = 20_000


@pytest.fixture(scope="module")
def data() -> Iterator[w1_reads.Data]:
    d = w1_reads.Data(OPS)
    yield d
    d.close()


def _names() -> list[str]:
    d = w1_reads.Data(1)
    try:
        return [c.name for c in w1_reads.contenders(d, 64)]
    finally:
        d.close()


@pytest.mark.parametrize("name", _names())
def test_w1_qd64(benchmark, data: w1_reads.Data, name: str) -> None:  # type: ignore[no-untyped-def]
    contender: Contender = next(c for c in w1_reads.contenders(data, 64) if c.name == name)
    try:
        contender.setup()
    except Absent as exc:
        pytest.skip(str(exc))
    try:
        sample = data.offsets[:500]
        assert data.check(sample, contender.run(sample, True) or []) is None
        data.warm()
        benchmark.pedantic(contender.run, args=(data.offsets, False), rounds=3, iterations=1)
    finally:
        contender.teardown()

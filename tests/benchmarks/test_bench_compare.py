"""benchmarks/compare.py, through its ``_comparison``: the ABBA order, the ratios and medians,
reading the benchmarks' JSON reports, and that nothing a benchmark started outlives it."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from benchmarks import _comparison as compare


def test_rounds_alternate_abba() -> None:
    orders = [compare.round_order(n) for n in range(1, 5)]
    assert orders == [("base", "head"), ("head", "base"), ("base", "head"), ("head", "base")]
    assert sum(order[0] == "base" for order in orders) == 2  # each side first equally often


def test_summary_gives_ratios_per_round_and_their_median() -> None:
    cpu = compare.ACTIVATION_METRICS[0]
    rounds = [
        {"base": {cpu.key: 1.0}, "head": {cpu.key: 1.1}},
        {"base": {cpu.key: 2.0}, "head": {cpu.key: 1.0}},
        {"base": {cpu.key: 1.0}, "head": {cpu.key: 0.9}},
    ]
    summary = compare.summarise(cpu, rounds)
    assert summary.base == [1.0, 2.0, 1.0]
    assert summary.head == [1.1, 1.0, 0.9]
    assert summary.ratios == pytest.approx([1.1, 0.5, 0.9])
    # The median of the ratios, not the ratio of the medians (1.0 / 1.0).
    assert summary.median_ratio == pytest.approx(0.9)
    assert (summary.median_base, summary.median_head) == (1.0, 1.0)


def test_ratio_against_zero_is_not_a_number() -> None:
    assert math.isnan(compare.ratio(1.0, 0.0))


def test_report_is_read_after_stray_lines() -> None:
    report = {"errors": 0, "coordinator_cpu_ms_per_activation": 1.5, "activations_per_s": 900}
    stdout = "a warning\n" + json.dumps(report, indent=2) + "\n"
    assert compare.read_activation(compare.parse_report(stdout)) == {
        "coordinator_cpu_ms_per_activation": 1.5,
        "activations_per_s": 900.0,
    }
    with pytest.raises(compare.CompareError, match="no JSON"):
        compare.parse_report("Traceback (most recent call last):\n")


def test_failed_activations_are_a_failure() -> None:
    report = {"errors": 2, "error_samples": ["ActivationFailed: HTTP 500"]}
    with pytest.raises(compare.CompareError, match="2 activations failed: ActivationFailed"):
        compare.read_activation(report)


def test_dataplane_values_come_from_path_c() -> None:
    c = {
        "path": "c",
        "status": "ok",
        "requests_per_s": 14000.0,
        "cpu_us_per_request": {"egress": 26.0, "ingress": 39.0, "app": 40.0},
    }
    report = {"paths": [{"path": "a", "status": "ok"}, c]}
    assert compare.read_dataplane(report) == {
        "egress_cpu_us_per_request": 26.0,
        "ingress_cpu_us_per_request": 39.0,
        "requests_per_s": 14000.0,
    }
    assert set(compare.read_dataplane(report)) == {m.key for m in compare.DATAPLANE_METRICS}
    failed = {**c, "status": "failed", "note": "exited during the run: ingress"}
    with pytest.raises(compare.CompareError, match="exited during the run: ingress"):
        compare.read_dataplane({"paths": [failed]})


def test_nothing_a_benchmark_started_outlives_it() -> None:
    # The leader exits on SIGTERM; the child it left behind is in its group and is stopped too.
    process = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True, text=True
    )
    compare.stop_group(process)
    assert process.returncode is not None
    assert compare.group_members(process.pid) == []

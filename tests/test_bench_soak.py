"""bench.soak's pure helpers: /proc and /metrics parsing, the report line, the verdict, flags.

No server is started and nothing is timed: the soak itself prints figures, never verdicts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from bench import soak


def test_proc_status_of_this_process_gives_rss_and_threads() -> None:
    """VmRSS is converted from kB to bytes; Threads is read as an integer."""
    fields = soak.parse_proc_status(Path("/proc/self/status").read_text())
    assert fields["rss_bytes"] > 0
    assert fields["rss_bytes"] % 1024 == 0
    assert fields["threads"] >= 1


def test_proc_status_parser_reads_the_fields_it_needs_and_refuses_their_absence() -> None:
    text = "Name:\tpython3\nVmRSS:\t   2048 kB\nThreads:\t7\nVmHWM:\t 4096 kB\n"
    assert soak.parse_proc_status(text) == {"rss_bytes": 2048 * 1024, "threads": 7}
    with pytest.raises(ValueError, match="Threads"):
        soak.parse_proc_status("VmRSS:\t 1 kB\n")


def test_read_proc_counts_this_process_descriptors() -> None:
    """One more open file is one more entry in /proc/PID/fd."""
    before = soak.read_proc(os.getpid())
    with open(__file__, "rb"):
        during = soak.read_proc(os.getpid())
    assert during.fds == before.fds + 1
    assert during.threads >= 1
    assert during.rss_bytes > 0


METRICS = """\
# HELP turnd_allocations Live allocations, by client transport and relay protocol.
# TYPE turnd_allocations gauge
turnd_allocations{relay="udp",transport="udp"} 3.0
turnd_allocations{relay="udp",transport="tcp"} 2.0
# TYPE turnd_client_connections gauge
turnd_client_connections{transport="tcp"} 2.0
turnd_allocations_ended_total{reason="expired"} 5.0
turnd_allocations_ended_total{reason="deleted"} 7.0
turnd_binding_requests_total 11.0
turnd_drops_total{reason="say \\"hi\\""} 1.0
"""


def test_metrics_parser_keeps_every_series_by_its_labels() -> None:
    families = soak.parse_metrics(METRICS)
    assert families["turnd_allocations"] == {
        (("relay", "udp"), ("transport", "udp")): 3.0,
        (("relay", "udp"), ("transport", "tcp")): 2.0,
    }
    assert families["turnd_binding_requests_total"] == {(): 11.0}
    assert families["turnd_drops_total"] == {(("reason", 'say \\"hi\\"'),): 1.0}


def test_metric_totals_and_label_sums() -> None:
    families = soak.parse_metrics(METRICS)
    assert soak.metric_total(families, "turnd_allocations") == 5.0
    assert soak.metric_total(families, "absent") == 0.0
    assert soak.metric_by(families, "turnd_allocations", "transport") == {"udp": 3.0, "tcp": 2.0}
    assert soak.metric_by(families, "turnd_allocations_ended_total", "reason") == {
        "expired": 5.0,
        "deleted": 7.0,
    }


def sample(**changes: Any) -> soak.Sample:
    base = soak.Sample(
        elapsed=12.34,
        phase="churn",
        allocations=1234,
        connections=56,
        rss_bytes=64 << 20,
        fds=99,
        threads=5,
        tasks=None,
        allocations_made=4321,
        packets_sent=10_000,
        packets_echoed=9_998,
        errors=2,
    )
    return attrs.evolve(base, **changes)


def test_sample_line_lines_up_with_the_header_and_shows_unknown_tasks_as_na() -> None:
    line = soak.format_sample(sample())
    header = soak.format_header()
    assert len(line) == len(header)
    assert line.split() == [
        "12.3",
        "churn",
        "1,234",
        "56",
        "64.0",
        "99",
        "5",
        "n/a",
        "4,321",
        "9,998/10,000",
        "2",
    ]
    assert soak.format_sample(sample(tasks=17)).split()[7] == "17"


def test_verdict_compares_final_with_baseline_in_figures() -> None:
    baseline = sample(elapsed=10.0, phase="baseline", allocations=0, fds=20, allocations_made=100)
    peak = sample(elapsed=20.0, allocations=40, fds=120, rss_bytes=70 << 20)
    final = sample(
        elapsed=30.0,
        phase="final",
        allocations=0,
        fds=20,
        rss_bytes=(64 << 20) + 512 * 1024,
        allocations_made=2100,
    )
    lines = soak.verdict(baseline, final, [baseline, peak, final])
    assert "fds back to baseline: yes (20→20)" in lines
    assert "threads back to baseline: yes (5→5)" in lines
    rss = next(line for line in lines if line.startswith("RSS"))
    assert "growth per 1000 allocations: +256.0 KiB" in rss
    assert "2,000 allocations since baseline" in rss
    assert any("40 allocations, 120 fds, 70.0 MiB" in line for line in lines)

    leaky = soak.verdict(baseline, attrs.evolve(final, fds=23), [baseline, final])
    assert "fds back to baseline: no (20→23)" in leaky


def test_verdict_reports_tasks_when_exported_and_says_why_not_otherwise() -> None:
    baseline = sample(tasks=6)
    assert "asyncio tasks back to baseline: yes (6→6)" in soak.verdict(baseline, baseline, [])
    grown = attrs.evolve(baseline, tasks=9)
    assert "asyncio tasks back to baseline: no (6→9)" in soak.verdict(baseline, grown, [])
    unknown = sample()
    assert any("no turnd_tasks gauge" in line for line in soak.verdict(unknown, unknown, []))


def test_metric_int_is_none_only_when_the_metric_is_missing() -> None:
    families = {"turnd_tasks": {(): 7.0}}
    assert soak.metric_int(families, "turnd_tasks") == 7
    assert soak.metric_int(families, "turnd_other") is None


def test_verdict_without_allocations_gives_no_per_allocation_figure() -> None:
    idle = sample(allocations_made=0)
    assert any("n/a (no allocations)" in line for line in soak.verdict(idle, idle, [idle]))


def test_counts_are_listed_largest_first_and_zeros_dropped() -> None:
    assert soak.format_counts({"a": 1, "b": 3, "c": 0}) == "b 3, a 1"
    assert soak.format_counts({}) == "none"


def test_options_parse_the_transports_and_refuse_unknown_ones() -> None:
    options = soak.parse_options(["--transports", "udp, tls", "--seconds", "5"])
    assert options.transports == ("udp", "tls")
    assert options.seconds == 5.0
    assert options.json_path is None
    with pytest.raises(SystemExit):
        soak.parse_options(["--transports", "udp,sctp"])

"""bench.compare's pure helpers: statistics, the table, the JSON file, the /proc readers, flags.

No server is started and nothing is timed: the benchmark itself prints figures, never verdicts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from bench import compare
from bench.compare import loads, procfs, report, servers


def test_percentile_interpolates_between_ranks() -> None:
    """p50 of 1..100 lies between 50 and 51; p0 and p100 are the extremes; order is ignored."""
    samples = [float(n) for n in range(100, 0, -1)]
    assert compare.percentile(samples, 50) == 50.5
    assert compare.percentile(samples, 0) == 1.0
    assert compare.percentile(samples, 100) == 100.0
    assert math.isclose(compare.percentile(samples, 99) or 0.0, 99.01)


def test_percentile_of_one_sample_is_that_sample_and_of_none_is_none() -> None:
    assert compare.percentile([7.0], 99) == 7.0
    assert compare.percentile([], 50) is None


def test_ratio_and_per_refuse_missing_or_zero_denominators() -> None:
    assert compare.ratio(4.0, 2.0) == 2.0
    assert compare.ratio(None, 2.0) is None
    assert compare.ratio(4.0, None) is None
    assert compare.ratio(4.0, 0.0) is None
    assert compare.per(3.0, 2, 1e6) == 1.5e6
    assert compare.per(3.0, 0) is None


def test_format_number_keeps_sensible_digits() -> None:
    assert compare.format_number(None) == "-"
    assert compare.format_number(float("nan")) == "-"
    assert compare.format_number(12345.6) == "12,346"
    assert compare.format_number(123.4) == "123"
    assert compare.format_number(12.34) == "12.3"
    assert compare.format_number(1.234) == "1.23"


def test_table_groups_rows_and_shows_the_turnd_over_coturn_ratio() -> None:
    rows = [
        compare.Row("CPU", "UDP channels", "µs/pkt", "lower", {"turnd": 20.0, "coturn": 10.0}),
        compare.Row("CPU", "TCP channels", "µs/pkt", "lower", {"turnd": 30.0, "coturn": None}),
        compare.Row("Rate", "pkt/s", "pkt/s", "higher", {"turnd": 1.0, "coturn": 4.0}, "a note"),
    ]
    text = compare.format_table(rows)
    lines = text.splitlines()
    assert lines[0] == "CPU"
    assert "turnd/coturn" in lines[1]
    udp = next(line for line in lines if "UDP channels" in line)
    assert udp.split()[-3:] == ["2.00", "-", "lower"]
    tcp = next(line for line in lines if "TCP channels" in line)
    assert tcp.split()[-6:] == ["30.0", "-", "-", "-", "-", "lower"]
    assert "Rate" in lines and "    a note" in lines
    assert compare.format_table([]) == "(no figures)"


def test_table_has_a_fast_path_column_its_ratio_and_n_a_where_it_is_not_run() -> None:
    rows = [
        compare.Row(
            "CPU",
            "UDP channels",
            "µs/pkt",
            "lower",
            {"turnd": 20, "turnd+fastpath": 2, "coturn": 10},
        ),
        compare.Row(
            "CPU",
            "TCP channels",
            "µs/pkt",
            "lower",
            {"turnd": 30, "coturn": 10},
            "",
            ("turnd+fastpath",),
        ),
    ]
    lines = compare.format_table(rows).splitlines()
    assert lines[1].split()[1:] == [
        "turnd", "turnd+fastpath", "coturn", "turnd/coturn", "fastpath/coturn", "better"
    ]  # fmt: skip
    udp = next(line for line in lines if "UDP channels" in line)
    assert udp.split()[-6:] == ["20.0", "2.00", "10.0", "2.00", "0.20", "lower"]
    tcp = next(line for line in lines if "TCP channels" in line)
    assert tcp.split()[-6:] == ["30.0", "n/a", "10.0", "3.00", "n/a", "lower"]
    without = compare.format_table(rows, ["turnd", "coturn"]).splitlines()
    assert "turnd+fastpath" not in without[1] and "fastpath/coturn" not in without[1]
    entry = compare.table_entry(rows[1])
    assert entry["ratio"] == 3.0 and entry["ratios"] == {"turnd": 3.0}
    assert compare.table_entry(rows[0])["ratios"] == {"turnd": 2.0, "turnd+fastpath": 0.2}


def _results() -> dict[str, dict[str, object]]:
    level = {"allocations": 1000, "achieved": 1000, "bytes_per_allocation": 3000.0, "failures": {}}
    capped = {
        "allocations": 20000,
        "achieved": 19800,
        "bytes_per_allocation": 2900.0,
        "failures": {},
        "capped": "measured at 19,800: open-file limit 20000 at 1.00 per allocation",
    }
    return {
        "turnd": {
            "cpu": {"udp-channel": {"cpu_us_per_relayed_packet": 20.0, "server_cpu_s": 0.5}},
            "rate": {"best_pps": 24000, "limited_by": "server", "steps": []},
            "binding": {"answers_per_s": 30000.0, "client_cpu_percent": 90.0},
            "rss": {"levels": [level, capped], "port_range_reason": "relay ports 1-2"},
        },
        "coturn": {
            "cpu": {"udp-channel": {"cpu_us_per_relayed_packet": 10.0, "server_cpu_s": 0.2}},
            "rate": {"best_pps": 32000, "limited_by": "generator", "steps": []},
            "rss": {"levels": [dict(level, bytes_per_allocation=22000.0)]},
        },
    }


def test_rows_carry_both_figures_and_say_where_a_figure_is_only_a_floor() -> None:
    rows = {(row.group.split()[0], row.label): row for row in compare.build_rows(_results())}
    cpu = rows[("Server", "UDP channels: server process")]
    assert cpu.values == {"turnd": 20.0, "turnd+fastpath": None, "coturn": 10.0}
    assert cpu.better == "lower"
    rate = next(row for key, row in rows.items() if key[0] == "Highest")
    assert rate.values == {"turnd": 24000, "turnd+fastpath": None, "coturn": 32000}
    assert "coturn: a floor" in rate.note
    binding = next(row for key, row in rows.items() if key[1] == "answers per second")
    assert "saturated" in binding.note
    rss = {key[1]: row for key, row in rows.items() if key[0] == "RSS"}
    assert rss["1,000 allocations"].values == {
        "turnd": 3000.0,
        "turnd+fastpath": None,
        "coturn": 22000.0,
    }
    assert rss["20,000 allocations"].values == {
        "turnd": 2900.0,
        "turnd+fastpath": None,
        "coturn": None,
    }
    assert "measured at 19,800" in rss["20,000 allocations"].note
    assert not any(key[1].startswith("TLS") for key in rows), "rows without figures are left out"


def test_explain_reports_the_clock_tick_error_of_the_smallest_sample() -> None:
    lines = compare.explain(_results())
    assert any("20 ticks" in line for line in lines)
    assert any("relay ports 1-2" in line for line in lines)


def test_json_is_strict_nan_becomes_null_and_tuples_lists(tmp_path: Path) -> None:
    path = compare.write_json(
        tmp_path / "deep" / "out.json", {"a": float("nan"), "b": (1, 2), "c": {3: float("inf")}}
    )
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2], "c": {"3": None}}


def test_default_json_path_is_under_bench_results_with_a_timestamp() -> None:
    path = compare.default_json_path(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert path.parent.name == "results"
    assert path.parent.parent.name == "bench"
    assert path.name == "compare-20260102T030405Z.json"


def test_proc_readers_read_this_process() -> None:
    pid = os.getpid()
    assert compare.cpu_seconds(pid) >= 0.0
    assert compare.rss_bytes(pid) > 1 << 20
    assert sum(compare.thread_names(pid).values()) >= 1
    assert compare.open_files(pid) >= 3


def test_udp_drops_lists_a_bound_socket_by_its_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert compare.udp_drops()[port] == 0


def test_parse_udp_drops_sums_the_last_column_per_local_port() -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
    row = "{n}: 0100007F:{port:04X} 00000000:0000 07 00000000:00000000 00:00000000 00000000"
    row += " 0 0 1 2 0 {d}"
    text = "\n".join(
        [
            header,
            row.format(n=1, port=5000, d=3),
            row.format(n=2, port=5000, d=4),
            row.format(n=3, port=6000, d=0),
            "short line",
        ]
    )
    assert compare.parse_udp_drops(text) == {5000: 7, 6000: 0}


def test_quick_flags_choose_small_loads_and_only_narrows_the_metrics() -> None:
    options, metrics, servers, path = compare.parse_options(["--quick"])
    assert options.quick and options.allocations == (1000,)
    assert options.seconds == 1.0
    assert metrics == list(compare.METRICS)
    assert servers == ["turnd", "turnd+fastpath", "coturn"]
    assert path is None
    argv = "--only rss --only cpu --allocations 10,20 --server turnd --rss-port-range 10000-10100"
    options, metrics, servers, path = compare.parse_options([*argv.split(), "--json", "x.json"])
    assert metrics == ["rss", "cpu"]
    assert options.allocations == (10, 20)
    assert options.rss_port_range == (10000, 10100)
    assert servers == ["turnd"]
    assert path == Path("x.json")


def test_rss_range_widens_only_when_the_default_cannot_hold_the_largest_level() -> None:
    small, _, _, _ = compare.parse_options(["--allocations", "1000,16384"])
    assert compare.rss_port_range(small)[0] == compare.DEFAULT_PORT_RANGE
    large, _, _, _ = compare.parse_options(["--allocations", "20000"])
    port_range, why = compare.rss_port_range(large)
    assert port_range == compare.WIDE_PORT_RANGE
    assert "do not fit the default" in why


def test_client_addresses_never_repeat_and_avoid_127_0_0_1() -> None:
    addresses = compare.client_addresses()
    first = [next(addresses) for _ in range(70000)]
    assert first[0] == ("127.0.0.2", 1024)
    assert len(set(first)) == len(first)
    assert all(host != "127.0.0.1" for host, _ in first)


def test_median_of_rounds_takes_each_number_s_median_and_the_first_round_s_rest() -> None:
    """--rounds: numbers at the same place in each round become their median; text, flags and
    lists come from the first round; a round missing a figure does not count for it."""
    rounds = [
        {"turnd": {"cpu": {"us": 20.0, "sent": 10, "ok": True, "kind": "a"}}},
        {"turnd": {"cpu": {"us": 14.0, "sent": 30, "ok": False, "kind": "b"}}},
        {"turnd": {"cpu": {"us": 16.0, "kind": "c"}}},
    ]
    merged = compare.median_of(rounds)
    assert merged == {"turnd": {"cpu": {"us": 16.0, "sent": 20, "ok": True, "kind": "a"}}}
    assert compare.median_of([rounds[0]]) == rounds[0]


def test_median_of_rounds_leaves_out_a_round_whose_load_failed() -> None:
    """A load that failed in the first round only still gets the other rounds' median."""
    rounds = [
        {"coturn": {"udp-send": {"error": "RuntimeError: 437"}}},
        {"coturn": {"udp-send": {"us": 10.0}}},
        {"coturn": {"udp-send": {"us": 12.0}}},
    ]
    assert compare.median_of(rounds) == {"coturn": {"udp-send": {"us": 11.0}}}
    failed = [{"x": {"error": "a"}}, {"x": {"error": "b"}}]
    assert compare.median_of(failed) == {"x": {"error": "a"}}


def _fastpath_results() -> dict[str, dict[str, object]]:
    """Results of a run with the fast path: turnd+fastpath has UDP channel loads only."""
    results = _results()
    udp = {
        "cpu_us_per_relayed_packet": 0.1,
        "cpu_bpf_us_per_relayed_packet": 0.7,
        "host_us_per_relayed_packet": 0.2,
        "host_over_direct_us_per_relayed_packet": 1.5,
        "server_cpu_s": 0.01,
        "kernel_packets_to_peer": 60000,
        "kernel_packets_to_client": 59990,
        "kernel_relayed_packets_to_peer": 60000,
        "kernel_relayed_packets_to_client": 59990,
        "other_bpf_runs": 12,
        "other_bpf_cpu_s": 0.001,
    }
    results["turnd+fastpath"] = {
        "cpu": {"udp-channel": udp},
        "rate": {"best_pps": 64000, "limited_by": "generator", "steps": []},
    }
    for name, value in (("turnd", 22.0), ("coturn", 14.0)):
        cpu = results[name]["cpu"]
        assert isinstance(cpu, dict)
        cpu["udp-channel"] |= {"cpu_bpf_us_per_relayed_packet": value - 2}
        cpu["tcp-channel"] = {"cpu_us_per_relayed_packet": value, "host_us_per_relayed_packet": 9}
    return results


def test_fast_path_rows_carry_every_cpu_figure_and_n_a_where_it_is_not_run() -> None:
    rows = {row.label: row for row in compare.build_rows(_fastpath_results())}
    process = rows["UDP channels: server process"]
    assert process.values == {"turnd": 20.0, "turnd+fastpath": 0.1, "coturn": 10.0}
    assert not process.not_applicable
    assert "fast path program relayed 60,000 to peers, 59,990 to clients" in process.note
    bpf = rows["UDP channels (a) +BPF program"]
    assert bpf.values == {"turnd": 20.0, "turnd+fastpath": 0.7, "coturn": 12.0}
    assert rows["UDP channels (b) host-gen-peer"].values["turnd+fastpath"] == 0.2
    tcp = rows["TCP channels (b) host-gen-peer"]
    assert tcp.values == {"turnd": 9, "turnd+fastpath": None, "coturn": 9}
    assert tcp.not_applicable == ("turnd+fastpath",)  # TCP channels: not run
    assert rows["UDP channels (c) host over direct"].values["turnd+fastpath"] == 1.5
    assert "TCP channels (c) host over direct" not in rows  # no figure: no row
    assert rows["TCP channels: server process"].not_applicable == ("turnd+fastpath",)
    assert rows["answers per second"].not_applicable == ("turnd+fastpath",)
    assert rows["1,000 allocations"].not_applicable == ("turnd+fastpath",)
    rate = rows["client packets per second"]
    assert rate.values["turnd+fastpath"] == 64000 and "turnd+fastpath: a floor" in rate.note
    assert not rate.not_applicable
    lines = compare.format_table(list(rows.values())).splitlines()
    line = next(line for line in lines if "UDP channels (a)" in line)
    assert line.split()[-6:] == ["20.0", "0.70", "12.0", "1.67", "0.06", "lower"]


def test_without_the_fast_path_no_row_says_n_a() -> None:
    assert not any(row.not_applicable for row in compare.build_rows(_results()))


def test_explain_says_what_each_cpu_figure_counts_and_warns_of_other_programs() -> None:
    lines = compare.explain(_fastpath_results(), irq_time=False)
    assert any("(a) that plus the run_time_ns" in line for line in lines)
    assert any("no CONFIG_IRQ_TIME_ACCOUNTING" in line for line in lines)
    assert any("other turnd_relay programs ran 12 times" in line for line in lines)
    quiet = _fastpath_results()
    quiet["turnd+fastpath"]["cpu"]["udp-channel"]["other_bpf_runs"] = 0  # type: ignore[index]
    by_round = compare.explain(quiet, rounds=[quiet, _fastpath_results()])
    assert any(
        line.startswith("round 2 turnd+fastpath cpu udp-channel: other") for line in by_round
    )
    assert not any(line.startswith("round 1") for line in by_round)
    assert not any("IRQ_TIME" in line for line in compare.explain(_results(), irq_time=True))


def test_per_packet_figures_add_the_bpf_time_and_subtract_the_direct_load() -> None:
    figures = {
        "server_cpu_s": 0.2,
        "server_bpf_cpu_s": 0.3,
        "host_cpu_s": 0.5,
        "tenants_cpu_s": 0.1,
        "host_own_cpu_s": 0.8,
        "direct_host_own_cpu_s": 0.4,
    }
    out = loads.per_packet(figures, 100_000)
    assert out == pytest.approx(
        {
            "cpu_us_per_relayed_packet": 2.0,
            "cpu_bpf_us_per_relayed_packet": 3.0,
            "host_us_per_relayed_packet": 5.0,
            "host_own_us_per_relayed_packet": 4.0,
            "host_over_direct_us_per_relayed_packet": 4.0,
        }
    )
    del figures["direct_host_own_cpu_s"], figures["tenants_cpu_s"]
    assert set(loads.per_packet(figures, 10)) == {
        "cpu_us_per_relayed_packet",
        "cpu_bpf_us_per_relayed_packet",
        "host_us_per_relayed_packet",
    }


def test_kernel_relayed_is_the_counters_difference_and_nothing_without_a_fast_path() -> None:
    before = {"active": True, "packets_to_peer": 5, "packets_to_client": 1}
    before |= {"relayed_packets_to_peer": 4, "relayed_packets_to_client": 1}
    after = {"active": True, "packets_to_peer": 105, "packets_to_client": 51}
    after |= {"relayed_packets_to_peer": 104, "relayed_packets_to_client": 50}
    assert loads.kernel_relayed(before, after) == {
        "kernel_packets_to_peer": 100,
        "kernel_relayed_packets_to_peer": 100,
        "kernel_packets_to_client": 50,
        "kernel_relayed_packets_to_client": 49,
    }
    assert loads.kernel_relayed(None, None) == {}
    assert loads.kernel_relayed({"active": False}, {"active": False}) == {}


def test_turnd_config_says_the_fast_path_mode_explicitly() -> None:
    """The default is "auto": the userspace figures must say "off" to stay userspace."""
    off = tomllib.loads(servers.turnd_extra((1000, 2000), 10, "off"))
    assert off["fastpath"] == {"mode": "off"}
    assert off["relay"] == {"port_min": 1000, "port_max": 2000}
    on = tomllib.loads(servers.turnd_extra((1000, 2000), 10, "on"))
    assert on["fastpath"] == {"mode": "on"}
    assert compare.SERVERS == ("turnd", "turnd+fastpath", "coturn")


def test_only_and_server_take_comma_separated_lists() -> None:
    _, metrics, chosen, _ = compare.parse_options(["--only", "cpu,uclient,rate,rtt"])
    assert metrics == ["cpu", "uclient", "rate", "rtt"]
    assert chosen == ["turnd", "turnd+fastpath", "coturn"]
    _, metrics, chosen, _ = compare.parse_options(
        ["--only", "rtt", "--only", "cpu,rtt", "--server", "coturn,turnd"]
    )
    assert metrics == ["rtt", "cpu"]
    assert chosen == ["turnd", "coturn"]
    assert compare.parse_options(["--server", "both"])[2] == list(compare.SERVERS)
    with pytest.raises(SystemExit):
        compare.parse_options(["--only", "cpu,nonsense"])


def test_the_fast_path_is_not_measured_under_loads_it_does_not_relay(tmp_path: Path) -> None:
    """Binding, allocations and RSS do not start a turnd+fastpath at all."""
    options, _, _, _ = compare.parse_options(["--quick"])
    peer = compare.EchoPeer(("127.0.0.1", 9), 0, "none", lambda: None)
    metrics = ["binding", "allocations", "rss"]
    assert compare.measure_server("turnd+fastpath", peer, tmp_path, options, metrics) == {}
    assert set(loads.FASTPATH_METRICS) == {"cpu", "uclient", "rate", "rtt"}
    assert loads.FASTPATH_TRANSPORTS == (("udp", "channel"),)


def test_parse_proc_stat_sums_the_busy_columns() -> None:
    tick = procfs.CLK_TCK
    text = f"cpu  {tick} {2 * tick} {3 * tick} 1000 7 {4 * tick} {5 * tick} 9 0 0\ncpu0 1 1 1 1"
    seconds = procfs.parse_proc_stat(text)
    assert seconds["busy"] == 15.0  # user nice system irq softirq; not idle, iowait or steal
    assert seconds["softirq"] == 5.0
    assert procfs.host_cpu()["busy"] > 0


def test_parse_fdinfo_and_this_process_holds_no_bpf_program() -> None:
    info = procfs.parse_fdinfo("pos:\t0\nprog_id:\t405\nrun_time_ns:\t1234\nrun_cnt:\t7\n")
    assert (info["prog_id"], info["run_time_ns"], info["run_cnt"]) == ("405", "1234", "7")
    assert procfs.bpf_programs(os.getpid()) == {}
    assert procfs.own_cpu_seconds() >= compare.cpu_seconds(os.getpid())


def test_meter_reads_every_cpu_figure_of_this_process() -> None:
    figures = procfs.Meter(os.getpid()).read()
    assert figures["bpf_cpu_s"] == 0.0 and figures["bpf_runs"] == 0
    assert figures["server_bpf_cpu_s"] == figures["server_cpu_s"]
    assert figures["peer_cpu_s"] == 0.0
    assert figures["host_cpu_s"] == figures["host_busy_cpu_s"] - figures["client_cpu_s"]
    assert "other_bpf_runs" not in figures and "tenants_cpu_s" not in figures  # thorough only
    thorough = procfs.Meter(os.getpid(), thorough=True).read()
    assert thorough["host_own_cpu_s"] == thorough["host_busy_cpu_s"] - thorough["tenants_cpu_s"]


def test_tenants_are_every_user_process_but_the_bench_and_its_children() -> None:
    text = "42 (a b) S 7 42 42 0 -1 2097216 0 0 0 0 250 150 0 0 20 0 1 0"
    assert procfs.parse_stat(text) == (7, 2097216, 400 / procfs.CLK_TCK)
    with subprocess.Popen(["sleep", "5"]) as child:
        tenants = procfs.tenant_cpu(os.getpid())
        child.kill()
    assert os.getpid() not in tenants and child.pid not in tenants
    assert os.getppid() in tenants  # pytest's parent is another process
    kernel_threads = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # a process gone meanwhile
            if procfs.parse_stat(Path(f"/proc/{entry}/stat").read_text())[1] & procfs.PF_KTHREAD:
                kernel_threads.append(int(entry))
    assert kernel_threads and not set(kernel_threads) & set(tenants)  # left in the host's own


def test_bpf_stats_are_switched_on_for_the_block_and_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysctl = tmp_path / "bpf_stats_enabled"
    sysctl.write_text("0\n")
    monkeypatch.setattr(procfs, "STATS_SYSCTL", sysctl)
    with procfs.bpf_stats() as why:
        assert why == "" and sysctl.read_text() == "1\n"
    assert sysctl.read_text() == "0\n"
    monkeypatch.setattr(procfs, "STATS_SYSCTL", tmp_path / "missing" / "x")
    with procfs.bpf_stats() as why:
        assert "could not be set" in why


def test_spread_gives_each_server_s_lowest_and_highest_round_for_fast_path_rows() -> None:
    rounds = [_fastpath_results(), _fastpath_results()]
    rounds[1]["coturn"]["cpu"]["udp-channel"]["cpu_us_per_relayed_packet"] = 16.0  # type: ignore[index]
    rows = compare.build_rows(compare.median_of(rounds))
    lines = compare.spread(rounds, rows)
    process = next(line for line in lines if "UDP channels: server process" in line)
    assert process == (
        "  UDP channels: server process (µs/pkt): turnd 20.0-20.0, turnd+fastpath 0.10-0.10, "
        "coturn 10.0-16.0"
    )
    assert not any("TCP" in line or "allocations" in line for line in lines)  # n/a rows


def test_workers_make_a_pass_at_one_and_at_n_and_coturn_follows() -> None:
    options, *_ = compare.parse_options(["--workers", "4"])
    assert options.passes == (1, 4)
    assert options.threads("turnd") == options.threads("coturn") == 1  # the first pass
    four = attrs.evolve(options, workers=4)
    assert four.threads("turnd") == four.threads("coturn") == 4
    options, *_ = compare.parse_options(["--workers", "4", "--coturn-relay-threads", "2"])
    assert attrs.evolve(options, workers=4).threads("coturn") == 2
    assert compare.parse_options([])[0].passes == (1,)


def test_the_server_family_is_a_process_and_its_descendants() -> None:
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            assert set(procfs.family(os.getpid())) >= {os.getpid(), child.pid}
            assert procfs.family(child.pid) == [child.pid]
            assert procfs.family_cpu_seconds(os.getpid()) >= procfs.cpu_seconds(os.getpid())
            assert procfs.family_rss_bytes(os.getpid()) > procfs.rss_bytes(os.getpid())
        finally:
            child.kill()


def test_scaling_divides_each_throughput_row_of_the_n_pass_by_the_one_pass() -> None:
    def one_pass(turnd: float, coturn: float) -> dict[str, Any]:
        row = report.Row(
            "Highest packet rate at ≤ 0.1 % loss (UDP channels, paced)",
            "client packets per second", "pkt/s", "higher", {"turnd": turnd, "coturn": coturn},
        )  # fmt: skip
        rss = report.Row("RSS per idle allocation", "at 1000", "B", "lower", {"turnd": 1.0})
        return {"table": [report.table_entry(r, ["turnd", "coturn"]) for r in (row, rss)]}

    lines = report.scaling({1: one_pass(1000, 2000), 2: one_pass(1800, 3000)}, ["turnd", "coturn"])
    assert len(lines) == 2  # the heading and the rate row; RSS is not a throughput
    assert "turnd 1,000 -> 1,800 (1.80x)" in lines[1] and "(1.50x)" in lines[1]
    assert report.scaling({1: one_pass(1, 1)}, ["turnd"]) == []

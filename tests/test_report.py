"""`toolchain report` over a real store: a trained hps-06-0.5x exported and benchmarked twice on this machine.

The HTML page is rendered by a real headless browser (Debian's chromium): the screenshot must not be blank
and the DOM must hold the tables and the SVG plots. Every number checked here is traced back to the
manifest, a bench record, the training log or the registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.test_cli_train import assert_one_line_error, toolchain  # noqa: F401  (fixture)
from toolchain.bench.peak import spec_peak
from toolchain.bench.settings import BenchSettings
from toolchain.bench.system import bench_local
from toolchain.report.svg import Point, pareto_front

TABLES = ("overview", "paper-vs-ours", "accuracy", "measurements", "gate")
PLOTS = ("pareto", "sizes", "threads", "training")


@pytest.fixture(scope="module")
def store(hps_artifact, tmp_path_factory) -> Path:
    """A store of one real artifact with two local bench records (two rounds, threads 1 and 2)."""
    root = tmp_path_factory.mktemp("report-store") / "artifacts"
    folder = root / "hps-06-0.5x" / hps_artifact.folder.name
    shutil.copytree(hps_artifact.folder, folder, ignore=shutil.ignore_patterns("bench"))
    for _ in range(2):
        bench_local(folder, BenchSettings(threads=(1, 2), warmup=2, runs=20))
    return root


def _folder(store: Path) -> Path:
    return next(store.glob("hps-06-0.5x/*/manifest.json")).parent


def _records(store: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((_folder(store) / "bench").glob("*.json"))]


@pytest.fixture(scope="module")
def written(store, tmp_path_factory) -> dict[str, Path]:
    from toolchain.cli.main import run

    output = tmp_path_factory.mktemp("report-out")
    with pytest.raises(SystemExit) as exited:
        run(["report", "--artifacts", str(store), "--output", str(output)])
    assert exited.value.code in (0, None)
    return {path.suffix[1:]: path for path in output.iterdir()}


def test_report_writes_html_markdown_csv_json_and_prints_their_paths(toolchain, store, tmp_path):  # noqa: F811
    outcome = toolchain("report", "--artifacts", store, "--output", tmp_path / "out")
    assert outcome.code == 0, outcome.stderr
    printed = outcome.stdout.strip().splitlines()
    assert [Path(line).name for line in printed] == ["report.html", "report.md", "report.csv", "report.json"]
    assert all(Path(line).is_file() and Path(line).stat().st_size > 0 for line in printed)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_report_numbers_are_the_records_numbers(written, store):
    from toolchain.models import count_macs, create_model

    document = json.loads(written["json"].read_text())
    entry = document["models"][0]
    manifest = json.loads((_folder(store) / "manifest.json").read_text())
    assert entry["accuracy"]["int8_top1"] == manifest["accuracy"]["int8"]["top1"]
    assert entry["sizes"]["onnx_int8_bytes"] == manifest["files"]["model.int8.onnx"]["bytes"]
    assert entry["sizes"]["paper_style_bytes"] == manifest["inputs"]["checkpoint"]["bytes"]
    # MACs from the ONNX graph are the registry's count on the torch module (Fashion-MNIST: one channel)
    assert entry["macs"] == count_macs(create_model("hps-06-0.5x", 10, 1), (1, 1, 32, 32))
    newest, older = _records(store)[-1], _records(store)[0]
    bench_rows = [row for row in entry["measurements"] if row["source"] == "bench"]
    assert sorted((row["variant"], row["threads"]) for row in bench_rows) == \
        [("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)]
    for row in bench_rows:
        measured = next(item for item in newest["results"]
                        if (item["variant"], item["threads"]) == (row["variant"], row["threads"]))
        first = next(item for item in older["results"]
                     if (item["variant"], item["threads"]) == (row["variant"], row["threads"]))
        assert row["p50_ms"] == measured["latency_ms"]["p50"] and row["rounds"] == 2
        assert row["p50_ms_rounds"] == [first["latency_ms"]["p50"], measured["latency_ms"]["p50"]]
        assert row["gflops"]["p50"] == pytest.approx(2 * entry["macs"] / (row["p50_ms"] / 1e3) / 1e9)
        # each variant against the ceiling of its own arithmetic: INT8 rows the INT8 peak, FP32 rows float32
        section, key = ("int8_peak", "int8_gops") if row["variant"] == "int8" else ("peak", "fp32_gflops")
        peak = newest["compute"][section][key][str(row["threads"])]
        assert row["pct_of_peak"]["p50"] == pytest.approx(100 * row["gflops"]["p50"] / peak)
        assert row["peak_source"] == "measured" and row["peak_dtype"] == row["variant"]
    paper = entry["paper"]
    assert [(item["table"], item["accuracy_pct"]) for item in paper] == [("Table 2", 82.44), ("Table 4", 82.44)]
    assert entry["training"]["epochs"] and entry["training"]["epochs"][-1]["epoch"] == 1


def test_report_csv_has_one_row_per_measurement(written):
    import csv

    rows = list(csv.DictReader(written["csv"].read_text().splitlines()))
    assert len(rows) == 6  # the export's check (fp32, int8) + 2 variants x 2 thread counts
    assert {row["source"] for row in rows} == {"export check", "bench"}
    assert all(row["gflops_p50"] for row in rows)
    for row in rows:
        if row["source"] == "bench":
            assert row["peak_dtype"] == row["variant"] and float(row["peak_gops"]) > 0
            assert float(row["pct_peak_p50"]) == pytest.approx(100 * float(row["gflops_p50"]) / float(row["peak_gops"]))
        else:
            assert row["peak_gops"] == "" and row["pct_peak_p50"] == ""


def test_each_row_names_its_peak_and_a_peak_that_falls_with_threads_is_flagged(toolchain, store, tmp_path):  # noqa: F811
    root = tmp_path / "artifacts"
    shutil.copytree(store, root)
    for record in (_folder(root) / "bench").glob("*.json"):
        document = json.loads(record.read_text())
        # as a busy machine measures it: the 2-thread INT8 peak below the 1-thread one
        gops = document["compute"]["int8_peak"]["int8_gops"]
        gops["2"] = gops["1"] / 2
        record.write_text(json.dumps(document))
    outcome = toolchain("report", "--artifacts", root, "--output", tmp_path / "out")
    assert outcome.code == 0, outcome.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| local | ")]
    peaks = {(row[2], row[3]): row[-2] for row in rows if len(row) > 10}
    assert set(peaks) == {("fp32", "1"), ("fp32", "2"), ("int8", "1"), ("int8", "2")}
    assert all(peaks[key].startswith(key[0].upper() + " ") and peaks[key].endswith("\\(measured\\)") for key in peaks)
    assert "warning: the INT8 peak on local is lower at 2 threads" in text and "machine was busy" in text


def _chromium() -> str:
    found = shutil.which("chromium")
    require(found is not None, "Debian's chromium is not installed (scripts/bootstrap installs it)")
    return str(found)


def test_the_html_page_renders_in_a_headless_browser_with_its_tables_and_plots(written, tmp_path):
    from PIL import Image

    browser = _chromium()
    page = written["html"]
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    rendered = subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1400,2600", page.as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0 and shot.is_file(), rendered.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2600)
    pixels = list(image.get_flattened_data()) if hasattr(image, "get_flattened_data") else list(image.getdata())
    inked = sum(1 for pixel in pixels if sum(pixel) < 600) / len(pixels)
    coloured = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 80) / len(pixels)
    assert inked > 0.02, f"the page looks blank ({inked:.3%} of pixels drawn)"
    assert coloured > 0.005, f"no plot colours on the page ({coloured:.3%})"
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    for role in TABLES:
        assert f'data-table="{role}"' in dom, role
    for role in PLOTS:
        assert f'data-plot="{role}"' in dom, role
    assert dom.count("<svg") >= len(PLOTS) and 'class="pareto"' in dom
    assert "hps-06-0.5x" in dom and "GOP/s p50 / p90 / p99" in dom and "INT8 peak measured" in dom


def test_markdown_holds_every_section(written):
    text = written["md"].read_text()
    for title in ("the paper's figures beside ours", "top-1 on the host and on each target",
                  "latency, throughput, memory and achieved GOP/s", "the accuracy gate's decision log"):
        assert title in text, title
    assert "| local |" in text and "Table 2" in text


def test_text_from_a_manifest_is_data_in_every_format(toolchain, store, tmp_path):  # noqa: F811
    root = tmp_path / "artifacts"
    shutil.copytree(store, root)
    manifest_path = _folder(root) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dataset"]["name"] = "<script>alert(1)</script>|*x*\x1b[31m=cmd"
    manifest_path.write_text(json.dumps(manifest))
    outcome = toolchain("report", "--artifacts", root, "--output", tmp_path / "out")
    assert outcome.code == 0, outcome.stderr
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "\x1b" not in html
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "\\<script\\>" in markdown and "\\|\\*x\\*" in markdown and "\x1b" not in markdown
    assert "\x1b" not in outcome.stdout + outcome.stderr


def test_emulated_times_say_so_in_every_time_cell(toolchain, store, tmp_path):  # noqa: F811
    root = tmp_path / "artifacts"
    shutil.copytree(store, root)
    bench = _folder(root) / "bench"
    # the newest record relabelled as measured under qemu, to check the labelling alone
    newest = sorted(bench.glob("*.json"))[-1]
    document = json.loads(newest.read_text())
    document["target"]["emulated"] = True
    document["artifact"]["target"] = "emulated"
    (bench / newest.name.replace("local-", "emulated-")).write_text(json.dumps(document))
    outcome = toolchain("report", "--artifacts", root, "--target", "emulated", "--output", tmp_path / "out")
    assert outcome.code == 0, outcome.stderr
    html = (tmp_path / "out" / "report.html").read_text()
    table = html.split('data-table="measurements"')[1].split("</table>")[0]
    rows = table.split("<tbody>")[1].split("</tr>")[:-1]
    assert len(rows) == 4
    for row in rows:
        # p50, p90, p99, img/s, GFLOP/s, % of peak
        assert row.count('<span class="emu">emulated</span>') == 6, row
    assert "*emulated*" in (tmp_path / "out" / "report.md").read_text()


def test_compare_flags_a_regression_beyond_the_noise_of_the_rounds(toolchain, store, tmp_path):  # noqa: F811
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(store, a)
    shutil.copytree(store, b)
    bench = _folder(b) / "bench"
    # both of B's rounds: fp32 at one thread ten times slower (a regression that no round-to-round noise explains)
    for record in bench.glob("*.json"):
        document = json.loads(record.read_text())
        for entry in document["results"]:
            if (entry["variant"], entry["threads"]) == ("fp32", 1):
                entry["latency_ms"] = {key: value * 10 for key, value in entry["latency_ms"].items()}
                entry.pop("gflops"), entry.pop("pct_of_peak")
        record.write_text(json.dumps(document))
    outcome = toolchain("report", "--compare", a, b, "--output", tmp_path / "out", "--json")
    assert outcome.code == 0, outcome.stderr
    rows = {(row["variant"], row["threads"]): row for row in json.loads(outcome.stdout)["report"]["rows"]}
    assert set(rows) == {("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)}
    assert rows[("fp32", 1)]["verdict"] == "regression"
    assert rows[("fp32", 1)]["noise_from"].endswith("2 rounds") and rows[("fp32", 1)]["a_rounds"] == 2
    assert all(rows[key]["verdict"] == "within noise" for key in rows if key != ("fp32", 1))
    html = (tmp_path / "out" / "compare.html").read_text()
    assert 'class="num regression"' in html and 'data-table="compare"' in html


def test_compare_two_single_runs_uses_their_own_spread(toolchain, store, tmp_path):  # noqa: F811
    first, second = sorted((_folder(store) / "bench").glob("*.json"))
    outcome = toolchain("report", "--compare", first, second, "--output", tmp_path, "--json")
    assert outcome.code == 0, outcome.stderr
    rows = json.loads(outcome.stdout)["report"]["rows"]
    assert len(rows) == 4 and all(row["noise_from"].endswith("within run (p90 - p50)") for row in rows)
    assert all(row["a_rounds"] == 1 and row["b_rounds"] == 1 for row in rows)


def test_paper_report_puts_our_columns_beside_tables_2_to_5_and_7(toolchain, store, tmp_path):  # noqa: F811
    outcome = toolchain("report", "--artifacts", store, "--paper", "--output", tmp_path, "--json")
    assert outcome.code == 0, outcome.stderr
    document = json.loads(outcome.stdout)["report"]
    assert [table["table"] for table in document["tables"]] == ["Table 2", "Table 3", "Table 4", "Table 5",
                                                                "Table 7"]
    ours = [row for table in document["tables"] for row in table["rows"] if row["ours"]]
    assert [(row["table"], row["model"]) for row in ours] == [("Table 2", "hps-06-0.5x"), ("Table 4", "hps-06-0.5x")]
    assert ours[0]["ours"]["artifact_id"] == _folder(store).name
    assert [item["target"] for item in ours[0]["ours"]["int8_p50"]] == ["local"]
    html = (tmp_path / "paper.html").read_text()
    assert html.count('data-table="paper-table"') == 5


def test_bench_json_carries_gflops_and_where_the_peak_comes_from(toolchain, store):  # noqa: F811
    document = _records(store)[-1]
    compute = document["compute"]
    assert compute["peak"]["source"] == "measured" and "numpy float32 GEMM" in compute["peak"]["method"]
    assert set(compute["peak"]["fp32_gflops"]) == {"1", "2"}
    int8 = compute["int8_peak"]
    assert int8["source"] == "measured" and int8["dtype"] == "int8" and "MatMulInteger" in int8["method"]
    assert set(int8["int8_gops"]) == {"1", "2"} and all(value > 0 for value in int8["int8_gops"].values())
    assert compute["peak_of_variant"] == {"fp32": "peak", "int8": "int8_peak"}
    for entry in document["results"]:
        gflops = entry["gflops"]
        assert gflops["p50"] >= gflops["p90"] >= gflops["p99"] > 0
        assert 0 < entry["pct_of_peak"]["p50"] < 100
        ceiling = (int8["int8_gops"] if entry["variant"] == "int8" else compute["peak"]["fp32_gflops"])[
            str(entry["threads"])]
        assert entry["pct_of_peak"]["p50"] == pytest.approx(100 * gflops["p50"] / ceiling)
        assert entry["peak_used"] == {"dtype": entry["variant"], "source": "measured", "value": ceiling}


def test_bench_table_shows_gflops_and_the_peak_note(toolchain, store):  # noqa: F811
    outcome = toolchain("bench", "--artifact", _folder(store), "--threads", "1", "--warmup", "1", "--runs", "5")
    assert outcome.code == 0, outcome.stderr
    header = outcome.stdout.strip().splitlines()[1]
    assert "GOP/s p50" in header and "% peak p50" in header and header.rstrip().endswith("peak")
    rows = {line.split()[0]: line for line in outcome.stdout.strip().splitlines()[2:]}
    assert rows["fp32"].rstrip().endswith("fp32 measured") and rows["int8"].rstrip().endswith("int8 measured")
    assert "FP32 peak measured: best numpy float32 GEMM" in outcome.stderr
    assert "INT8 peak measured: best onnxruntime" in outcome.stderr


def test_an_onnxruntime_that_fails_the_int8_peak_leaves_a_noted_missing_peak(store, tmp_path, monkeypatch):
    """A broken onnxruntime install where the peak runs (it fails on import, as a wheel whose shared library
    is missing does): one line in the messages and in the record, INT8 rows without a %, FP32 ones with it."""
    from toolchain.artifacts import load_artifact
    from toolchain.bench.peak import annotate
    from toolchain.bench.system import AgentRun, LocalSystem, compute_record
    from toolchain.report.tables import bench_table, peak_note
    from toolchain.transport import LocalTransport

    broken = tmp_path / "broken" / "onnxruntime"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("libonnxruntime.so.1.32.0: cannot open shared object '
                                        'file: No such file or directory")\n')
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache"))  # nothing measured before: both run now
    document = _records(store)[-1]
    document["results"] = [entry for entry in document["results"] if entry["threads"] == 1]
    run = AgentRun(LocalTransport(), sys.executable, "unused", "unused", "unused",
                   env={"PYTHONPATH": str(broken.parent)})
    messages: list[str] = []
    compute = compute_record(LocalSystem(), run, document, load_artifact(_folder(store), verify=False), (1,),
                             messages.append)
    assert compute["peak"]["source"] == "measured"  # numpy's GEMM needs no onnxruntime
    assert compute["int8_peak"] is None
    note = compute["int8_peak_note"]
    assert note.startswith("no INT8 peak: the INT8 GEMM peak measurement on ") and "\n" not in note
    assert "ImportError: libonnxruntime.so.1.32.0: cannot open shared object file" in note
    assert len(messages) == 1 and "INT8 rows get no % of peak" in messages[0] and "Traceback" not in messages[0]
    annotate(document, compute)
    for entry in document["results"]:
        if entry["variant"] == "int8":
            assert entry["pct_of_peak"] is None and entry["peak_used"]["source"] is None
            assert entry["peak_used"]["note"] == note
        else:
            assert entry["pct_of_peak"]["p50"] > 0 and entry["peak_used"]["source"] == "measured"
    assert note in peak_note(compute)
    int8_row = next(row for row in bench_table(document).rows if row[0] == "int8")
    assert int8_row[-2:] == ["-", "-"]


def test_the_bluebox_profile_gives_a_spec_peak():
    from toolchain.remote.target import load_profile

    profile = load_profile("bluebox2")
    peak = spec_peak(profile.cpu, profile.clock_ghz, profile.fp32_flops_per_cycle, profile.name, (1, 8))
    assert peak is not None and peak.source == "spec" and "Cortex-A72 1.8 GHz" in peak.method
    assert peak.gflops == {1: pytest.approx(14.4), 8: pytest.approx(115.2)}
    emulated = load_profile("emulated")
    assert spec_peak(emulated.cpu, emulated.clock_ghz, emulated.fp32_flops_per_cycle, "emulated", (1,)) is None


def test_the_pareto_front_keeps_what_nothing_beats():
    points = [Point(1.0, 80.0), Point(2.0, 85.0), Point(1.5, 79.0), Point(3.0, 84.0), Point(0.5, 70.0)]
    assert [(p.x, p.y) for p in pareto_front(points)] == [(0.5, 70.0), (1.0, 80.0), (2.0, 85.0)]


def test_filters_that_leave_nothing_say_so(toolchain, store):  # noqa: F811
    assert_one_line_error(toolchain("report", "--artifacts", store, "--model", "sqnxt-*"), 1, "no artifact in")
    assert_one_line_error(toolchain("report", "--artifacts", store, "--target", "bluebox2"), 1, "target 'bluebox2'")
    assert_one_line_error(toolchain("report", "--artifacts", store, "--since", "2999-01-01"), 1, "since 2999-01-01")
    assert_one_line_error(toolchain("report", "--artifacts", store, "--since", "yesterday"), 2, "--since")


def test_a_corrupt_manifest_is_one_error_naming_it(toolchain, store, tmp_path):  # noqa: F811
    root = tmp_path / "artifacts"
    shutil.copytree(store, root)
    manifest = _folder(root) / "manifest.json"
    manifest.write_text('{"schema": "toolchain.manifest/1", ')
    outcome = toolchain("report", "--artifacts", root, "--output", tmp_path / "out")
    assert_one_line_error(outcome, 1, str(manifest), "not valid JSON")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_bench_record_is_one_error_naming_it(toolchain, store, tmp_path):  # noqa: F811
    root = tmp_path / "artifacts"
    shutil.copytree(store, root)
    record = sorted((_folder(root) / "bench").glob("*.json"))[0]
    record.write_text(json.dumps({"schema": "toolchain.bench/1"}))
    outcome = toolchain("report", "--artifacts", root, "--output", tmp_path / "out")
    assert_one_line_error(outcome, 1, str(record), "target")


def test_a_missing_store_or_an_unwritable_output_is_one_error(toolchain, store, tmp_path, read_only_dir):  # noqa: F811
    assert_one_line_error(toolchain("report", "--artifacts", tmp_path / "none"), 1, "does not exist")
    outcome = toolchain("report", "--artifacts", store, "--output", read_only_dir / "report")
    assert_one_line_error(outcome, 1, str(read_only_dir / "report"))

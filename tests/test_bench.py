"""``dmfx bench`` end to end on tiny shapes: every op's contenders checked against dmfx, then
timed; the JSON, the table, the chart and the one-line errors of bad flags. Nothing asserts on
time: only that each contender ran, was checked and got a positive, finite median and ratio."""
import json
import math
import sys

import pytest
import torch

from dmfx.bench import BASELINE, OPS, hybrid_bce_loss
from dmfx.cli import main
from conftest import CUDA_READY, CUDA_SKIP_REASON

# Small enough that an op takes about a second (a first torch.compile aside): 40 x 60 with 300
# ratings, towers 16,8, the shortest timing.
TINY = ["--users", "40", "--items", "60", "--nnz", "300", "--hidden", "16,8", "--batch", "32",
        "--negatives", "3", "--min-time", "0.001", "--threads", "1"]
REPORT_KEYS = {"dmfx", "torch", "cuda", "device", "device_name", "driver", "commit", "threads",
               "float32", "date", "timer", "inputs", "requested_ops", "complete", "ops"}


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """--threads sets the process's torch threads, as it should for a run: not for later tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _bench(tmp_path, capsys, *flags):
    out = tmp_path / "bench.json"
    code = main(["bench", *TINY, "--json", str(out), *flags])
    captured = capsys.readouterr()
    return code, json.loads(out.read_text()) if out.exists() else None, captured


def _assert_all_checked_and_timed(result: dict, op: str, skipped=()) -> None:
    rows = result["contenders"]
    assert list(rows) == list(OPS[op].contenders)
    assert result["baseline"] == BASELINE
    for name, row in rows.items():
        if name in skipped:
            assert row == {"status": "skipped", "reason": "--skip"}
            continue
        assert row["status"] == "ok", (name, row)
        if name == BASELINE and op != "sample_negatives":
            assert row["check"] == "baseline"  # the reference of the others' checks
        else:  # checked on this very input (the sampler's draws: every one against the contract)
            assert row["check"] and row["check"] != "baseline"
        assert row["median_s"] > 0 and row["runs"] >= 1 and row["calls_per_run"] >= 1
        assert 0 < row["vs_dmfx"] < math.inf
    assert rows[BASELINE]["vs_dmfx"] == 1.0


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_end_to_end_on_cpu(tmp_path, capsys, op):
    code, report, captured = _bench(tmp_path, capsys, "--device", "cpu", "--ops", op, "--quiet")
    assert code == 0, captured.err
    assert REPORT_KEYS <= set(report)
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    assert report["inputs"] == {"users": 40, "items": 60, "nnz": 300, "hidden": [16, 8],
                                "batch": 32, "negatives": 3, "seed": 0}
    assert list(report["ops"]) == [op] == report["requested_ops"] and report["complete"]
    assert {"float32_matmul_precision": "highest", "cuda_matmul_allow_tf32": False,
            "cudnn_allow_tf32": False}.items() <= report["float32"].items()
    _assert_all_checked_and_timed(report["ops"][op], op)
    # The table names the device and versions and has a row per contender.
    assert f"dmfx bench on cpu ({report['device_name']})" in captured.out
    assert f"torch {torch.__version__}" in captured.out
    for name in OPS[op].contenders:
        assert f"\n  {name} " in captured.out
    assert captured.err == ""  # --quiet: no progress bar


def test_op_specific_rates_and_inputs(tmp_path, capsys):
    code, report, _ = _bench(tmp_path, capsys, "--device", "cpu", "--quiet",
                             "--ops", "sample_negatives,train_step", "sparse_rows_matmul",
                             "--skip", "dmfx-validate", "dmfx-sparse-grad")
    assert code == 0
    assert list(report["ops"]) == ["sample_negatives", "train_step", "sparse_rows_matmul"]
    sampler = report["ops"]["sample_negatives"]
    assert "3 per observed pair, 900 draws" in sampler["what"]  # 300 pairs x 3 negatives
    assert sampler["contenders"]["reference"]["samples_per_s"] > 0
    train = report["ops"]["train_step"]["contenders"]
    assert all(train[name]["pairs_per_s"] > 0 and train[name]["epoch_s"] > 0
               for name in ("dmfx", "dense-input", "embedding_bag"))
    assert train["dmfx-sparse-grad"] == {"status": "skipped", "reason": "--skip"}
    assert "h = 16" in report["ops"]["sparse_rows_matmul"]["what"]  # first tower width
    assert report["ops"]["sparse_rows_matmul"]["contenders"]["dmfx-validate"]["status"] == "skipped"


def test_progress_bar_and_skipped_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the bar is drawn
    code, report, captured = _bench(tmp_path, capsys, "--device", "cpu",
                                    "--ops", "cosine_nce_loss", "--skip", "compile")
    assert code == 0
    assert "cosine_nce_loss: " in captured.err and "contender" in captured.err  # tqdm's bar
    _assert_all_checked_and_timed(report["ops"]["cosine_nce_loss"], "cosine_nce_loss",
                                  skipped=("compile",))
    assert any(line.split() == ["compile", "skipped:", "--skip"]
               for line in captured.out.splitlines())


def test_a_peer_that_computes_something_else_is_not_timed(tmp_path, capsys, monkeypatch):
    def off_by_one_percent(logits, implicit, explicit):
        return 1.01 * hybrid_bce_loss.naive_hybrid_bce(logits, implicit, explicit)

    monkeypatch.setitem(hybrid_bce_loss._EAGER, "eager", off_by_one_percent)
    code, report, captured = _bench(tmp_path, capsys, "--device", "cpu", "--quiet",
                                    "--ops", "hybrid_bce_loss", "--skip", "compile")
    assert code == 1
    row = report["ops"]["hybrid_bce_loss"]["contenders"]["eager"]
    assert row["status"] == "check failed" and "median_s" not in row
    assert "eager vs dmfx, output 0" in row["reason"]
    assert "dmfx: error: hybrid_bce_loss: eager: eager vs dmfx" in captured.err
    assert report["ops"]["hybrid_bce_loss"]["contenders"]["bce-logits"]["status"] == "ok"


def test_no_progress_bar_off_a_terminal(tmp_path, capsys):
    code, _, captured = _bench(tmp_path, capsys, "--device", "cpu",
                               "--ops", "hybrid_bce_loss", "--skip", "compile")
    assert code == 0 and captured.err == ""  # a log file gets no carriage-return bars


def test_a_peer_that_raises_costs_its_row_not_the_table(tmp_path, capsys, monkeypatch):
    def broken(logits, implicit, explicit):
        raise RuntimeError("backend exploded\nsecond line")

    monkeypatch.setitem(hybrid_bce_loss._EAGER, "eager", broken)
    code, report, captured = _bench(tmp_path, capsys, "--device", "cpu", "--quiet",
                                    "--ops", "hybrid_bce_loss", "--skip", "compile")
    assert code == 1
    rows = report["ops"]["hybrid_bce_loss"]["contenders"]
    assert rows["eager"] == {"status": "error", "reason": "RuntimeError: backend exploded"}
    assert rows["dmfx"]["status"] == rows["bce-logits"]["status"] == "ok"
    assert "dmfx: error: hybrid_bce_loss: eager: RuntimeError: backend exploded" in captured.err
    assert "error: RuntimeError: backend exploded" in captured.out  # its table row


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the plot extra)")
    png = tmp_path / "bench.png"
    code, _, _ = _bench(tmp_path, capsys, "--device", "cpu", "--quiet",
                        "--ops", "hybrid_bce_loss", "--skip", "compile", "--plot", str(png))
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_fails_before_timing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    code, report, captured = _bench(tmp_path, capsys, "--device", "cpu", "--plot",
                                    str(tmp_path / "x.png"))
    assert code == 2 and report is None and captured.out == ""
    assert captured.err.strip().splitlines() == [(
        "dmfx: error: --plot needs matplotlib, which is not installed: "
        "pip install 'dmfx[plot]' (or matplotlib)")]


@pytest.mark.parametrize("flags, flag", [
    (["--users", "0"], "--users"),
    (["--items", "-3"], "--items"),
    (["--nnz", "0"], "--nnz"),
    (["--batch", "0"], "--batch"),
    (["--negatives", "0"], "--negatives"),
    (["--users", "10", "--items", "10", "--nnz", "101"], "--nnz"),  # more than users x items
    (["--users", "10", "--items", "10", "--nnz", "60"], "--nnz"),  # more than half: not sparse
    (["--hidden", "16,0"], "--hidden"),
    (["--hidden", "wide"], "--hidden"),
    (["--ops", "sparse_rows_matmul,softmax"], "--ops"),
    (["--skip", "numpy"], "--skip"),
    (["--skip", "dmfx"], "--skip"),
    (["--shape", "netflix"], "--shape"),
    (["--min-time", "0"], "--min-time"),
    (["--threads", "0"], "--threads"),
    (["--device", "tpu"], "--device"),
    (["--json", "no/such/folder/out.json"], "--json"),
])
def test_bad_flags_give_one_line_errors_naming_the_flag(tmp_path, capsys, flags, flag):
    code = main(["bench", *TINY, "--quiet", *flags])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dmfx: error: {flag}"), lines


@pytest.mark.skipif(CUDA_READY, reason="a GPU with dmfx's CUDA kernels is present")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    code = main(["bench", *TINY, "--quiet", "--device", "cuda"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("dmfx: error: --device cuda")


@pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)
def test_every_op_end_to_end_on_cuda(tmp_path, capsys):
    code, report, captured = _bench(tmp_path, capsys, "--device", "cuda", "--quiet")
    assert code == 0, captured.err
    assert report["device"] == "cuda" and report["device_name"] == torch.cuda.get_device_name()
    assert list(report["ops"]) == list(OPS)
    for op, result in report["ops"].items():
        _assert_all_checked_and_timed(result, op)


def test_one_width_towers_time_every_train_step_contender(tmp_path):
    out = tmp_path / "one.json"
    flags = [*TINY, "--hidden", "8", "--ops", "train_step", "--quiet", "--json", str(out)]
    assert main(["bench", *flags]) == 0
    contenders = json.loads(out.read_text())["ops"]["train_step"]["contenders"]
    assert "dmfx-sparse-grad" in contenders


def test_a_negative_seed_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["bench", *TINY, "--seed", "-1"])
    assert exit.value.code == 2
    assert "argument --seed: a seed must lie in [0, 2**63), got -1" in capsys.readouterr().err


def test_every_name_the_benchmark_scripts_import_from_the_project_exists():
    """The scripts of benchmarks/ run by hand (some need RecBole or a GPU), so no test runs
    them: an import of a name that moved would only fail there. Checked without running them."""
    import ast
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    checked = 0
    for script in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:  # from .harness import ...
                module = "benchmarks" + (f".{node.module}" if node.module else "")
            elif (node.module or "").split(".")[0] == "dmfx":
                module = node.module
            else:
                continue
            try:
                imported = importlib.import_module(module)
            except ImportError:  # dmfx.integrations.recbole outside RecBole's environment
                continue
            for alias in node.names:
                assert hasattr(imported, alias.name) or alias.name == "*", \
                    f"{script.name}: {module} has no {alias.name}"
                checked += 1
    assert checked > 20

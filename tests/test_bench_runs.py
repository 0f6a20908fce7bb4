"""How benchmark results are produced and kept, on the CPU: ``dmfx bench`` printing and saving
each op as it finishes, an op whose inputs cannot be built, the float32 settings of a run, the
train_step check (gradients and optimizer, not only the forward), the timing plan shared with
the suites, the commit in the reports, report.py's merge of several files and run_gpu.sh's one
pytest per suite. Nothing asserts on time."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dmfx.bench import CheckFailed, command, core, train_step
from dmfx.cli import main
from dmfx.data import synthetic

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--users", "40", "--items", "60", "--nnz", "300", "--hidden", "16,8", "--batch", "32",
        "--negatives", "3", "--min-time", "0.001", "--threads", "1", "--device", "cpu", "--quiet"]
F32 = {"float32_matmul_precision": "highest", "cuda_matmul_allow_tf32": False,
       "cudnn_allow_tf32": False}


@pytest.fixture(autouse=True)
def _keep_torch_settings():
    """--threads sets the process's torch threads, as it should for a run: not for later tests."""
    threads = torch.get_num_threads()
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    precision = (torch.get_float32_matmul_precision(), matmul.allow_tf32, cudnn.allow_tf32)
    yield
    torch.set_num_threads(threads)
    matmul.allow_tf32, cudnn.allow_tf32 = precision[1:]
    torch.set_float32_matmul_precision(precision[0])


# ------------------------------------------------------------------------ dmfx bench: each op kept


def test_each_op_is_printed_and_saved_as_soon_as_it_is_done(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    seen = {}

    def broken(inputs, data, device):  # train_step's inputs: built after hybrid_bce_loss is done
        seen["json"] = json.loads(out.read_text())
        seen["stdout"] = capsys.readouterr().out
        raise RuntimeError("no inputs today\nsecond line")

    monkeypatch.setitem(command._PROBLEMS, "train_step", broken)
    code = main(["bench", *TINY, "--ops", "hybrid_bce_loss", "train_step",
                 "--skip", "compile", "dmfx-sparse-grad", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    # By then the first op's table was printed and its results were on disk.
    assert list(seen["json"]["ops"]) == ["hybrid_bce_loss"] and not seen["json"]["complete"]
    assert seen["json"]["requested_ops"] == ["hybrid_bce_loss", "train_step"]
    assert seen["json"]["ops"]["hybrid_bce_loss"]["contenders"]["dmfx"]["status"] == "ok"
    assert "dmfx bench on cpu" in seen["stdout"] and "\nhybrid_bce_loss: EINMF" in seen["stdout"]
    assert "train_step" not in seen["stdout"]
    # The failed input builder cost its op's rows, not the run.
    report = json.loads(out.read_text())
    assert report["complete"] and list(report["ops"]) == ["hybrid_bce_loss", "train_step"]
    rows = report["ops"]["train_step"]["contenders"]
    assert rows.pop("dmfx-sparse-grad") == {"status": "skipped", "reason": "--skip"}
    assert rows == {name: {"status": "error", "reason": "its inputs: RuntimeError: no inputs today"}
                    for name in ("dmfx", "dense-input", "embedding_bag")}
    assert "train_step: inputs not built" in captured.out
    assert ("dmfx: error: train_step: dmfx: its inputs: RuntimeError: no inputs today"
            in captured.err)


def test_out_of_memory_building_an_ops_inputs_skips_that_op(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"

    def out_of_memory(inputs, data, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setitem(command._PROBLEMS, "sparse_rows_matmul", out_of_memory)
    code = main(["bench", *TINY, "--ops", "sparse_rows_matmul", "hybrid_bce_loss",
                 "--skip", "compile", "--json", str(out)])
    assert code == 0, capsys.readouterr().err  # skipped, as a contender out of memory is
    report = json.loads(out.read_text())
    rows = report["ops"]["sparse_rows_matmul"]["contenders"]
    assert list(rows) == list(command.OPS["sparse_rows_matmul"].contenders)
    assert all(row == {"status": "skipped",
                       "reason": "its inputs: out of memory on this device at this shape"}
               for row in rows.values())
    assert report["ops"]["hybrid_bce_loss"]["contenders"]["dmfx"]["status"] == "ok"


def test_a_run_cut_short_keeps_the_ops_it_finished(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"

    def interrupted(inputs, data, device):  # as a time limit's signal would
        raise KeyboardInterrupt

    monkeypatch.setitem(command._PROBLEMS, "cosine_nce_loss", interrupted)
    code = main(["bench", *TINY, "--ops", "hybrid_bce_loss", "cosine_nce_loss",
                 "--skip", "compile", "--json", str(out)])
    assert code == 130
    report = json.loads(out.read_text())
    assert list(report["ops"]) == ["hybrid_bce_loss"] and not report["complete"]
    assert "\nhybrid_bce_loss: EINMF" in capsys.readouterr().out


# ------------------------------------------------------------------ the float32 settings of a run


def test_a_run_pins_full_float32_and_restores_the_settings_after(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    during = {}
    build = command._PROBLEMS["hybrid_bce_loss"]

    def spying(*args):
        during.update(core.precision_settings())
        return build(*args)

    monkeypatch.setitem(command._PROBLEMS, "hybrid_bce_loss", spying)
    torch.set_float32_matmul_precision("high")  # TF32 in cuBLAS
    torch.backends.cudnn.allow_tf32 = False
    code = main(["bench", *TINY, "--ops", "hybrid_bce_loss", "--skip", "compile",
                 "--json", str(out)])
    assert code == 0
    assert F32.items() <= during.items()
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32) == ("high", True, False)
    assert json.loads(out.read_text())["float32"] == during
    assert "float32 matmul precision highest, TF32 off" in capsys.readouterr().out


def test_full_float32_restores_the_settings_after_an_error():
    torch.backends.cudnn.allow_tf32 = True
    with pytest.raises(ValueError), core.full_float32():
        assert not torch.backends.cudnn.allow_tf32
        raise ValueError
    assert torch.backends.cudnn.allow_tf32


def test_full_float32_from_settings_torch_refuses_to_read():
    """Mixing torch's legacy and new TF32 APIs makes its legacy getters raise: the run still
    pins and records full float32, and the TF32 flags come back."""
    torch.set_float32_matmul_precision("medium")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with core.full_float32():
        assert F32.items() <= core.precision_settings().items()
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


# ---------------------------------------------------------------------------- the train_step check


@pytest.fixture(scope="module")
def problem():
    return train_step.problem(synthetic(40, 60, 300, seed=0), 32, (16, 8), torch.device("cpu"),
                              negatives=3, steps=3)


class _Reversed(torch.autograd.Function):
    """The identity forward, the negated gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def test_a_peer_with_a_wrong_gradient_fails_the_check(problem, monkeypatch):
    tower = train_step.EmbeddingBagDMF._tower

    def reversed_first_layer(csr, first, mlp, bags, total):
        return tower(csr, _Reversed.apply(first), mlp, bags, total)

    monkeypatch.setattr(train_step.EmbeddingBagDMF, "_tower", staticmethod(reversed_first_layer))
    # Its forward is dmfx's: only the loss after a step tells.
    with pytest.raises(CheckFailed, match="embedding_bag second-batch loss after one step"):
        train_step.prepare(problem, "embedding_bag")


def test_a_peer_with_another_optimizer_fails_the_check(problem, monkeypatch):
    optimizer = train_step._optimizer
    monkeypatch.setattr(train_step, "_optimizer", lambda net: (
        torch.optim.SGD(net.parameters(), lr=train_step.LR)
        if isinstance(net, train_step.PeerDMF) else optimizer(net)))
    with pytest.raises(CheckFailed, match="dense-input second-batch loss after one step"):
        train_step.prepare(problem, "dense-input")


@pytest.mark.parametrize("name", train_step.CONTENDERS)
def test_every_contender_trains_with_the_trainers_optimizer_and_passes(problem, name):
    contender = train_step.prepare(problem, name)
    net, optimizer = contender.state
    if name == "dmfx-sparse-grad":
        assert type(optimizer).__name__ == "SplitAdam"  # fused Adam + RowSparseAdam
        return
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"]
    if name != "dmfx":
        assert "second-batch loss after one step on the first" in contender.check
    assert torch.isfinite(contender.fn())


def test_dmfx_sparse_grad_builds_only_its_own_model(problem, monkeypatch):
    train_step._reference(problem)  # dmfx's losses: computed once per problem
    built = []
    model = train_step._model
    monkeypatch.setattr(train_step, "_model", lambda p, sparse_grad=False: (
        built.append(sparse_grad), model(p, sparse_grad))[1])
    train_step.prepare(problem, "dmfx-sparse-grad")
    assert built == [True]


def test_embedding_bag_towers_on_every_pair_equal_those_on_distinct_ids(problem):
    """The peer's CUDA path (no torch.unique, as dmfx's) computes what its CPU path does."""
    net = train_step.EmbeddingBagDMF(train_step._model(problem), problem.user_csr,
                                     problem.item_csr)
    users, items, _ = problem.batches[0]
    for csr, first, mlp, ids in ((net.user_csr, net.user_first, net.user_mlp, users),
                                 (net.item_csr, net.item_first, net.item_mlp, items)):
        outs = []
        for distinct in (True, False):
            bags = net._bags(csr, ids, distinct)
            outs.append(net._tower(csr, first, mlp, bags, int(bags[2].sum())))
        torch.testing.assert_close(outs[0], outs[1])


def test_free_device_memory_counts_the_allocators_cache_as_free(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (calls.append("mem_get_info"), (5, 10))[1])
    assert train_step._free_bytes(torch.device("cuda")) == 5
    assert calls == ["empty_cache", "mem_get_info"]


# ------------------------------------------------------------------------------------- timing


def test_block_plan():
    calls, blocks = core.block_plan(1e-5, 1.0)  # 10 us calls, a 1 s budget
    assert calls * 1e-5 >= core.MIN_BLOCK_S and blocks == core.MAX_BLOCKS  # blocks grow instead
    assert blocks * calls * 1e-5 == pytest.approx(1.0, rel=0.05)
    assert core.block_plan(0.01, 0.05) == (1, core.MIN_BLOCKS)  # at least 20 blocks
    assert core.block_plan(1.0, 0.5) == (1, core.FEW_BLOCKS)  # a slow call: never fewer than 5


def test_measure_times_whole_blocks_and_an_iqr_needs_four():
    calls = []
    m = core.measure(lambda: calls.append(1), 0.001)
    assert m.runs >= core.FEW_BLOCKS and m.calls_per_run >= 1
    assert len(calls) >= m.runs * m.calls_per_run and m.median > 0 and m.iqr >= 0
    assert core.Measurement((1.0, 2.0, 3.0), 1).iqr is None
    assert core.Measurement((1.0, 2.0, 3.0, 4.0, 5.0), 1).iqr == 2.0
    table = command.render_op("op", {"what": "x", "contenders": {"dmfx": {
        "status": "ok", "median_s": 1e-3, "iqr_s": None, "runs": 3, "calls_per_run": 2,
        "vs_dmfx": 1.0}}})
    assert table.splitlines()[-1].split() == ["dmfx", "1", "ms", "n/a", "3", "x", "2", "1.00"]


def test_the_suites_time_with_dmfx_bench_plan(monkeypatch):
    from benchmarks import harness

    assert harness.plan is core.plan
    monkeypatch.setattr(harness, "plan", lambda fn, budget: (7, 23))
    fake = SimpleNamespace(disabled=False, group=None, extra_info={},
                           pedantic=lambda fn, rounds, iterations: (rounds, iterations))
    assert harness.measure(fake, lambda: None, group="g", contender="dmfx") == (23, 7)


# ------------------------------------------------------------------------- commit and driver


def test_commit_and_driver_when_known_and_never_a_failure(monkeypatch):
    info = core.commit_info()
    if (ROOT / ".git").exists() and info is not None:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert info["id"] == head and isinstance(info["dirty"], bool)
    assert core.driver_version(torch.device("cpu")) is None

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(core.subprocess, "run", no_git)
    monkeypatch.setattr(core.shutil, "which", lambda name: "/usr/bin/" + name)
    assert core.commit_info() is None and core.driver_version(torch.device("cuda")) is None
    monkeypatch.setattr(core.subprocess, "run",
                        lambda *a, **k: SimpleNamespace(stdout="550.54.15\n550.54.15\n"))
    assert core.driver_version(torch.device("cuda")) == "550.54.15"


def test_the_header_names_the_commit_or_says_it_is_unknown(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(core.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--ops", "hybrid_bce_loss", "--skip", "compile",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["commit"] is None
    assert "(commit unknown (not a git checkout))" in capsys.readouterr().out
    report = {**json.loads(out.read_text()), "commit": {"id": "0123456789abcdef", "dirty": True}}
    assert (f"dmfx {report['dmfx']} (commit 0123456789ab + uncommitted changes)"
            in command.render_header(report))


# ---------------------------------------------------------------------------------- report.py


def _suite(group: str, medians: dict, *, rounds: int = 20, command: str = "pytest x",
           dirty: bool = False) -> dict:
    """A pytest-benchmark JSON as the suites write it."""
    return {
        "machine_info": {"dmfx": {"device": "NVIDIA H100", "driver": "550.54.15", "torch": "2.9",
                                  "cuda": "12.8", "command": command, "loadavg": [1, 1, 1],
                                  "float32": F32}},
        "commit_info": {"id": "0123456789abcdef0123", "dirty": dirty, "branch": "main"},
        "datetime": "2026-01-02T03:04:05",
        "benchmarks": [{"group": group, "name": f"test[{name}]", "extra_info": {"contender": name},
                        "stats": {"median": m, "iqr": m / 10, "rounds": rounds, "iterations": 3}}
                       for name, m in medians.items()],
    }


def test_report_merges_several_files_into_one_run(tmp_path, capsys):
    from benchmarks import report

    a, b, merged = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bench.json"
    a.write_text(json.dumps(_suite("loss B=8192", {"dmfx": 1e-3, "eager": 4e-3},
                                   command="pytest benchmarks/test_a.py")))
    b.write_text(json.dumps(_suite("step ml-1m", {"dmfx": 2.0, "dense-input": 5.0}, rounds=3,
                                   command="pytest benchmarks/test_b.py", dirty=True)))
    assert report.main([str(a), str(b), "--merged-json", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "### loss B=8192" in out and "### step ml-1m" in out
    assert "| eager | 4.00 ms | 400 us | 20 x 3 | 4.00x |" in out
    assert "| dense-input | 5.00 s | n/a | 3 x 3 | 2.50x |" in out  # 3 rounds: no IQR
    assert "- commit: 0123456789ab (main), 0123456789ab + uncommitted changes (main)" in out
    assert "- device: NVIDIA H100, driver 550.54.15" in out
    assert ("- commands:\n  - `pytest benchmarks/test_a.py`\n  - `pytest benchmarks/test_b.py`\n"
            in out)
    assert "matmul precision highest, cuBLAS allow_tf32 False" in out
    data = json.loads(merged.read_text())
    assert [x["extra_info"]["contender"] for x in data["benchmarks"]] == [
        "dmfx", "eager", "dmfx", "dense-input"]
    assert [m["file"] for m in data["merged_from"]] == ["a.json", "b.json"]
    # The merged file reads as a single one does (check_gpu.sh's summary reads it so).
    assert report.render(data) == out
    assert report.main([str(merged)]) == 0 and capsys.readouterr().out == out


def test_report_writes_the_readme_headline_table_from_the_run(tmp_path, capsys):
    from benchmarks import report
    from dmfx.bench.train_step import STEPS

    assert report.TRAIN_STEPS == STEPS
    run = _suite("sparse_rows_matmul fwd+bwd ml-100k-h256-B256",
                 {"dmfx": 1e-3, "embedding_bag": 4e-3, "dense": 3e-3})
    step = _suite("DMF training step 200k-1m-5m-h64-64-B256",
                  {"dmfx-sparse-grad": 0.3, "dmfx": 1.5})
    run["benchmarks"] += step["benchmarks"]
    (tmp_path / "bench.json").write_text(json.dumps(run))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:headline -->\nold table\n<!-- /bench:headline -->\nafter\n")
    assert report.main([str(tmp_path / "bench.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n<!-- bench:headline -->\nNVIDIA H100")
    assert text.endswith("<!-- /bench:headline -->\nafter\n")
    # Peers the run lacks (sparse.mm) are left out; a step is a call of STEPS steps.
    assert ("| first layer fwd+bwd, ml-100k, h=256, B=256 | 1.00 ms | `F.embedding_bag` 4.00 ms, "
            "dense rows (prebuilt) @ W 3.00 ms | 4.00x / 3.00x |") in text
    assert ("| DMF training step, 200k x 1M x 5M, h=64, B=256 | 15.0 ms (`--sparse-grad`) | dmfx "
            "with dense Adam 75.0 ms | 5.00x |") in text
    assert "ml-1m" not in text  # groups the run lacks have no row
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="must hold one <!-- bench:headline -->"):
        report.main([str(tmp_path / "bench.json"), "--readme", str(readme)])


# -------------------------------------------------------------------------------- run_gpu.sh

# run_gpu.sh's interpreter in this test: the GPU probe passes, pytest is faked, the rest is real.
FAKE_PYTHON = """#!/bin/bash
if [ "$1" = "-" ] && [ $# -eq 1 ]; then cat > /dev/null; echo "GPU: none, faked"; exit 0; fi
if [ "$1" = "-m" ] && [ "$2" = "pytest" ]; then exec "$REAL_PYTHON" "$FAKE_PYTEST" "$@"; fi
exec "$REAL_PYTHON" "$@"
"""
FAKE_PYTEST = """
import json, os, signal, sys
suite = next(a for a in sys.argv[1:] if a.endswith(".py"))
name = os.path.basename(suite)[:-3]
out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--benchmark-json="))
assert sys.argv[sys.argv.index("--device") + 1] == "cuda"
if name == os.environ.get("KILL_AT"):  # a time limit killing the whole run
    os.killpg(os.getpgid(0), signal.SIGKILL)
failed = name == os.environ.get("FAIL_AT")
json.dump({"machine_info": {"dmfx": {"command": "pytest " + suite}},
           "commit_info": {"id": "abc", "dirty": False}, "datetime": "2026-01-02",
           "benchmarks": [{"group": name, "name": "t", "extra_info": {"contender": "dmfx"},
                           "stats": {"median": 1e-3, "iqr": 1e-4, "rounds": 20,
                                     "iterations": 2}}]}, open(out, "w"))
print(("1 failed, 1 passed" if failed else "2 passed, 1 skipped") + " in 0.50s")
sys.exit(1 if failed else 0)
"""
SUITE_ORDER = ["test_sparse_rows_matmul", "test_train_step", "test_cosine_nce_loss",
               "test_hybrid_bce_loss", "test_sample_negatives", "test_recommend"]


def _run_gpu_sh(tmp_path, **env):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "fake_pytest.py").write_text(FAKE_PYTEST)
    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "run_gpu.sh")], capture_output=True, text=True,
        timeout=120, start_new_session=True,
        env={**os.environ, "PYTHON": str(fake), "REAL_PYTHON": sys.executable,
             "FAKE_PYTEST": str(tmp_path / "fake_pytest.py"), "OUT": str(out), **env})
    bench = out / "bench.json"
    groups = [b["group"] for b in json.loads(bench.read_text())["benchmarks"]] \
        if bench.exists() else []
    return run, out, groups


def test_run_gpu_sh_runs_each_suite_alone_and_merges_them(tmp_path):
    run, out, groups = _run_gpu_sh(tmp_path, FAIL_AT="test_train_step")
    assert run.returncode == 1, run.stderr  # a suite failed; the others still ran
    assert groups == SUITE_ORDER  # the CPU-only readers left out
    assert sorted(p.name for p in (out / "suites").iterdir()) == sorted(
        f"{name}.json" for name in SUITE_ORDER)
    results = (out / "RESULTS.md").read_text()
    assert all(f"### {name}" in results for name in SUITE_ORDER)
    # The last closing line sums the suites, in the format check_gpu.sh's tally reads.
    tallies = [line for line in run.stdout.splitlines()
               if re.match(r"^=*( |)[0-9]+ (passed|failed|skipped)", line)]
    assert tallies[-1] == "===== 1 failed, 11 passed, 5 skipped in 3.0s (6 suites) ====="


def test_run_gpu_sh_killed_keeps_the_suites_it_finished(tmp_path):
    run, out, groups = _run_gpu_sh(tmp_path, KILL_AT="test_cosine_nce_loss")
    assert run.returncode != 0
    assert groups == SUITE_ORDER[:2]
    assert "### test_train_step" in (out / "RESULTS.md").read_text()

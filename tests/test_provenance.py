"""dmfx.provenance: the environment record of a run and its per-epoch JSON-lines log."""
import json
import platform
import shutil
import subprocess

import numpy as np
import pytest
import scipy
import torch

import dmfx
from dmfx.provenance import EpochLog, environment, git_commit


def test_environment_names_the_software_and_machine():
    env = environment("cpu")
    assert set(env) == {"dmfx", "build", "python", "torch", "numpy", "scipy", "cuda", "gpu",
                        "threads", "device", "platform"}
    assert env["dmfx"]["version"] == dmfx.__version__
    assert isinstance(env["dmfx"]["commit"], str) and env["dmfx"]["commit"]
    assert env["dmfx"]["modified"] in (True, False, None)
    assert env["build"]["cpu_kernels"] is True
    assert env["build"]["cuda_kernels"] is dmfx.cuda_enabled()
    assert env["build"]["openmp"] in (True, False)
    assert (env["python"], env["torch"], env["numpy"], env["scipy"]) == (
        platform.python_version(), torch.__version__, np.__version__, scipy.__version__)
    assert env["cuda"] == torch.version.cuda
    assert env["gpu"] is None and env["device"] == "cpu"
    assert env["threads"] == torch.get_num_threads() >= 1
    assert isinstance(env["platform"], str) and env["platform"]
    json.dumps(env, allow_nan=False)  # goes into metrics.json as is


@pytest.mark.skipif(not (torch.cuda.is_available() and dmfx.cuda_enabled()),
                    reason="no CUDA device, or dmfx built without its CUDA kernels")
def test_environment_names_the_gpu():
    env = environment("cuda")
    assert env["gpu"] == torch.cuda.get_device_name(0) and env["cuda"] == torch.version.cuda


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "meta", "no-such-device"])
def test_environment_never_fails_on_a_device_it_cannot_ask(device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU to name")
    env = environment(device)
    assert env["gpu"] is None and env["device"] == device
    json.dumps(env, allow_nan=False)


def test_git_commit_is_unknown_outside_a_checkout_without_running_git(tmp_path, monkeypatch):
    def no_git(*args, **kwargs):
        raise AssertionError("git must not run outside a checkout")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert git_commit(tmp_path) == {"commit": "unknown", "modified": None}


def test_git_commit_is_unknown_when_git_fails(tmp_path):
    (tmp_path / ".git").write_text("gitdir: /nowhere\n")  # a broken worktree link
    assert git_commit(tmp_path) == {"commit": "unknown", "modified": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_git_commit_of_a_checkout_and_its_local_changes(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                               "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    (tmp_path / "runs").mkdir()  # untracked files are not a change of the code
    (tmp_path / "runs" / "metrics.json").write_text("{}")
    assert git_commit(tmp_path) == {"commit": head, "modified": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == {"commit": head, "modified": True}


def entry(epoch, loss=0.5):
    return {"epoch": epoch, "loss": loss, "seconds": 1.0, "valid": {"ndcg@10": 0.25}}


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_epoch_log_appends_one_line_per_epoch(tmp_path):
    path = tmp_path / "epochs.jsonl"
    path.write_text(json.dumps(entry(1)) + "\n")  # left by an earlier run that had no checkpoint
    log = EpochLog(path)
    assert path.read_text() == ""
    log.append(entry(1))
    log.append(entry(2, loss=float("nan")))
    assert lines(path) == [entry(1), {**entry(2), "loss": None}]


def test_epoch_log_of_a_resumed_run_continues_a_log_that_matches_its_checkpoint(tmp_path):
    path = tmp_path / "epochs.jsonl"
    # The log's own lines are kept, byte for byte (a dashboard reading it sees no rewrite).
    kept = json.dumps(entry(1, loss=0.75)) + "\n" + json.dumps(entry(2, loss=0.5)) + "\n"
    path.write_text(kept)
    inode = path.stat().st_ino
    EpochLog(path, [entry(1), entry(2)]).append(entry(3))
    assert path.stat().st_ino == inode
    assert path.read_text() == kept + json.dumps(entry(3)) + "\n"


def test_a_last_line_without_its_line_end_is_rewritten_not_joined(tmp_path):
    """splitlines() read such a log as matching the checkpoint, and the next epoch's line was
    appended onto the last one."""
    path = tmp_path / "epochs.jsonl"
    path.write_text(json.dumps(entry(1)) + "\n" + json.dumps(entry(2)))  # cut before its \n
    EpochLog(path, [entry(1), entry(2)]).append(entry(3))
    assert lines(path) == [entry(1), entry(2), entry(3)]


@pytest.mark.parametrize("written", [
    [entry(1)],  # killed after the checkpoint of epoch 2, before its line
    [entry(1), entry(2), entry(3)],  # epoch 3 is after the checkpoint: trained again
    [entry(1), entry(1), entry(2)],  # a duplicate
    None,  # no log: the run predates it
], ids=["missing", "after-checkpoint", "duplicate", "absent"])
def test_epoch_log_of_a_resumed_run_is_rebuilt_from_its_checkpoint(tmp_path, written):
    path = tmp_path / "epochs.jsonl"
    if written is not None:
        path.write_text("".join(json.dumps(e) + "\n" for e in written))
    EpochLog(path, [entry(1), entry(2)]).append(entry(3))
    assert [e["epoch"] for e in lines(path)] == [1, 2, 3]
    assert lines(path) == [entry(1), entry(2), entry(3)]


def test_epoch_log_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "epochs.jsonl"
    path.write_text(json.dumps(entry(1)) + "\n" + json.dumps(entry(2))[:9])
    EpochLog(path, [entry(1), entry(2)])
    assert lines(path) == [entry(1), entry(2)]

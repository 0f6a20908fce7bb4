"""Run folders under attack and accident: crafted, torn and foreign checkpoints, two runs on one
folder, data that changed since training, resumes under other settings, full disks, kills."""
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from dmfx.checkpoint import (CheckpointError, RunFolderBusy, RunLock, atomic_write,
                             load_checkpoint, save_checkpoint, write_json)
from dmfx.cli import main
from dmfx.data import read_npz, synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--user-layers", "16,8", "--item-layers", "16,8", "--eval-negatives", "20",
        "--batch-size", "128", "--lr", "0.003", "--quiet"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "tiny.npz"
    synthetic(50, 90, 1200, seed=2).save_npz(path)
    return path


@pytest.fixture
def trained(data_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data_file), "--epochs", "1", "--output", str(out), *TINY]) == 0
    return out


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmfx: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


class Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_runs_no_code(trained, data_file, tmp_path, capsys):
    marker = tmp_path / "pwned"
    saved = load_checkpoint(trained / "checkpoint.pt")
    crafted = trained / "checkpoint.pt"
    with open(crafted, "wb") as f:  # a torch.save'd dict with a code-running object inside
        torch.save({**saved, "extra": Payload(marker)}, f)
    commands = [["evaluate", str(crafted)], ["recommend", str(crafted), "--user", "3"],
                ["train", "--data", str(data_file), "--epochs", "2", "--output", str(trained),
                 "--resume", *TINY]]
    for argv in commands:
        assert main(argv) == 2
        one_line_error(capsys, "is not a readable dmfx checkpoint")
    assert not marker.exists()


def test_a_mapped_checkpoint_holds_what_a_read_one_holds(trained):
    read = load_checkpoint(trained / "checkpoint.pt")
    mapped = load_checkpoint(trained / "checkpoint.pt", mmap=True)
    assert mapped.keys() == read.keys() and mapped["data"] == read["data"]
    for name, value in read["model_state"].items():
        assert torch.equal(mapped["model_state"][name], value)


def test_a_checkpoint_from_before_the_header_is_named_as_such(trained, tmp_path):
    saved = load_checkpoint(trained / "checkpoint.pt")
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in saved.items() if k not in ("format", "version")}, old)
    with pytest.raises(CheckpointError, match="early dmfx, before checkpoint format version 1"):
        load_checkpoint(old)


NOT_TORCH = "is not a readable dmfx checkpoint (not a torch checkpoint, or it holds objects other " \
            "than tensors and plain data)"


@pytest.mark.parametrize("content, message", [
    (b"", NOT_TORCH),
    (b"\x00garbage" * 100, NOT_TORCH),
    (b'{"model": "dmf"}\n', NOT_TORCH),  # '{' is a pickle opcode: torch tried to unpickle it
    (b"user,item,rating\n1,2,5\n", NOT_TORCH),
    ("truncated", "is not a readable dmfx checkpoint (torn or truncated: a torch checkpoint cut "
                  "short)"),
    ("module", "is not a readable dmfx checkpoint (a torch file that holds objects other than "
               "tensors and plain data)"),
    ("foreign", "is not a dmfx checkpoint"),
    ("list", "is not a dmfx checkpoint"),
    ("version", "format version 99; this dmfx reads version 1"),
])
def test_broken_and_foreign_checkpoints_give_one_line(trained, content, message, capsys):
    path = trained / "checkpoint.pt"
    whole = path.read_bytes()
    if content == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    elif content == "module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif content == "foreign":
        torch.save({"model_state": {}}, path)
    elif content == "list":
        torch.save([1, 2, 3], path)
    elif content == "version":
        torch.save({**torch.load(path, weights_only=True), "version": 99}, path)
    else:
        path.write_bytes(content)
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_checkpoint(path, mmap=mmap)
    assert main(["evaluate", str(path)]) == 2
    err = one_line_error(capsys, message)
    # not torch's advice to load with weights_only=False (which runs the file's code), no colours
    assert "weights_only" not in err and "\x1b" not in err


def test_a_second_run_on_a_busy_folder_is_refused_at_start(data_file, tmp_path, capsys):
    out = tmp_path / "busy"
    with RunLock(out):
        with pytest.raises(RunFolderBusy):
            RunLock(out).__enter__()
        assert main(["train", "--data", str(data_file), "--output", str(out), *TINY]) == 2
        one_line_error(capsys, "is in use by another dmfx run", str(os.getpid()))
    with RunLock(out):  # released on exit
        pass


def test_a_killed_holder_releases_the_lock(tmp_path):
    out = tmp_path / "killed"
    code = f"from dmfx.checkpoint import RunLock; import time; lock = RunLock({str(out)!r}).__enter__(); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            RunLock(out).__enter__()
    finally:
        holder.kill()
        holder.wait()
    (out / ".checkpoint.pt.abc.tmp").write_bytes(b"torn")
    with RunLock(out):
        assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_a_run_that_wrote_nothing_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # a failure after the lock is taken: the default runs/NAME folder and runs/ itself go again
    assert main(["train", "--data", "ratings.csv", *TINY]) == 2
    one_line_error(capsys, "--data: no file at ratings.csv")
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    kept.mkdir()
    with RunLock(kept / "a" / "b"):
        (kept / "other").mkdir()  # made meanwhile by someone else: kept, and so is kept/
    assert sorted(p.name for p in kept.iterdir()) == ["other"]
    with RunLock(kept):  # a folder that was there before is kept, the run's lock file is not
        pass
    assert sorted(p.name for p in kept.iterdir()) == ["other"]
    with RunLock(kept):
        (kept / "metrics.json").write_text("{}")  # a run that wrote keeps its lock file
    assert sorted(p.name for p in kept.iterdir()) == [".lock", "metrics.json", "other"]


def test_concurrent_writers_never_tear_a_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    errors, seen = [], set()
    stop = threading.Event()

    def writer(k):
        try:
            for _ in range(40):
                save_checkpoint(path, {"a": torch.full((20000,), float(k)), "b": torch.full((20000,), float(k))})
        except Exception as error:  # noqa: BLE001 - the test reports whatever a writer hit
            errors.append(error)

    def reader():
        # What the reader met goes to the main thread: an exception in a thread only warns.
        try:
            while not stop.is_set():
                if path.exists():
                    saved = load_checkpoint(path)
                    values = torch.cat([saved["a"], saved["b"]]).unique().tolist()
                    if len(values) != 1:  # one writer's tensors, never a mix
                        errors.append(f"torn file: {values}")
                    seen.add(values[0])
        except Exception as error:  # noqa: BLE001 - a load that failed is a finding too
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (1, 2)]
    check = threading.Thread(target=reader)
    check.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    check.join(timeout=120)
    assert not any(t.is_alive() for t in (*threads, check)), "a thread hangs"
    assert not errors, errors
    assert seen <= {1.0, 2.0} and seen
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"hr@10": 0.5, "nan": float("nan"), "inf": [float("inf")]})
    assert json.loads(path.read_text()) == {"hr@10": 0.5, "nan": None, "inf": [None]}

    def disk_full(f):
        f.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, disk_full)
    assert json.loads(path.read_text())["hr@10"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_full_disk_is_one_line(data_file, tmp_path, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    out = tmp_path / "full"
    assert main(["train", "--data", str(data_file), "--epochs", "1", "--output", str(out), *TINY]) == 2
    one_line_error(capsys, "No space left on device")
    # The settings and the (empty) epoch log are written before training; no torn file is left.
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.toml", "epochs.jsonl"]


def test_evaluate_refuses_changed_data_unless_allowed(trained, data_file, capsys):
    data = read_npz(data_file)
    changed = data.ratings.copy()
    changed[::7] = np.where(changed[::7] > 1, changed[::7] - 1, changed[::7] + 1)
    type(data)(data.user_ids, data.item_ids, data.users, data.items, changed,
               data.timestamps).save_npz(data_file)
    checkpoint = str(trained / "checkpoint.pt")
    assert main(["evaluate", checkpoint]) == 2
    one_line_error(capsys, "is not the file", "--allow-data-change")
    assert main(["evaluate", checkpoint, "--allow-data-change"]) == 0
    assert "hr@10" in json.loads(capsys.readouterr().out)["test"]


def test_data_with_a_new_item_names_the_weights_that_do_not_fit(trained, data_file, capsys):
    data = read_npz(data_file)
    extra = np.array([0])  # user 0 rates an item the model never saw
    type(data)(data.user_ids, np.append(data.item_ids, 10**6), np.append(data.users, extra),
               np.append(data.items, data.num_items), np.append(data.ratings, 5.0),
               np.append(data.timestamps, data.timestamps.max() + 1)).save_npz(data_file)
    assert main(["evaluate", str(trained / "checkpoint.pt"), "--allow-data-change"]) == 2
    # torch's first line names the model alone; the one after it says what does not fit
    one_line_error(capsys, "does not fit the data read now (size mismatch for ",
                   "torch.Size([90, 16])", "torch.Size([91, 16])")


def test_a_checkpoint_pointing_at_another_file_reads_none_of_it(trained, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-line\n")
    saved = load_checkpoint(trained / "checkpoint.pt")
    saved["data"]["spec"]["data"] = str(secret)
    save_checkpoint(trained / "checkpoint.pt", {k: v for k, v in saved.items() if k not in ("format", "version")})
    assert main(["evaluate", str(trained / "checkpoint.pt")]) == 2
    assert "top-secret" not in one_line_error(capsys, "is not the file")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["data"]["spec"].update(future=1),
     "holds records this version of dmfx does not read (DataSpec.__init__() got an unexpected "
     "keyword argument 'future')"),
    (lambda s: s["data"].pop("file"), "has no 'file' record: not written by this version"),
    (lambda s: s["model"].pop("kind"), "has no 'kind' record: not written by this version"),
], ids=["unknown-setting", "no-file", "no-kind"])
def test_a_checkpoint_of_another_version_is_a_one_line_error(trained, tmp_path, capsys, edit,
                                                             message):
    """A data setting this version does not know raised a TypeError traceback; a missing
    record said only its name ("dmfx: error: file")."""
    saved = load_checkpoint(trained / "checkpoint.pt")
    edit(saved)
    path = tmp_path / "other.pt"
    save_checkpoint(path, {k: v for k, v in saved.items() if k not in ("format", "version")})
    assert main(["evaluate", str(path)]) == 2
    one_line_error(capsys, f"{path} {message}")


def test_evaluate_from_elsewhere_and_after_a_move(data_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(data_file.parent)
    out = tmp_path / "relative"
    assert main(["train", "--data", data_file.name, "--epochs", "1", "--output", str(out), *TINY]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(out / "checkpoint.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(test)
    moved = data_file.rename(tmp_path / "moved.npz")
    assert main(["evaluate", str(out / "checkpoint.pt")]) == 2
    one_line_error(capsys, "which is gone", "--data")
    assert main(["evaluate", str(out / "checkpoint.pt"), "--data", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(test)


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0.01"], "(--lr 0.003 -> 0.01)"),
    (["--negatives", "3"], "(--negatives 7 -> 3)"),
    (["--loss", "ce"], "(--loss 'nce' -> 'ce')"),
    (["--user-layers", "32,8"], "(--user-layers [16, 8] -> [32, 8])"),
    (["--eval-negatives", "10"], "(--protocol sampled:N 20 -> 10)"),
    (["--split-seed", "1"], "(--split-seed 0 -> 1)"),
])
def test_resume_refuses_changed_settings(trained, data_file, flags, message, capsys):
    argv = ["train", "--data", str(data_file), "--epochs", "2", "--output", str(trained),
            "--resume", *TINY]
    assert main(argv + flags) == 2
    # named by the flags that set them; progress, which no flag sets, is left out
    err = one_line_error(capsys, message)
    assert err.endswith("; a resumed run may change only --epochs, --patience, --max-steps, "
                        "--checkpoint-every, --track-test")
    assert main(argv + ["--patience", "3"]) == 0  # how long it runs may change


def test_resume_refuses_changed_data(trained, data_file, capsys):
    synthetic(50, 90, 1200, seed=3).save_npz(data_file)
    assert main(["train", "--data", str(data_file), "--epochs", "2", "--output", str(trained),
                 "--resume", *TINY]) == 2
    one_line_error(capsys, "data.fingerprint")


@pytest.mark.parametrize("argv_extra", [[], ["sub"]], ids=["file", "under-file"])
def test_output_that_cannot_hold_a_run_fails_before_training(data_file, tmp_path, argv_extra,
                                                             capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker.joinpath(*argv_extra)
    assert main(["train", "--data", str(data_file), "--output", str(out), *TINY]) == 2
    one_line_error(capsys, f"dmfx: error: --output: {blocker} exists and is not a folder")
    assert "epoch" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--threads", "-1"], "--threads must be >= 1, got -1"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--device", "bogus"], "--device: expected auto, cpu, cuda or cuda:N, got 'bogus'"),
    (["--device", "meta"], "--device: expected auto, cpu, cuda or cuda:N, got 'meta'"),
])
def test_bad_run_flags_give_one_line(data_file, tmp_path, argv, message, capsys):
    assert main(["train", "--data", str(data_file), "--output", str(tmp_path / "x"), *TINY, *argv]) == 2
    one_line_error(capsys, message)


def test_sigkill_anywhere_leaves_a_loadable_checkpoint_and_resume_retraces(tmp_path):
    """Kills a real training process at random moments and right inside checkpoint writes, then
    resumes until it finishes: the folder always holds a loadable checkpoint, and the end equals
    an uninterrupted run."""
    data = tmp_path / "d.npz"
    synthetic(300, 2000, 6000, seed=2).save_npz(data)
    # Wide first layers make each checkpoint ~10 MB, so a write takes long enough to be hit; 30
    # short epochs outlast the first kills (an attempt killed at random gets through ~8 of them,
    # one killed inside its first write 1), so at least 5 kills happen.
    argv = [sys.executable, "-m", "dmfx", "train", "--data", str(data), "--user-layers", "256,8",
            "--item-layers", "256,8", "--epochs", "30", "--patience", "0", "--eval-negatives", "20",
            "--batch-size", "4096", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(argv + ["--output", str(tmp_path / "whole")], env=env, check=True,
                   capture_output=True)
    out = tmp_path / "killed"
    seed = 0  # of the random moments; where they fall in training is up to the machine's timing
    rng = random.Random(seed)
    kills = inside_write = 0
    for attempt in range(40):
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        process = subprocess.Popen(argv + ["--output", str(out)] + resume, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 10 or not inside_write:  # and on, inside writes only, until one is hit
            if attempt % 2 or kills >= 10:  # the moment a temporary checkpoint appears
                deadline = time.monotonic() + 30
                while process.poll() is None and time.monotonic() < deadline:
                    if list(out.glob(".checkpoint.pt.*.tmp")):
                        break
                    time.sleep(0.001)
            else:
                try:
                    process.wait(timeout=rng.uniform(0.5, 3.0))
                except subprocess.TimeoutExpired:
                    pass
            if process.poll() is None:
                inside_write += bool(list(out.glob(".checkpoint.pt.*.tmp")))
                process.send_signal(signal.SIGKILL)
                kills += 1
        _, err = process.communicate(timeout=120)
        if (out / "checkpoint.pt").exists():
            load_checkpoint(out / "checkpoint.pt")
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, (seed, err.decode())
    assert process.returncode == 0, seed
    assert kills >= 5 and inside_write >= 1, (seed, kills, inside_write)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model_state"]
    resumed = load_checkpoint(out / "checkpoint.pt")["model_state"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole), seed
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 31))

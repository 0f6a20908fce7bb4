"""Training on two real processes (gloo on CPU): ddp and sharded DMF take the steps of one process
on the same global batches, a dead rank stops the other with an error instead of a hang, and a
killed run resumes to the weights of an uninterrupted one. Ranks are separate Python processes
started with torchrun's environment (or by torchrun itself), each with one thread; every wait
on them is bounded, so a broken collective fails the test instead of hanging it."""
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import dmfx
from dmfx.checkpoint import CheckpointError, load_checkpoint
from dmfx.cli import main
from dmfx.data import leave_one_out, synthetic
from dmfx.models import DMF
from dmfx.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(dmfx.__file__).resolve().parent.parent
CPU = torch.device("cpu")
# (mode, sparse_grad) of the runs compared with one process.
CASES = [("ddp", False), ("ddp", True), ("sharded", False), ("sharded", True)]
EPOCHS = 2
# 5,440 training pairs (1,360 observed, 3 negatives each) in batches of 147: the slices of two
# ranks differ by one, and the last batch (1 pair) leaves rank 1 an empty slice.
BATCH = 147
WAIT = 240  # seconds a group of ranks may take before the test gives up on it (a guard)


def _split():
    return leave_one_out(synthetic(60, 120, 1480, seed=3), num_negatives=20, seed=0)


def _config(epochs=EPOCHS, checkpoint_every=0, **more):
    return TrainConfig(epochs=epochs, batch_size=BATCH, lr=3e-3, num_negatives=3, patience=0,
                       checkpoint_every=checkpoint_every, progress=False, **more)


# Pairs drawn per batch, and a step limit that cuts the second epoch (37 full batches and one
# of a single pair an epoch): the other way through an epoch, and a run ended inside one.
BATCH_PAIRS = dict(pairs="batch", max_steps=41)


def _layers(sparse_grad):
    return dict(user_layers=[16, 8], item_layers=[16, 8], sparse_grad=sparse_grad)


# -- what each rank runs ---------------------------------------------------------------------


def _rank_main(scenario: str, out: str) -> None:
    """One rank of ``scenario``; rank 0 saves what the test checks under ``out``."""
    from dmfx.distributed import DistributedError, World, init_process_group

    torch.set_num_threads(1)
    out = Path(out)
    init_process_group(CPU, timeout=60)
    split = _split()
    if scenario == "match":
        _share(World("sharded", CPU, 60), out)
        for mode, sparse_grad in CASES:
            _train(World(mode, CPU, 60), split, sparse_grad, out / f"{mode}-{sparse_grad}")
        _dropout_seed(World("ddp", CPU, 60), split, out)
        _train(World("ddp", CPU, 60), split, False, out / "ddp-batch-pairs", config=BATCH_PAIRS)
        # the run the "killed" scenario left behind, continued
        _train(World("sharded", CPU, 60), split, True, out / "killed", resume=True)
    elif scenario == "unpicklable":
        from dmfx.train import ResumeRefused

        def refuse():  # an exception whose __init__ takes more than a message
            raise ResumeRefused("run/checkpoint.pt", [("lr", 0.1, 0.2)])

        try:
            World("ddp", CPU, 60).on_main("checking the run", refuse)
        except Exception as error:
            (out / f"error{dist_rank()}.txt").write_text(f"{type(error).__name__}: {error}")
    elif scenario == "killed":
        world = World("sharded", CPU, 60)
        try:
            # checkpoints every 2 steps: the last one, after step 4, is inside the epoch
            _train(world, split, True, out / "killed", kill_in_epoch=EPOCHS,
                   checkpoint_every=2)
        except DistributedError as error:
            (out / f"error{world.rank}.txt").write_text(str(error))
            os._exit(3)
    torch.distributed.destroy_process_group()


def dist_rank() -> int:
    return torch.distributed.get_rank()


def _share(world, out: Path) -> None:
    """World.share_split: what each rank gets, and rank 0's error on every rank."""
    from dataclasses import replace

    reads = []

    def read_and_split():
        reads.append(1)
        data = synthetic(60, 120, 1480, seed=3)
        data = replace(data, user_ids=np.array([f"user-{k:03d}" for k in range(data.num_users)]))
        return leave_one_out(data, num_negatives=20, seed=0), {"rows": data.nnz}

    got, info = world.share_split(read_and_split)
    np.savez(out / f"shared{world.rank}.npz", reads=len(reads), rows=info["rows"],
             valid_negatives=got.valid_negatives, test_negatives=got.test_negatives,
             **{name: getattr(got.train, name) for name in ("user_ids", "item_ids", "users",
                                                            "items", "ratings")},
             **{name: getattr(got, name) for name in ("valid_users", "valid_items",
                                                      "test_users", "test_items")})

    def fails():
        raise FileNotFoundError("ratings.csv: no such file")

    try:
        world.share_split(fails)
    except FileNotFoundError as error:
        (out / f"share-error{world.rank}.txt").write_text(str(error))


def _dropout_seed(world, split, out: Path) -> None:
    """The seed of each rank's dropout masks in epoch 1 (EINMF under ddp), and its draws once
    the generators are gathered (as a checkpoint inside an epoch holds them) and restored."""
    from dmfx.distributed import DistributedEpochs
    from dmfx.models import build_model, train_config

    epochs = DistributedEpochs(build_model("einmf", split.train), split,
                               train_config("einmf", progress=False), world)
    torch.manual_seed(epochs.dropout_seed(1))
    state = epochs.generator_state()
    torch.rand(5)  # the draws of the steps after the checkpoint, then a resume
    epochs.set_generator_state(state)
    (out / f"dropout{world.rank}.json").write_text(json.dumps(
        {"seed": epochs.dropout_seed(1), "draws": torch.rand(5).tolist(),
         "ranks": len(state["ranks"])}))


def _train(world, split, sparse_grad, prefix: Path, kill_in_epoch=None, resume=False,
           checkpoint_every=0, config=None):
    torch.manual_seed(0)
    model = world.build_model("dmf", split.train, _layers(sparse_grad), seed=0).double()
    whole = world.gather_model(model, split.train)
    init = None if whole is None else {k: v.clone() for k, v in whole.state_dict().items()}
    epochs_done = []
    if kill_in_epoch is not None and world.rank == 1:
        loss, calls = model.loss, []

        def dying_loss(*args):  # rank 1 dies in the middle of an epoch, inside a step
            if len(epochs_done) == kill_in_epoch - 1:
                calls.append(1)
                if len(calls) == 5:
                    os._exit(1)
            return loss(*args)

        model.loss = dying_loss
    state = fit(model, split, _config(checkpoint_every=checkpoint_every, **(config or {})),
                world=world,
                checkpoint=prefix.with_suffix(".pt"),
                resume=resume, on_epoch_end=lambda epoch, entry: epochs_done.append(epoch))
    final = world.gather_model(model, split.train)
    if world.main:
        torch.save({"init": init, "final": final.state_dict(), "history": state.history},
                   prefix.with_suffix(".result"))


# -- starting ranks ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _wait(processes) -> list:
    """Exit codes of ``processes``; any still running after WAIT seconds is killed and fails
    the test (a hang, not a slow machine: the runs take seconds)."""
    codes, logs = [], []
    try:
        for p in processes:
            out, _ = p.communicate(timeout=WAIT)
            codes.append(p.returncode)
            logs.append(out)
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        pytest.fail(f"ranks still running after {WAIT} s: a collective hangs")
    return codes, logs


def _ranks(scenario: str, out: Path, world: int = 2) -> tuple[list, list]:
    port = _free_port()
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_distributed import _rank_main; _rank_main({scenario!r}, {str(out)!r})")
    processes = [subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                 LOCAL_RANK=str(rank), WORLD_SIZE=str(world)))
        for rank in range(world)]
    return _wait(processes)


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split():
    return _split()


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A sharded run on 2 ranks whose rank 1 dies inside the last epoch: the folder and what
    the ranks said, before anything resumes it."""
    out = tmp_path_factory.mktemp("runs")
    codes, logs = _ranks("killed", out)
    error = out / "error0.txt"
    return out, dict(codes=codes, logs=logs, error=error.read_text() if error.exists() else None,
                     committed=load_checkpoint(out / "killed.pt")["shards"],
                     shards=sorted(p.name for p in out.glob("killed.rank*")))


@pytest.fixture(scope="module")
def matched(killed):
    """Every case of CASES trained on 2 ranks, then the killed run resumed (one pair of
    processes, one run after another)."""
    out = killed[0]
    codes, logs = _ranks("match", out)
    assert codes == [0, 0], logs
    return out


def test_the_last_batch_leaves_a_rank_an_empty_slice(split):
    pairs = (1 + _config().num_negatives) * split.train.nnz
    assert pairs % BATCH == 1


@pytest.mark.parametrize("mode, sparse_grad", CASES,
                         ids=[f"{m}-{'sparse' if s else 'dense'}-adam" for m, s in CASES])
def test_two_ranks_take_the_steps_of_one_process(matched, split, mode, sparse_grad):
    result = torch.load(matched / f"{mode}-{sparse_grad}.result", weights_only=True)
    one = DMF(split.train, **_layers(sparse_grad)).double()
    one.load_state_dict(result["init"])  # sharded tables start from their own draw
    state = fit(one, split, _config())
    two = result["history"]
    assert [h["epoch"] for h in two] == list(range(1, EPOCHS + 1))
    for a, b in zip(state.history, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-10)
        assert b["valid"] == pytest.approx(a["valid"], rel=1e-10)  # evaluated on rank 0
        assert len(b["peak_memory_mb_per_rank"]) == 2
    assert result["final"].keys() == one.state_dict().keys()
    for name, x in one.state_dict().items():
        # float64: only the order of the ranks' partial sums differs
        torch.testing.assert_close(result["final"][name], x, rtol=1e-9, atol=1e-12, msg=name)


def test_two_ranks_draw_pairs_per_batch_and_stop_at_max_steps_as_one_process(matched, split):
    result = torch.load(matched / "ddp-batch-pairs.result", weights_only=True)
    one = DMF(split.train, **_layers(False)).double()
    one.load_state_dict(result["init"])
    state = fit(one, split, _config(**BATCH_PAIRS))
    assert [(h["steps"], h["batches"]) for h in result["history"]] == [(38, 38), (3, 38)]
    for a, b in zip(state.history, result["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-10)
        assert b["valid"] == pytest.approx(a["valid"], rel=1e-10)
    for name, x in one.state_dict().items():
        torch.testing.assert_close(result["final"][name], x, rtol=1e-9, atol=1e-12, msg=name)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


@pytest.mark.parametrize("sparse_grad", [False, True], ids=["dense-adam", "sparse-adam"])
def test_each_rank_stores_its_half_of_the_tables_and_of_their_adam_state(matched, split,
                                                                          sparse_grad):
    items, users = split.train.num_items, split.train.num_users
    for rank, share in enumerate((lambda n: (n + 1) // 2, lambda n: n // 2)):
        shard = load_checkpoint(matched / f"sharded-{sparse_grad}.rank{rank}-of-2.epoch{EPOCHS}.pt")
        state = shard["model_state"]
        assert state["user_tower.first"].shape == (share(items), 16)  # W_U1: a row per item
        assert state["item_tower.first"].shape == (share(users), 16)  # W_V1: a row per user
        # Adam's two moments of each table, at the shard's size (the dense layers are 8 x 16)
        moments = sorted(t.shape[0] for t in _tensors(shard["runner"])
                         if t.dim() == 2 and t.shape[0] > 8)
        assert moments == sorted([share(items)] * 2 + [share(users)] * 2)


@pytest.mark.parametrize("input", ["rating", "binary"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_a_rank_builds_only_its_columns_of_y(split, input, ranks):
    from dmfx.distributed import _column_share

    train = split.train
    for transpose in (False, True):
        whole = train.to_scipy(input, transpose)
        total = whole.shape[1]
        bounds = [total * r // ranks for r in range(ranks + 1)]
        shares = [_column_share(train, input, transpose, lo, hi)
                  for lo, hi in zip(bounds, bounds[1:])]
        for share, lo, hi in zip(shares, bounds, bounds[1:]):
            assert share.shape == (whole.shape[0], hi - lo)
            indptr, indices = share.indptr.numpy(), share.indices.numpy()
            assert all(np.all(np.diff(indices[a:b]) > 0) for a, b in zip(indptr, indptr[1:]))
            rebuilt = sp.csr_matrix((share.values.numpy(), indices, indptr), shape=share.shape)
            assert (rebuilt != whole[:, lo:hi]).nnz == 0


def test_each_rank_draws_its_own_dropout_masks(matched, split):
    """One seed on every rank gave rank r's slice the masks of rank 0's, row for row."""
    from dmfx.models import build_model, train_config
    from dmfx.train import GradientEpochs

    ranks = [json.loads((matched / f"dropout{rank}.json").read_text()) for rank in range(2)]
    one = GradientEpochs(build_model("einmf", split.train), split,
                         train_config("einmf", progress=False))
    assert ranks[0]["seed"] == one.dropout_seed(1) and ranks[1]["seed"] != ranks[0]["seed"]
    # A resume inside an epoch gives each rank its own generator back, not rank 0's.
    for rank in ranks:
        assert rank["ranks"] == 2
        torch.manual_seed(rank["seed"])
        assert rank["draws"] == torch.rand(5).tolist()


def test_rank_0_alone_reads_and_splits_and_the_others_receive_the_split(matched):
    main, other = (np.load(matched / f"shared{rank}.npz") for rank in (0, 1))
    assert (int(main["reads"]), int(other["reads"])) == (1, 0)
    assert int(other["rows"]) == int(main["rows"]) == 1480  # the small info travels too
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "valid_users",
                 "valid_items", "test_users", "test_items"):
        assert main[name].dtype == other[name].dtype, name
        assert np.array_equal(main[name], other[name]), name
    assert main["user_ids"][0] == "user-000"  # string ids (pickled) as well as numbers
    # the sampled evaluation items stay on rank 0, which evaluates
    assert main["test_negatives"].shape == (len(main["test_users"]), 20)
    for part in ("valid", "test"):
        negatives = other[f"{part}_negatives"]
        assert negatives.shape == (len(other[f"{part}_users"]), 0)
        assert negatives.dtype == main[f"{part}_negatives"].dtype
    # rank 0's error is raised on every rank, as rank 0 raised it
    for rank in (0, 1):
        assert (matched / f"share-error{rank}.txt").read_text() == "ratings.csv: no such file"


def test_sharded_tables_start_alike_on_any_number_of_ranks(matched, split):
    from dmfx.distributed import ShardedDMF, World, init_process_group

    init_process_group(CPU, timeout=30)  # this process alone
    with World("sharded", CPU, 30) as world:
        torch.manual_seed(0)
        alone = ShardedDMF(split.train, world, 0, **_layers(False)).double()
        two = torch.load(matched / "sharded-False.result", weights_only=True)["init"]
        for name, x in alone.state_dict().items():
            assert torch.equal(x, two[name]), name


def test_a_dead_rank_stops_the_other_with_a_one_line_error(killed):
    _, run = killed
    assert run["codes"] == [3, 1], run["logs"]  # rank 0 reported an error; rank 1 died
    error = run["error"]
    assert error.startswith("rank 0 of 2: ") and "another rank stopped" in error, error
    assert "--resume" in error and "\n" not in error
    # the last epoch was cut short after step 4: the checkpoint of its step 4 is committed,
    # with every rank's shard
    assert run["committed"] == {"epoch": EPOCHS - 1, "partial_steps": 4}
    assert run["shards"] == [f"killed.rank{r}-of-2.epoch{EPOCHS - 1}.step4.pt" for r in (0, 1)]


def test_one_process_refuses_the_checkpoint_of_two_ranks(killed, split):
    out, _ = killed
    with pytest.raises(CheckpointError, match=r"written by 2 rank\(s\) under --distributed "
                                              r"sharded, this run has one process.*--nproc_per_node"):
        fit(DMF(split.train, **_layers(True)).double(), split, _config(),
            checkpoint=out / "killed.pt", resume=True)


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(matched):
    resumed = torch.load(matched / "killed.result", weights_only=True)
    whole = torch.load(matched / "sharded-True.result", weights_only=True)
    strip = lambda history: [{k: v for k, v in h.items() if k in ("epoch", "loss", "valid")}
                             for h in history]
    assert strip(resumed["history"]) == strip(whole["history"])
    for name, x in whole["final"].items():
        assert torch.equal(resumed["final"][name], x), name


TINY = ["--user-layers", "16,8", "--item-layers", "16,8", "--eval-negatives", "20",
        "--batch-size", "128", "--lr", "0.003", "--epochs", "2", "--quiet"]


def test_torchrun_trains_sharded_and_rank_0_writes_the_run(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "dmfx", "train", "--data", str(data_file),
               "--distributed", "sharded", "--dist-timeout", "60", "--device", "cpu",
               "--output", str(out), *TINY]
    codes, logs = _wait([subprocess.Popen(command, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, env=_env())])
    assert codes == [0], logs
    assert logs[0].count("dmf on tiny: test HR@10") == 1  # printed by rank 0 only
    assert len((out / "epochs.jsonl").read_text().splitlines()) == 2
    assert 'distributed = "sharded"' in (out / "config.toml").read_text()
    assert sorted(p.name for p in out.glob("checkpoint*")) == [
        "checkpoint.pt", "checkpoint.rank0-of-2.epoch2.pt", "checkpoint.rank1-of-2.epoch2.pt"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["distributed"] == {"mode": "sharded", "world_size": 2}
    # model.pt is a plain DMF with the gathered tables: evaluated alone, the same metrics
    assert main(["evaluate", str(out / "model.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(metrics["test"])
    # checkpoint.pt holds no weights (they are in the ranks' files): refused by name
    assert main(["evaluate", str(out / "checkpoint.pt")]) == 2
    assert "checkpoint of a --distributed sharded run" in capsys.readouterr().err


def test_rank_0s_error_reaches_the_others_even_when_it_cannot_be_pickled(tmp_path):
    codes, logs = _ranks("unpicklable", tmp_path)
    assert codes == [0, 0], logs
    # rank 0 raises its own exception; rank 1 gets its type and message
    assert (tmp_path / "error0.txt").read_text().startswith("ResumeRefused: ")
    message = (tmp_path / "error1.txt").read_text()
    assert message.startswith("DistributedError: rank 0: ResumeRefused: "), message
    assert "lr 0.1 -> 0.2" in message


# Rank 0's final evaluation made slower than --dist-timeout: the others must wait it out.
_SLOW_FINAL = """
import os, sys, time
import dmfx.cli as cli
evaluate = cli.evaluate  # the final evaluation's (the epochs' goes through dmfx.train)
def slow(*args, **kwargs):
    if os.environ["RANK"] == "0":
        time.sleep({delay})
    return evaluate(*args, **kwargs)
cli.evaluate = slow
sys.exit(cli.main(sys.argv[1:]))
"""


def test_torchrun_ddp_einmf_resumes_exactly_and_outwaits_a_slow_final_evaluation(
        data_file, tmp_path):
    """EINMF (dropout: every rank's generator is in the checkpoint) under ddp, cut inside an
    epoch and resumed, ends with the weights of an uninterrupted run; the uninterrupted run's
    rank 0 spends longer on its final evaluation than --dist-timeout, which only the epochs'
    collectives must fit."""
    timeout = 8
    script = tmp_path / "slow_final.py"
    script.write_text(_SLOW_FINAL.format(delay=timeout + 4))

    def run(out, *flags, entry=("-m", "dmfx")):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node=2", *entry, "train", "--data", str(data_file),
                   "--model", "einmf", "--factors", "8", "--distributed", "ddp",
                   "--dist-timeout", str(timeout), "--device", "cpu", "--output", str(out),
                   *TINY[4:], *flags]
        codes, logs = _wait([subprocess.Popen(command, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True, env=_env())])
        assert codes == [0], logs

    run(tmp_path / "whole", entry=(str(script),))
    run(tmp_path / "cut", "--max-steps", "30", "--checkpoint-every", "7")
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint*")) == ["checkpoint.pt"]
    run(tmp_path / "cut", "--max-steps", "0", "--resume")
    whole, cut = (load_checkpoint(tmp_path / name / "model.pt") for name in ("whole", "cut"))
    for name, x in whole["model_state"].items():
        assert torch.equal(cut["model_state"][name], x), name
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text())["test"]
               for name in ("whole", "cut")]
    assert metrics[0] == metrics[1]


def test_one_rank_keeps_the_gpu_it_was_given(monkeypatch):
    """--distributed without torchrun and --device cuda:1 trains on cuda:1 (it took LOCAL_RANK's
    cuda:0 while config.toml said cuda:1); a GPU the machine lacks is refused by name."""
    from dmfx import distributed

    for name in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "RANK"):
        monkeypatch.delenv(name, raising=False)
    picked = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    monkeypatch.setattr(distributed, "init_process_group", lambda device, timeout: None)
    monkeypatch.setattr(distributed, "World", lambda mode, device, timeout: device)
    assert distributed.start("ddp", torch.device("cuda", 1), 60.0, "dmf") == torch.device("cuda", 1)
    assert distributed.start("ddp", torch.device("cuda"), 60.0, "dmf") == torch.device("cuda", 0)
    assert picked == [torch.device("cuda", 1), torch.device("cuda", 0)]
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 GPU\(s\)"):
        distributed.start("ddp", torch.device("cuda", 2), 60.0, "dmf")


@pytest.mark.parametrize("flags, message", [
    (["--distributed", "sharded", "--model", "lfm"],
     "--distributed sharded splits DMF's first-layer tables over the ranks; model lfm has none"),
    (["--distributed", "ddp", "--model", "itempop"], "model itempop is trained in closed form"),
    (["--distributed", "pipeline"], "--distributed: expected ddp or sharded, got 'pipeline'"),
    (["--distributed", "ddp", "--dist-timeout", "0"], "--dist-timeout must be > 0 seconds"),
])
def test_settings_that_cannot_run_distributed_are_refused_by_flag(data_file, tmp_path, capsys,
                                                                   flags, message):
    argv = ["train", "--data", str(data_file), "--output", str(tmp_path / "run"), "--quiet", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmfx: error:") and message in err and "\n" not in err, err
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "run").exists()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and dmfx.cuda_enabled()),
    reason="no CUDA device or dmfx built without CUDA kernels: the NCCL run needs one GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_sharded_on_one_rank_without_torchrun(data_file, tmp_path, capsys, device):
    """--distributed without torchrun: a group of this process alone (gloo, or NCCL on one
    GPU), every collective of the sharded mode included; resumable like any run."""
    out = tmp_path / "run"
    argv = ["train", "--data", str(data_file), "--distributed", "sharded", "--device", device,
            "--output", str(out), *TINY]
    assert main(argv) == 0
    assert not torch.distributed.is_initialized()  # left at the end
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["distributed"] == {"mode": "sharded", "world_size": 1}
    capsys.readouterr()
    argv[argv.index("2", argv.index("--epochs"))] = "3"
    assert main([*argv, "--resume"]) == 0
    capsys.readouterr()
    history = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert main(["evaluate", str(out / "model.pt")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(metrics["test"])


def test_a_row_sparse_gradient_without_rows_stays_a_gradient():
    """A batch whose items no one rated leaves the item table an empty sparse gradient: one
    process's optimizer counts that step, so a rank's must too (None skipped it)."""
    from dmfx.distributed import World, init_process_group
    from dmfx.optim import RowSparseAdam

    init_process_group(CPU, timeout=60)
    with World("ddp", CPU, 60) as world:
        empty, untouched = (torch.nn.Parameter(torch.ones(4, 3)) for _ in range(2))
        empty.grad = torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.long),
                                             torch.zeros(0, 3), (4, 3), check_invariants=False)
        with warnings.catch_warnings():  # torch's note on sparse invariant checks, every rank
            warnings.simplefilter("error")
            world.sum_gradients([], [empty, untouched], torch.zeros((), dtype=torch.float64))
        assert untouched.grad is None
        assert empty.grad is not None and empty.grad.is_sparse and empty.grad._nnz() == 0
        optimizer = RowSparseAdam([empty, untouched], lr=0.1)
        optimizer.step()
        assert optimizer.state[empty]["step"] == 1 and untouched not in optimizer.state
    assert not torch.distributed.is_initialized()

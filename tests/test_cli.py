"""The dmfx command end to end on a tiny synthetic data set."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmfx.checkpoint import load_checkpoint
from dmfx.cli import main, parse_args
from dmfx.train import peak_memory_mb

TINY = ["--user-layers", "16,8", "--item-layers", "16,8", "--eval-negatives", "20",
        "--batch-size", "128", "--lr", "0.003", "--quiet"]


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "dmf"
    assert main(["train", "--data", str(data_file), "--epochs", "2", "--output", str(out), *TINY]) == 0
    return out


def test_train_writes_metrics_and_checkpoint(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) >= {"test", "valid", "config", "history"}
    assert set(metrics["test"]) >= {"hr@10", "ndcg@10"} and 0 <= metrics["test"]["hr@10"] <= 1
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert set(metrics["history"][0]) >= {"loss", "valid", "seconds"}
    assert metrics["config"]["train"]["lr"] == 0.003 and metrics["config"]["model"] == "dmf"
    assert (trained / "checkpoint.pt").is_file()


def test_evaluate_reproduces_the_test_metrics(trained, capsys):
    assert main(["evaluate", str(trained / "checkpoint.pt")]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((trained / "metrics.json").read_text())
    for part in ("test", "valid"):
        assert result[part] == pytest.approx(metrics[part])
    assert set(result["test"]) >= {"full_hr@10", "full_ndcg@10", "full_recall@10",
                                   "full_coverage@10", "mrr@10", "map@10", "precision@10"}
    assert main(["evaluate", str(trained / "checkpoint.pt"), "--protocol", "full"]) == 0
    full = json.loads(capsys.readouterr().out)["test"]
    assert full == pytest.approx({k: v for k, v in metrics["test"].items() if k.startswith("full_")})
    assert main(["evaluate", str(trained / "checkpoint.pt"), "--protocol", "sampled:100"]) == 2
    assert "--protocol sampled:100: this model's split has 20 sampled items" in capsys.readouterr().err
    # a run's folder stands for its model.pt
    assert main(["evaluate", str(trained), "--protocol", "full"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(full)
    # the sampled metrics alone, without the full ranking's cost
    assert main(["evaluate", str(trained / "checkpoint.pt"), "--no-full-ranking"]) == 0
    sampled = json.loads(capsys.readouterr().out)["test"]
    assert sampled == pytest.approx({k: v for k, v in metrics["test"].items()
                                     if not k.startswith("full_")})
    assert main(["evaluate", str(trained / "checkpoint.pt"), "--no-full-ranking",
                 "--protocol", "full"]) == 2
    assert "--protocol full asks for the full-ranking ones" in capsys.readouterr().err
    # the older flag still runs, and says it is no longer needed
    assert main(["evaluate", str(trained / "checkpoint.pt"), "--full-ranking"]) == 0
    assert "dmfx: warning: --full-ranking is no longer needed" in capsys.readouterr().err


def test_ranks_are_saved_beside_the_metrics(trained, data_file):
    from dmfx.data import leave_one_out, read_npz
    from dmfx.evaluate import load_ranks, metrics_from_ranks

    rankings, user_ids, item_ids = load_ranks(trained / "ranks.npz")
    assert sorted(rankings) == [(part, protocol) for part in ("test", "valid")
                                for protocol in ("full", "sampled")]
    split = leave_one_out(read_npz(data_file), num_negatives=20, seed=0)
    test = json.loads((trained / "metrics.json").read_text())["test"]
    for protocol, prefix in (("sampled", ""), ("full", "full_")):
        ranking = rankings[("test", protocol)]
        assert ranking.users.tolist() == split.test_users.tolist()
        assert ranking.items.tolist() == split.test_items.tolist()
        assert metrics_from_ranks(ranking.ranks, (10,), prefix)[f"{prefix}ndcg@10"] == \
            pytest.approx(test[f"{prefix}ndcg@10"])
    assert (rankings[("test", "sampled")].candidates == 21).all()
    assert user_ids.tolist() == read_npz(data_file).user_ids.tolist()
    assert item_ids.tolist() == read_npz(data_file).item_ids.tolist()


def test_recommend_gives_unseen_raw_ids(trained, data_file, capsys):
    from dmfx.data import read_npz

    data = read_npz(data_file)
    raw_user = data.user_ids[7]
    assert main(["recommend", str(trained / "checkpoint.pt"), "--user", str(raw_user), "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3", "4", "5"]
    items = [line.split("\t")[1] for line in lines]
    seen = {str(data.item_ids[i]) for i in data.items[data.users == 7]}
    assert not seen & set(items) and len(set(items)) == 5
    scores = [float(line.split("\t")[2]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_resume_continues_to_the_same_result(data_file, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", "--data", str(data_file), "--epochs", "3", "--output", str(whole), *TINY]) == 0
    assert main(["train", "--data", str(data_file), "--epochs", "1", "--output", str(parts), *TINY]) == 0
    assert main(["train", "--data", str(data_file), "--epochs", "3", "--output", str(parts),
                 "--resume", *TINY]) == 0
    a = load_checkpoint(whole / "checkpoint.pt")["model_state"]
    b = load_checkpoint(parts / "checkpoint.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((parts / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


# Small settings per model: each trains for an epoch or two on the tiny data.
MODEL_FLAGS = {
    "lfm": ["--user-layers", "8", "--item-layers", "8", "--epochs", "1"],
    "dmf --sparse-grad": ["--user-layers", "16,8", "--item-layers", "16,8", "--epochs", "1"],
    "itempop": [],
    "itemknn": ["--neighbours", "10"],
    "eals": ["--factors", "8", "--epochs", "2"],
    "gmf": ["--factors", "8", "--epochs", "1"],
    "mlp": ["--layers", "16,8", "--epochs", "1"],
    "neumf": ["--factors", "8", "--layers", "16,8", "--epochs", "1"],
    "bpr": ["--factors", "8", "--epochs", "1"],
    "einmf": ["--factors", "8", "--layers", "8,4", "--epochs", "2", "--lr", "0.003"],
}


@pytest.mark.parametrize("model", list(MODEL_FLAGS))
def test_every_model_trains_evaluates_and_recommends(data_file, tmp_path, model, capsys):
    name, *flags = model.split()
    out = tmp_path / name
    assert main(["train", "--data", str(data_file), "--model", name, *flags, *MODEL_FLAGS[model],
                 "--eval-negatives", "20", "--quiet", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == name and metrics["history"]
    # finite losses and a model that ranks better than chance (1 in 21 candidates)
    assert all(isinstance(h["loss"], float) and math.isfinite(h["loss"]) for h in metrics["history"])
    assert 1 / 21 < metrics["test"]["hr@10"] <= 1 and 0 < metrics["test"]["ndcg@10"] <= 1
    capsys.readouterr()
    # the model file alone gives the run's metrics and recommendations
    assert main(["evaluate", str(out / "model.pt")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test"] == pytest.approx(metrics["test"])
    assert main(["recommend", str(out / "model.pt"), "--user", "3", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3", "4"]


def test_neumf_p_from_pretrained_runs(data_file, tmp_path, capsys):
    common = ["--data", str(data_file), "--eval-negatives", "20", "--quiet", "--epochs", "1"]
    assert main(["train", "--model", "gmf", "--factors", "8", *common,
                 "--output", str(tmp_path / "gmf")]) == 0
    assert main(["train", "--model", "mlp", "--layers", "16,8", *common,
                 "--output", str(tmp_path / "mlp")]) == 0
    out = tmp_path / "neumf-p"
    assert main(["train", "--model", "neumf", "--factors", "8", "--layers", "16,8",
                 "--gmf-checkpoint", str(tmp_path / "gmf" / "checkpoint.pt"),
                 "--mlp-checkpoint", str(tmp_path / "mlp" / "checkpoint.pt"),
                 "--optimizer", "sgd", "--lr", "0.01", *common, "--output", str(out)]) == 0
    # Parts trained on another split have seen this run's test items: refused, as is other data.
    parts = ["--gmf-checkpoint", str(tmp_path / "gmf" / "checkpoint.pt"),
             "--mlp-checkpoint", str(tmp_path / "mlp" / "checkpoint.pt")]
    for other, message in ((["--split-seed", "1"],
                            "another split of the data: --split-seed 0 (this run: 1)"),
                           (["--dataset", "synthetic:30x40x300"], "was trained on other data")):
        argv = ["train", "--model", "neumf", "--factors", "8", "--layers", "16,8", *parts, *common,
                *other, "--output", str(tmp_path / "refused")]
        if "--dataset" in other:
            argv = [a for a in argv if a not in ("--data", str(data_file))]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--gmf-checkpoint" in err and message in err, err
    # the trained model is restored without its pre-trained parts: they may be gone by now
    (tmp_path / "gmf" / "checkpoint.pt").unlink()
    assert main(["evaluate", str(out / "checkpoint.pt")]) == 0


def test_synthetic_data_set_and_peak_memory(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert main(["train", "--dataset", "synthetic:60x150x1800", "--epochs", "2", "--patience", "0",
                 "--output", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    peaks = [h["peak_memory_mb"] for h in metrics["history"]]
    # a peak never falls, and it covers at least what this process holds now (torch alone: >50 MB)
    assert peaks == sorted(peaks) and 50 < peaks[-1] <= peak_memory_mb(torch.device("cpu"))
    assert "hr@10" in metrics["test"]
    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out
    assert "synthetic:UxIxN" in listed and "MovieLens 100K: 943 users" in listed


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/nonexistent/ratings.csv"], "--data: no file at /nonexistent/ratings.csv"),
    (["train", "--dataset", "no-such-set"], "unknown data set 'no-such-set'"),
    (["evaluate", "/nonexistent/checkpoint.pt"], "no checkpoint at"),
    (["train", "--dataset", "ml-100k", "--model", "lfm", "--sparse-grad"],
     "--sparse-grad does not apply to model lfm"),
    (["train", "--model", "itemknn", "--lr", "0.1"], "--lr does not apply to model itemknn"),
    (["train", "--model", "gmf", "--neighbours", "5", "--w0", "3"],
     "--neighbours, --w0 do not apply to model gmf"),
    (["train", "--model", "dmf", "--user-layers", "8,x"], "--user-layers: expected comma-separated"),
    (["train", "--model", "svd"], "unknown model 'svd'; choose one of dmf, lfm"),
    (["train", "--activation", "tanh"], "--activation: expected one of eq6, hidden, all, none"),
    (["train", "--resample", "never"], "resample must be one of epoch, once"),
    (["train", "--model", "gmf", "--loss", "bpr"], "trains with loss ce or nce"),
    (["train", "--model", "neumf", "--gmf-checkpoint", "/nonexistent/c.pt", "--quiet"],
     "NeuMF-p needs both --gmf-checkpoint and --mlp-checkpoint (or neither)"),
    (["train", "--dataset", "synthetic:10x20"], "synthetic:USERSxITEMSxRATINGS"),
    (["train", "--dataset", "synthetic:10x0x5"], "must be positive"),
    (["train", "--split", "atomic", "--dataset", "ml-100k"],
     "--split atomic reads a split folder: give it as --data FOLDER/NAME"),
])
def test_user_mistakes_give_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmfx: error:") and message in err and "\n" not in err


def test_unknown_user_and_existing_run(trained, data_file, capsys):
    assert main(["recommend", str(trained / "checkpoint.pt"), "--user", "no-such-user"]) == 2
    assert "unknown user 'no-such-user'" in capsys.readouterr().err
    assert main(["train", "--data", str(data_file), "--output", str(trained), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_python_dash_m_and_help():
    result = subprocess.run([sys.executable, "-m", "dmfx", "train", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--dataset" in result.stdout and "leave-one-out" in result.stdout
    # A flag shared by models with different values lists each model's own.
    text = " ".join(result.stdout.split())
    assert "one of rating, binary" in text and "one of rows, ids" in text


def test_data_without_timestamps_is_held_out_at_random_and_says_so(tmp_path, capsys):
    plays = lambda u, i: 200 if i % 17 == 0 else 1 + (u + i) % 3  # noqa: E731 - a heavy tail
    rows = [f"{u}\t{i}\t{plays(u, i)}" for u in range(40) for i in range(u % 5, 60, 3)]
    path = tmp_path / "plays.tsv"
    path.write_text("\n".join(rows) + "\n")  # user, item, play count; item-sorted, no timestamps
    out = tmp_path / "pop"
    assert main(["train", "--data", str(path), "--model", "itempop", "--eval-negatives", "20",
                 "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "test item: a random interaction per user (the data has no timestamps)" in err
    warning = [line for line in err.splitlines() if "look like counts" in line]
    assert len(warning) == 1 and warning[0].startswith("dmfx: warning:")
    assert json.loads((out / "metrics.json").read_text())["config"]["holdout"] == "random"
    # trained as the warning advises, the counts are never read: no warning
    assert main(["train", "--data", str(path), "--input", "binary", "--loss", "ce", *TINY,
                 "--epochs", "1", "--output", str(tmp_path / "binary")]) == 0
    assert "look like counts" not in capsys.readouterr().err


def test_random_split_with_cutoffs_and_per_user_metrics(data_file, tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["train", "--data", str(data_file), "--model", "itempop", "--split", "random",
                 "--split-ratios", "0.7,0.1,0.2", "--topk", "5,10", "--per-user", "all",
                 "--eval-negatives", "20", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["holdout"] == "ratio"
    assert metrics["config"]["data"]["spec"]["ratios"] == [0.7, 0.1, 0.2]
    ranked = ("hr", "ndcg", "recall", "precision", "mrr", "map")
    assert set(metrics["test"]) == {f"{m}@{k}" for m in ranked for k in (5, 10)} | \
        {f"full_{m}@{k}" for m in (*ranked, "coverage") for k in (5, 10)} | \
        {f"user_{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10)}
    capsys.readouterr()
    assert main(["evaluate", str(out / "checkpoint.pt"), "--topk", "5,10", "--per-user", "all"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(metrics["test"])
    for flags, message in [(["--split", "kfold"], "split must be one of loo, random"),
                           (["--split", "random", "--split-ratios", "0.8,0.2"], "ratios must be three"),
                           (["--topk", "5,x"], "--topk: expected positive cut-offs"),
                           (["--topk", "0"], "--topk: expected positive cut-offs"),
                           (["--protocol", "sampled:0"], "--protocol: expected sampled:N with N >= 1"),
                           (["--protocol", "all"], "--protocol: expected sampled:N or full"),
                           (["--eval-negatives", "0"], "--eval-negatives must be >= 1"),
                           (["--eval-negatives", "5", "--protocol", "full"],
                            "--eval-negatives 5 contradicts --protocol full")]:
        assert main(["train", "--data", str(data_file), "--model", "itempop", *flags,
                     "--output", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_full_protocol_stops_on_full_ranking(data_file, tmp_path, capsys):
    out = tmp_path / "full"
    assert main(["train", "--data", str(data_file), "--protocol", "full", "--epochs", "2",
                 "--output", str(out), *[a for a in TINY if a not in ("--eval-negatives", "20")]]) == 0
    assert "test FULL_HR@10" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["train"]["protocol"] == "full"
    assert metrics["config"]["data"]["spec"]["eval_negatives"] == 0  # no sampled items drawn
    assert all(set(h["valid"]) == {f"full_{m}@10" for m in ("hr", "ndcg", "recall", "precision",
                                                           "mrr", "map", "coverage")}
               for h in metrics["history"])
    assert not any(k.startswith(("hr@", "ndcg@")) for k in metrics["test"])


def test_too_few_items_to_sample_names_the_flag(tmp_path, capsys):
    from dmfx.data import synthetic

    data = tmp_path / "small.npz"
    synthetic(30, 50, 400, seed=0).save_npz(data)  # fewer than the default 100 unseen items
    assert main(["train", "--data", str(data), "--model", "itempop", "--output",
                 str(tmp_path / "out"), "--quiet"]) == 2
    assert "lower num_negatives (dmfx: --protocol sampled:N" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--split-seed", "-1"),
                                         ("--seed", str(2**64))])
def test_seeds_out_of_range_are_refused_by_flag(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["train", "--dataset", "ml-100k", flag, value, "--output", str(tmp_path / "x")])
    assert exit.value.code == 2
    assert f"argument {flag}: a seed must lie in [0, 2**63), got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "0", "--lr must be > 0, got 0.0"), ("--negatives", "-1", "--negatives must be >= 0"),
    ("--patience", "-1", "--patience must be >= 0"), ("--batch-size", "0", "--batch-size must be >= 1")])
def test_bad_training_settings_are_refused_by_flag(flag, value, message, tmp_path, capsys):
    assert main(["train", "--dataset", "ml-100k", flag, value, "--output", str(tmp_path / "x")]) == 2
    assert f"dmfx: error: {message}" in capsys.readouterr().err


def test_sep_backslash_t_means_a_tab(tmp_path):
    from dmfx.cli import parse_args

    assert parse_args(["train", "--sep", "\\t"]).sep == "\t"
    assert parse_args(["train", "--sep", ";"]).sep == ";"


@pytest.mark.parametrize("flags, message", [
    (["--mu", "2"], "DMF: --mu must lie in (0, 0.5)"),
    (["--user-layers", "16,8", "--item-layers", "16,4"],
     "the towers must end at one latent size, got --user-layers [16, 8] and --item-layers [16, 4]"),
    (["--user-layers", "256,32"], "got --user-layers [256, 32] and --item-layers [256, 64]"),
    (["--model", "itemknn", "--neighbours", "0"], "--neighbours must be an integer >= 1"),
    (["--model", "gmf", "--factors", "0"], "--factors must be a positive integer, got 0"),
    (["--model", "einmf", "--dropout", "2"], "--dropout must lie in [0, 1), got 2.0"),
    (["--model", "bpr", "--negatives", "0"], "--negatives must be >= 1 under the bpr loss, got 0"),
    (["--split", "foo"], "--split must be one of loo, random, atomic, got 'foo'"),
    (["--split", "random", "--split-ratios", "0.8,0.1"],
     "--split-ratios must be three shares (train, validation, test) that sum to 1"),
    (["--split", "random", "--split-ratios", "0.5,0.1,0.1"], "--split-ratios must be three shares"),
    (["--sep="], "--sep: expected a field separator"),
    (["--held-out-users", "1.5"], "--held-out-users: expected a share in (0, 1), got 1.5"),
    (["--split", "random", "--held-out-users", "0.1"],
     "--held-out-users needs one test item per user: --split loo, not random"),
    (["--model", "gmf", "--held-out-users", "0.1"], "--held-out-users: gmf learns a vector per user")])
def test_model_settings_are_refused_before_the_data_is_read(flags, message, tmp_path, capsys):
    # reading this file would fail: the settings' own error must come first, naming the flag,
    # before anything is written
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("not a ratings file\n")
    assert main(["train", "--data", str(garbage), *flags, "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmfx: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    # Beside --config an abbreviation escaped the override of the file's model parameters.
    config = tmp_path / "config.toml"
    config.write_text('model = "dmf"\nuser-layers = [16, 8]\n')
    for argv in (["train", "--mod", "gmf"], ["train", "--config", str(config), "--mod", "gmf"],
                 ["recommend", "model.pt", "--user", "1", "--out", "recs.csv"]):
        with pytest.raises(SystemExit) as exit:
            parse_args(argv)
        assert exit.value.code == 2
        assert "unrecognized arguments: --" in capsys.readouterr().err


def test_split_names_a_file_in_the_way_of_its_output(data_file, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    assert main(["split", "--data", str(data_file), "--output", str(blocker / "splits")]) == 2
    assert capsys.readouterr().err == f"dmfx: error: --output: {blocker} exists and is not a folder\n"


def test_recommend_names_its_missing_files(trained, capsys):
    for flag in ("--users-file", "--ratings"):
        assert main(["recommend", str(trained / "model.pt"), flag, "/nonexistent/users.txt"]) == 2
        assert capsys.readouterr().err == f"dmfx: error: {flag}: no file at /nonexistent/users.txt\n"


def test_progress_lines_name_validation_metrics_and_held_out_interactions(data_file, tmp_path,
                                                                          capsys):
    from dmfx.data import ratio_split, read_npz

    assert main(["train", "--data", str(data_file), "--epochs", "1", "--output",
                 str(tmp_path / "loo"), *[a for a in TINY if a != "--quiet"]]) == 0
    captured = capsys.readouterr()
    epoch = [line for line in captured.err.splitlines() if line.startswith("epoch")]
    assert len(epoch) == 1 and "  valid HR@10 0." in epoch[0] and "  NDCG@10 0." in epoch[0]
    assert "dmf on tiny: test HR@10 0." in captured.out
    assert main(["train", "--data", str(data_file), "--model", "itempop", "--split", "random",
                 "--eval-negatives", "20", "--output", str(tmp_path / "random")]) == 0
    split = ratio_split(read_npz(data_file), (0.8, 0.1, 0.1), num_negatives=20, seed=0)
    data = [line for line in capsys.readouterr().err.splitlines() if line.startswith("data:")]
    # a test row per held-out interaction, several per user
    assert data == [f"data: tiny: 50 users x 90 items, 1,200 interactions; "
                    f"{len(split.test_users)} held-out test interactions of "
                    f"{len(set(split.test_users))} users; random split 0.8/0.1/0.1"]


def test_a_closed_pipe_ends_recommend_quietly(trained, monkeypatch, capsys):
    from dmfx.cli import BROKEN_PIPE_STATUS

    read, write = os.pipe()
    os.close(read)  # the reader went away (`dmfx ... | head -1` once head has exited)
    with open(write, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        code = main(["recommend", str(trained / "model.pt"), "--all-users", "--quiet"])
        monkeypatch.undo()
    assert code == BROKEN_PIPE_STATUS == 141
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("stdout", ["pipe", "captured"])
def test_a_broken_pipe_while_stdout_is_fine_is_an_error_not_a_quiet_exit(stdout, monkeypatch,
                                                                          capsys):
    import dmfx.cli

    def handler(args):  # as writing to a socket or pipe other than stdout, its reader gone
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(dmfx.cli, "cmd_datasets", handler)
    read, write = os.pipe()
    with open(read, "rb"), open(write, "w") as healthy:  # a pipe whose reader is still there
        if stdout == "pipe":
            monkeypatch.setattr(sys, "stdout", healthy)
        code = main(["datasets"])
        monkeypatch.undo()
    assert code == 2
    assert capsys.readouterr().err == "dmfx: error: [Errno 32] Broken pipe\n"


def test_recommend_into_head_exits_without_an_error_message(trained):
    # The reader closes its end before dmfx writes (importing torch alone takes longer).
    process = subprocess.Popen([sys.executable, "-m", "dmfx", "recommend",
                                str(trained / "model.pt"), "--all-users", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait() == 141
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err


def test_a_command_started_with_stdout_closed_runs():
    # A daemon or cron job may start dmfx with descriptor 1 closed: sys.stdout is then None.
    result = subprocess.run(["bash", "-c", f"{sys.executable} -m dmfx datasets >&-"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr


def test_plot_history_draws_sampled_and_full_protocol_runs(trained, data_file, tmp_path):
    """tools/plot_history.py reads the validation metrics the run has: hr@10 under the sampled
    protocol, full_hr@10 under --protocol full (it looked for hr@10 only)."""
    pytest.importorskip("matplotlib")
    full = tmp_path / "full"
    assert main(["train", "--data", str(data_file), "--epochs", "2", "--protocol", "full",
                 "--output", str(full), *TINY[:4], *TINY[6:]]) == 0
    assert "full_hr@10" in json.loads((full / "metrics.json").read_text())["history"][0]["valid"]
    png = tmp_path / "curves.png"
    script = Path(__file__).parent.parent / "tools" / "plot_history.py"
    done = subprocess.run([sys.executable, str(script),
                           str(trained / "metrics.json"), str(full / "metrics.json"), "-o", str(png)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_that_diverges_in_its_first_epoch_is_a_one_line_error(data_file, tmp_path,
                                                                    capsys):
    argv = ["train", "--data", str(data_file), "--model", "gmf", "--factors", "4", "--lr", "1e30",
            "--epochs", "2", "--eval-negatives", "10", "--quiet", "--output", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmfx: error: epoch 1: the training loss is nan") and err.count("\n") == 1
    assert "try a lower learning rate than lr=1e+30" in err


@pytest.mark.parametrize("command", ["train", "evaluate x", "recommend x --user 1",
                                     "export x --output y", "split --output y", "models",
                                     "datasets", "bench", "reproduce dmf-paper"])
def test_an_unknown_flag_shows_the_commands_own_usage(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*command.split(), "--epoch", "2"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: dmfx {command.split()[0]} ")
    assert "dmfx " + command.split()[0] + ": error: unrecognized arguments: --epoch 2" in err


@pytest.mark.parametrize("model, shows_loss", [("itempop", False), ("eals", True)])
def test_epoch_lines_show_a_loss_only_for_models_that_fit_one(data_file, tmp_path, capsys,
                                                              model, shows_loss):
    flags = ["--factors", "4", "--epochs", "1"] if model == "eals" else []
    assert main(["train", "--data", str(data_file), "--model", model, *flags,
                 "--eval-negatives", "10", "--output", str(tmp_path / "r")]) == 0
    epoch_line = next(line for line in capsys.readouterr().err.splitlines()
                      if line.startswith("epoch   1"))
    assert ("loss " in epoch_line) == shows_loss, epoch_line

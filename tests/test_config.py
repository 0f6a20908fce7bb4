"""Settings files (dmfx train --config), the config.toml and epochs.jsonl of a run, and the
provenance in its metrics.json."""
import argparse
import importlib.util
import json

import pytest
import torch

from dmfx.cli import _device, main, parse_args
from dmfx.config import file_flags, read_settings, toml_text, tomllib

# What --device auto (the default) resolves to on this machine.
AUTO_DEVICE = str(_device("auto"))
TINY = ["--user-layers", "16,8", "--item-layers", "16,8", "--eval-negatives", "20",
        "--batch-size", "128", "--lr", "0.003", "--quiet"]


def train_parser() -> argparse.ArgumentParser:
    return parse_args(["train"]).parser


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_text_round_trips_through_tomllib():
    settings = {"model": "dmf", "epochs": 20, "lr": 1e-4, "mu": 1e-06, "w0": 512.0,
                "track-test": True, "sparse-grad": False, "user-layers": [512, 64],
                "sep": "\t", "data": 'C:\\ratings "new"\x7f.csv', "name": "日本"}
    text = toml_text(settings, "first line\nsecond line")
    assert text.startswith("# first line\n# second line\n")
    assert tomllib.loads(text) == settings


def test_file_flags_are_the_equivalent_flags(tmp_path):
    path = write(tmp_path, 'model = "dmf"\nepochs = 3\nuser-layers = [32, 8]\n'
                           'item_layers = "32,8"\nlr = 0.003\ntrack-test = true\n'
                           'full-ranking = false\nsep = ","\n')
    assert file_flags(path, train_parser()) == [
        "--model=dmf", "--epochs=3", "--user-layers=32,8", "--item-layers=32,8", "--lr=0.003",
        "--track-test", "--sep=,"]


def test_config_parses_to_the_same_settings_as_the_flags(tmp_path):
    flags = ["--model", "dmf", "--epochs", "3", "--user-layers", "32,8", "--lr", "0.003",
             "--track-test", "--split", "random", "--split-ratios", "0.7,0.1,0.2"]
    path = write(tmp_path, 'model = "dmf"\nepochs = 3\nuser-layers = [32, 8]\nlr = 0.003\n'
                           'track-test = true\nsplit = "random"\nsplit-ratios = [0.7, 0.1, 0.2]\n')
    by_flags = vars(parse_args(["train", *flags]))
    by_file = vars(parse_args(["train", "--config", str(path)]))
    assert by_file.pop("config") == str(path) and by_flags.pop("config") is None
    del by_file["parser"], by_flags["parser"]  # one parser object per parse
    assert by_file == by_flags
    assert by_file["epochs"] == 3 and by_file["user_layers"] == "32,8" and by_file["track_test"]


def test_flags_on_the_command_line_override_the_file(tmp_path):
    path = write(tmp_path, "epochs = 3\nseed = 4\nlr = 0.003\n")
    # Given before or after --config, and even at the parser's default (seed 0), a flag wins.
    args = parse_args(["train", "--seed", "0", "--config", str(path), "--epochs", "5"])
    assert (args.epochs, args.seed, args.lr) == (5, 0, 0.003)
    # Beyond their own name: the file's separator goes with its data, and the protocol's older
    # spelling replaces the protocol (a run's config.toml always holds one).
    path = write(tmp_path, 'data = "a.csv"\nsep = ";"\nprotocol = "sampled:20"\n')
    args = parse_args(["train", "--config", str(path), "--data", "b.csv",
                       "--eval-negatives", "30"])
    assert (args.data, args.sep, args.protocol, args.eval_negatives) == ("b.csv", None, None, 30)
    args = parse_args(["train", "--config", str(path), "--dataset", "ml-1m"])
    assert (args.data, args.sep, args.dataset) == (None, None, "ml-1m")


@pytest.mark.parametrize("text, message", [
    ("epochs = 3\nlayer-sizes = [1]\n", "unknown setting 'layer-sizes'"),
    ('config = "other.toml"\n', "unknown setting 'config'"),
    ('epochs = "many"\n', "epochs: expected int, got 'many'"),
    ("epochs = true\n", "epochs: expected a value like the flag's, got true/false"),
    ("track-test = 1\n", "track-test: expected true or false, got 1"),
    ('per-user = "some"\n', "per-user: expected one of unseen, all, got 'some'"),
    ("[model]\nlr = 1\n", "model: expected a value like the flag's, got a table"),
    ("user-layers = [[1, 2]]\n", "user-layers: expected a value like the flag's, got a list"),
    ("epochs = 3\nepochs = 4\n", "not valid TOML"),
    ('user-layers = "8"\nuser_layers = "8"\n', "'user_layers' and 'user-layers' are the same"),
    ("seed = -1\n", "seed: a seed must lie in [0, 2**63), got -1"),
])
def test_a_bad_config_is_a_one_line_error_naming_the_key(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dmfx: error: {path}: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_data_and_model_flags_replace_what_they_make_moot_in_the_file(tmp_path):
    path = write(tmp_path, 'dataset = "ml-100k"\nmodel = "dmf"\nactivation = "eq6"\n'
                           'input = "rating"\nuser-layers = [8]\nloss = "nce"\nepochs = 3\n')
    args = parse_args(["train", "--config", str(path), "--data", "mine.csv"])
    assert (args.data, args.dataset, args.activation) == ("mine.csv", None, "eq6")
    args = parse_args(["train", "--config", str(path), "--dataset", "ml-1m"])
    assert (args.data, args.dataset) == (None, "ml-1m")
    # another model: the file's DMF-only parameters and a loss BPR-MF cannot train go
    args = parse_args(["train", "--config", str(path), "--model", "bpr"])
    assert (args.activation, args.input, args.loss) == (None, None, None)
    assert (args.epochs, args.dataset) == (3, "ml-100k")
    args = parse_args(["train", "--config", str(path), "--model", "lfm"])
    assert (args.user_layers, args.loss, args.activation) == ("8", "nce", None)


def test_on_off_settings_of_a_file_can_be_turned_off(tmp_path):
    path = write(tmp_path, "sparse-grad = true\ntrack-test = true\nno-full-ranking = true\n")
    args = parse_args(["train", "--config", str(path)])
    assert (args.sparse_grad, args.track_test, args.no_full_ranking) == (True, True, True)
    args = parse_args(["train", "--config", str(path), "--no-sparse-grad", "--no-track-test",
                       "--full-ranking"])
    assert (args.sparse_grad, args.track_test, args.no_full_ranking) == (False, False, False)


def test_a_file_sparse_grad_turned_off_trains_without_it(data_file, tmp_path):
    path = write(tmp_path, f'data = "{data_file}"\nsparse-grad = true\nepochs = 1\n')
    out = tmp_path / "dense"
    assert main(["train", "--config", str(path), "--no-sparse-grad", "--output", str(out),
                 *TINY]) == 0
    assert metrics(out)["config"]["model_config"]["sparse_grad"] is False
    assert tomllib.loads((out / "config.toml").read_text())["sparse-grad"] is False


def test_a_missing_config_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "none.toml"
    assert main(["train", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"dmfx: error: --config: no file at {missing}\n"


def test_yaml_settings(tmp_path):
    path = write(tmp_path, "epochs: 3\nuser-layers: [32, 8]\ntrack-test: true\n", "run.yaml")
    if importlib.util.find_spec("yaml") is None:
        with pytest.raises(ValueError, match=r"run.yaml: reading YAML needs PyYAML"):
            read_settings(path)
    else:
        assert file_flags(path, train_parser()) == ["--epochs=3", "--user-layers=32,8",
                                                    "--track-test"]


def test_train_help_documents_config_and_the_run_files():
    text = " ".join(train_parser().format_help().split())
    assert "--config FILE settings from a TOML file" in text
    assert "OUTPUT/config.toml" in text and "OUTPUT/epochs.jsonl" in text


# ------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def run(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "flags"
    assert main(["train", "--data", str(data_file), "--epochs", "2", "--output", str(out),
                 *TINY]) == 0
    return out


def metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def results(folder):
    """What a run computed: everything of metrics.json but timings and memory."""
    m = metrics(folder)
    history = [{k: v for k, v in e.items() if k not in ("seconds", "pairs_per_s", "peak_memory_mb")}
               for e in m["history"]]
    return m["test"], m["valid"], m["best_epoch"], history


def test_config_toml_holds_every_effective_setting(run, data_file):
    saved = tomllib.loads((run / "config.toml").read_text())
    # the model's defaults and training settings filled in, the data file absolute
    assert saved["data"] == str(data_file.resolve()) and "dataset" not in saved
    assert saved["model"] == "dmf" and saved["user-layers"] == [16, 8]
    assert saved["activation"] == "eq6" and saved["sparse-grad"] is False
    assert (saved["epochs"], saved["lr"], saved["negatives"], saved["patience"]) == (2, 0.003, 7, 5)
    assert saved["device"] == AUTO_DEVICE and saved["threads"] >= 1
    # the protocol at its effective value, in its current spelling (--eval-negatives 20 given)
    assert saved["protocol"] == "sampled:20" and "eval-negatives" not in saved
    # nor the spelling --full-ranking of no-full-ranking = false (it would be saved inverted)
    assert not {"output", "resume", "quiet", "config", "neighbours", "factors",
                "full-ranking"} & set(saved)
    assert saved["no-full-ranking"] is False and saved["track-test"] is False
    assert metrics(run)["config"]["settings"] == saved


def test_a_saved_config_reproduces_the_run(run, tmp_path):
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.toml"), "--output", str(again),
                 "--quiet"]) == 0
    assert results(again) == results(run)
    assert (again / "config.toml").read_text() == (run / "config.toml").read_text()
    # a flag beside --config overrides the saved setting
    shorter = tmp_path / "shorter"
    assert main(["train", "--config", str(run / "config.toml"), "--epochs", "1", "--output",
                 str(shorter), "--quiet"]) == 0
    assert [e["epoch"] for e in metrics(shorter)["history"]] == [1]
    assert results(shorter)[3][0] == results(run)[3][0]


def test_metrics_record_the_environment(run):
    m = metrics(run)
    env = m["environment"]
    assert env["device"] == AUTO_DEVICE and env["torch"] and env["numpy"] and env["python"]
    assert env["build"]["cpu_kernels"] is True and env["dmfx"]["version"]
    assert len(m["config"]["data"]["fingerprint"]["sha256"]) == 64
    assert m["config"]["train"]["lr"] == 0.003
    assert m["config"]["model_config"]["user_layers"] == [16, 8]


def test_epochs_jsonl_is_the_history(run):
    logged = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert logged == metrics(run)["history"]
    assert [e["epoch"] for e in logged] == [1, 2]
    assert set(logged[0]) >= {"loss", "valid", "seconds", "pairs_per_s", "peak_memory_mb"}


def test_a_resumed_run_continues_its_log(data_file, tmp_path):
    out = tmp_path / "resumed"
    argv = ["train", "--data", str(data_file), "--output", str(out), *TINY]
    assert main(argv + ["--epochs", "2"]) == 0
    log = out / "epochs.jsonl"
    # killed after the checkpoint of epoch 2 and before its line
    log.write_text(log.read_text().splitlines(keepends=True)[0])
    assert main(argv + ["--epochs", "3", "--resume"]) == 0
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["epoch"] for e in logged] == [1, 2, 3]
    assert logged == metrics(out)["history"]
    assert tomllib.loads((out / "config.toml").read_text())["epochs"] == 3


def test_a_refused_resume_leaves_the_run_files_alone(run, capsys):
    before = {name: (run / name).read_text() for name in ("config.toml", "epochs.jsonl")}
    assert main(["train", "--config", str(run / "config.toml"), "--output", str(run),
                 "--resume", "--lr", "0.01", "--quiet"]) == 2
    assert "lr 0.003 -> 0.01" in capsys.readouterr().err
    assert {name: (run / name).read_text() for name in before} == before


def test_pairs_batch_and_max_steps_from_the_command_line(data_file, tmp_path, capsys):
    out = tmp_path / "bounded"
    assert main(["train", "--data", str(data_file), "--output", str(out), *TINY,
                 "--epochs", "3", "--pairs", "batch", "--max-steps", "2"]) == 0
    logged = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [(e["epoch"], e["steps"]) for e in logged] == [(1, 2)]
    assert logged[0]["batches"] > 2
    saved = tomllib.loads((out / "config.toml").read_text())
    assert (saved["pairs"], saved["max-steps"]) == ("batch", 2)
    # The checkpoint of the cut run gives its result too: the cut epoch, evaluated as the best.
    from dmfx.experiment import load_trained
    from_checkpoint = load_trained(out / "checkpoint.pt").model.state_dict()
    for name, x in load_trained(out / "model.pt").model.state_dict().items():
        assert torch.equal(x, from_checkpoint[name]), name
    # Without the limit, a resume finishes the cut epoch and the others: as a run never cut.
    assert main(["train", "--data", str(data_file), "--output", str(out), *TINY, "--epochs", "3",
                 "--pairs", "batch", "--max-steps", "0", "--checkpoint-every", "3",
                 "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", "--data", str(data_file), "--output", str(straight), *TINY,
                 "--epochs", "3", "--pairs", "batch"]) == 0
    timeless = lambda run: [(e["epoch"], e["loss"], e["steps"], e["valid"]) for e in
                            (json.loads(line) for line in
                             (run / "epochs.jsonl").read_text().splitlines())]
    assert timeless(out) == timeless(straight) and len(timeless(out)) == 3
    assert metrics(out)["test"] == metrics(straight)["test"]
    assert main(["train", "--data", str(data_file), "--output", str(tmp_path / "knn"),
                 "--model", "itemknn", "--max-steps", "2", "--quiet"]) == 2
    assert "--max-steps does not apply to model itemknn" in capsys.readouterr().err


def test_no_full_ranking_reports_the_sampled_metrics_alone(data_file, tmp_path, capsys):
    out = tmp_path / "sampled-only"
    assert main(["train", "--data", str(data_file), "--output", str(out), *TINY, "--epochs", "1",
                 "--no-full-ranking"]) == 0
    test = metrics(out)["test"]
    assert "hr@10" in test and not any(key.startswith("full_") for key in test)
    assert main(["train", "--data", str(data_file), "--output", str(tmp_path / "x"),
                 "--no-full-ranking", "--protocol", "full", "--quiet"]) == 2
    assert "--no-full-ranking leaves out" in capsys.readouterr().err


def test_a_default_protocol_is_written_out():
    """Left at its default, the protocol was not written: a later default would change what
    the file means. (The run above gives it; its data is too small for the default's 100.)"""
    from dmfx.cli import _protocol_text, parse_args

    assert _protocol_text(parse_args(["train"])) == "sampled:100"
    assert _protocol_text(parse_args(["train", "--eval-negatives", "7"])) == "sampled:7"
    assert _protocol_text(parse_args(["train", "--protocol", "full"])) == "full"

"""`dmfx reproduce`: the smoke version end to end on a tiny data set, the paper's values, reuse."""
import json
import shutil
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import clustered
from dmfx.cli import main
from dmfx.reproduce import EXPERIMENTS, _WallClock, confidence_interval, paired_t_test

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--quick", "--seeds", "0", "1", "--eval-negatives", "20"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "clustered.npz"
    clustered(num_users=100, num_items=120, per_user=15).save_npz(path)
    return path


@pytest.fixture(scope="module")
def reproduced(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "dmf-paper"
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), *QUICK,
                 "--output", str(out)]) == 0
    return out


def test_every_table_and_figure_is_written(reproduced):
    results = json.loads((reproduced / "results.json").read_text())
    assert [t["key"] for t in results["tables"]] == ["table2", "table3", "table4", "table5", "figure2"]
    assert not results["failed"] and results["seeds"] == [0, 1]
    labels = [row["label"] for t in results["tables"] for row in t["rows"]]
    assert {"ItemPop", "ItemKNN", "eALS", "NeuMF-p", "DMF-2-ce", "DMF-2-nce", "LFM-nce",
            "DMF-1-nce"} <= set(labels)
    for table in results["tables"]:
        assert (reproduced / f"{table['key']}.csv").is_file()
        markdown = (reproduced / f"{table['key']}.md").read_text()
        # the papers print no values for this data set: no empty paper columns
        assert "paper" not in markdown.split("\n")[0]
        assert "full HR@10" in markdown and "full NDCG@10" in markdown
        for row in table["rows"]:
            hr, std = row["test"]["hr@10"]
            assert 0 <= hr <= 1 and std is not None  # mean ± std over the two seeds
            assert 0 <= row["test"]["full_hr@10"][0] <= hr  # all items rank above fewer
            assert [s["seed"] for s in row["per_seed"]] == [0, 1]
            assert row["split_seeds"] == [0, 1]  # seed s trains on split s
    report = (reproduced / "report.md").read_text()
    assert "dmfx reproduce dmf-paper" in report and "Table 4" in report
    assert "seed s on split seed s" in report and results["split_seeds"] == [0, 1]
    pytest.importorskip("matplotlib")  # the figures' checks, last: what is above ran
    for png in ("table2.png", "figure2.png"):
        assert (reproduced / png).stat().st_size > 1000 and f"]({png})" in report


def test_choices_are_made_on_validation(reproduced):
    results = json.loads((reproduced / "results.json").read_text())
    knn = next(r for t in results["tables"] for r in t["rows"] if r["label"] == "ItemKNN")
    assert len(knn["candidates"]) == 2
    best = max(knn["candidates"], key=lambda c: c["valid_ndcg@10"])
    assert knn["args"] == best["args"]


def test_neumf_p_starts_from_the_chosen_gmf_and_mlp_runs(reproduced):
    results = json.loads((reproduced / "results.json").read_text())
    rows = {r["label"]: r for t in results["tables"] for r in t["rows"]}
    for seed, folder in enumerate(rows["NeuMF-p"]["folders"]):
        args = json.loads((reproduced.parent / folder / "args.json").read_text())["args"]
        for part in ("gmf", "mlp"):
            run = args[args.index(f"--{part}-checkpoint") + 1].rsplit("/", 1)[0]
            assert run == rows[part.upper()]["folders"][seed]
            assert run.endswith("seed0" if seed == 0 else f"seed{seed}-split{seed}")
    assert len({folder.rsplit("/", 1)[0] for folder in rows["NeuMF-p"]["folders"]}) == 1


def test_finished_runs_are_not_repeated(reproduced, data_file, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in reproduced.glob("runs/*/*/metrics.json")}
    first = json.loads((reproduced / "results.json").read_text())
    # --output spelled otherwise: NeuMF-p's key held its parts' folders as spelled
    monkeypatch.chdir(reproduced.parent)
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), *QUICK,
                 "--output", reproduced.name]) == 0
    assert {p: p.stat().st_mtime_ns for p in reproduced.glob("runs/*/*/metrics.json")} == before
    again = json.loads((reproduced / "results.json").read_text())
    assert again["invocations"] == first["invocations"] + 1
    assert again["wall_seconds_total"] == pytest.approx(first["wall_seconds_total"] + again["wall_seconds"])
    assert again["run_seconds"] == pytest.approx(first["run_seconds"])  # the same runs
    assert not again["unrecorded_earlier_runs"]


def test_an_output_under_a_file_is_named(data_file, tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), *QUICK,
                 "--output", str(tmp_path / "taken" / "out")]) == 2
    assert capsys.readouterr().err == f"dmfx: error: --output: {tmp_path / 'taken'} exists and " \
                                      "is not a folder\n"


def test_finished_runs_on_other_data_are_refused(reproduced, data_file, tmp_path, capsys):
    # Other sampled items, then other interactions under the same output: never the old runs.
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), "--quick", "--seeds", "0",
                 "1", "--eval-negatives", "30", "--output", str(reproduced)]) == 2
    err = capsys.readouterr().err
    assert "is a finished run on other data or with other sampled items (eval_negatives 20 " \
           "(now 30))" in err and "its own --output" in err
    other = tmp_path / data_file.name
    clustered(num_users=100, num_items=120, per_user=15, seed=1).save_npz(other)
    assert main(["reproduce", "dmf-paper", "--data", str(other), *QUICK,
                 "--output", str(reproduced)]) == 2
    assert "the interactions read" in capsys.readouterr().err


def test_interrupted_invocations_count_in_the_wall_clock(tmp_path):
    key = {"experiment": "dmf-paper", "seeds": [0]}
    first = _WallClock(tmp_path, key)
    first.ledger["invocations"][-1] = 0.0
    first.start -= 60.0  # a minute in, then killed after its last finished run was saved
    first.save()
    second = _WallClock(tmp_path, key)
    assert len(second.ledger["invocations"]) == 2
    assert second.ledger["invocations"][0] == pytest.approx(60.0, abs=5)
    assert not second.ledger["unrecorded_earlier_runs"]
    # Another experiment in the same folder starts a fresh record, flagging finished runs it
    # cannot account for.
    (tmp_path / "runs" / "dmf-x" / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / "dmf-x" / "seed0" / "metrics.json").write_text("{}")
    other = _WallClock(tmp_path, {**key, "seeds": [0, 1]})
    assert len(other.ledger["invocations"]) == 1 and other.ledger["unrecorded_earlier_runs"]


def test_cells_are_confidence_intervals_and_paired_tests(reproduced):
    results = json.loads((reproduced / "results.json").read_text())
    table = results["tables"][0]
    rows = {r["label"]: r for r in table["rows"]}
    assert table["reference"] == "DMF-2-nce"
    lines = (reproduced / "table2.md").read_text().splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in lines[2:]}
    values = [s["test"]["hr@10"] for s in rows["ItemKNN"]["per_seed"]]
    mean, half = np.mean(values), stats.t.ppf(0.975, 1) * np.std(values, ddof=1) / np.sqrt(2)
    assert cells["ItemKNN"][header.index("HR@10")] == f"{mean:.3f} ± {half:.3f}"
    assert rows["ItemKNN"]["test_ci95"]["hr@10"] == pytest.approx(half)
    reference = [s["test"]["full_hr@10"] for s in rows["DMF-2-nce"]["per_seed"]]
    ours = [s["test"]["full_hr@10"] for s in rows["ItemKNN"]["per_seed"]]
    shown = cells["ItemKNN"][header.index("full HR@10 vs DMF-2-nce")]
    assert shown.startswith(f"{np.mean(ours) - np.mean(reference):+.3f}")
    p = stats.ttest_rel(ours, reference).pvalue
    if np.isnan(p):  # no spread in the differences: no test
        assert "(p" not in shown
    else:
        assert (f"(p {p:.3f})" if p >= 0.001 else "(p < 0.001)") in shown
    assert cells["DMF-2-nce"][header.index("HR@10 vs DMF-2-nce")] == "reference"


def test_statistics_against_scipy():
    a, b = [0.61, 0.64, 0.60, 0.66, 0.63], [0.58, 0.63, 0.61, 0.60, 0.59]
    diff, p = paired_t_test(a, b)
    assert diff == pytest.approx(np.mean(np.subtract(a, b)))
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    low, high = stats.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=stats.sem(a))
    assert confidence_interval(a) == pytest.approx((high - low) / 2)
    assert confidence_interval([0.5]) is None and paired_t_test([0.5], [0.4]) == (pytest.approx(0.1), None)
    assert paired_t_test([0.5, 0.6], [0.4, 0.5])[1] is None  # every difference alike: no test
    # alike to rounding: 0.41 - 0.37 and 0.40 - 0.36 differ in the last bit
    assert paired_t_test([0.4, 0.41], [0.36, 0.37])[1] is None
    # a seed without a value (NaN, or null once saved) is no number, and no crash
    nan = float("nan")
    assert confidence_interval([0.5, nan]) is None and confidence_interval([0.5, None]) is None
    diff, p = paired_t_test([0.5, nan], [0.4, 0.3])
    assert diff != diff and p is None


def test_figures_of_tables_whose_rows_all_failed_are_left_out(tmp_path):
    pytest.importorskip("matplotlib")
    from dmfx.reproduce import _figures

    flat = [{"epoch": e, "hr@10": 0.0, "ndcg@10": 0.0} for e in (1, 2)]
    results = {"dataset": "x", "tables": [
        {"key": "failed", "curves": True, "chart": False, "rows": [{"label": "A"}]},
        {"key": "zero", "curves": True, "chart": False,
         "rows": [{"label": "B", "curves": [flat]}]},
        {"key": "chart", "curves": False, "chart": True, "title": "T", "metrics": ["hr@10"],
         "rows": [{"label": "C"}]}]}
    assert set(_figures(results, tmp_path, print)) == {"zero"}


def test_the_choice_skips_settings_without_a_validation_value():
    from dmfx.reproduce import Row, _summarise

    class Done:
        def __init__(self, valid):
            self.done, self.folder = True, f"run-{valid}"
            self.result = {"test": {m: 0.5 for m in ("hr@10", "ndcg@10", "full_hr@10",
                                                     "full_ndcg@10")},
                           "valid": {"ndcg@10": valid}, "config": {"data": {"spec": {"seed": 0}}},
                           "best_epoch": 1, "history": [{"epoch": 1}], "seconds": 1.0}

        def metrics(self):
            return self.result

    grid = [("--a",), ("--b",), ("--c",)]
    jobs = {(("--a",), 0): Done(None), (("--b",), 0): Done(0.3), (("--c",), 0): Done(0.2)}
    summary = _summarise(Row("X", "dmf", grid), grid, jobs, [0], ())
    assert summary["args"] == ["--b"]


def test_runs_finished_before_full_ranking_only_add_it(reproduced, data_file):
    run = next(reproduced.glob("runs/itempop-*/seed0"))
    metrics = json.loads((run / "metrics.json").read_text())
    old = {part: {k: v for k, v in metrics[part].items() if not k.startswith("full_")}
           for part in ("test", "valid")}
    (run / "metrics.json").write_text(json.dumps({**metrics, **old}))
    others = {p: p.stat().st_mtime_ns for p in reproduced.glob("runs/*/*/metrics.json")
              if p.parent != run}
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), *QUICK,
                 "--output", str(reproduced), "--only", "table2"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["test"] == pytest.approx(metrics["test"])  # the same model, evaluated again
    assert again["history"] == metrics["history"]  # no epoch was trained
    assert {p: p.stat().st_mtime_ns for p in others} == others


def test_readme_block_is_replaced(reproduced, data_file, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- reproduce:dmf-paper:clustered -->\nold\n"
                      "<!-- /reproduce:dmf-paper:clustered -->\nend\n")
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), *QUICK,
                 "--output", str(reproduced), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| DMF-2-nce |" in text
    if (reproduced / "table2.png").is_file():
        assert "](docs/dmf-paper-clustered-table2.png)" in text
        assert (tmp_path / "docs" / "dmf-paper-clustered-table2.png").is_file()


@pytest.mark.parametrize("readme", ["missing", "without-block", "end-first"])
def test_a_bad_readme_is_refused_before_any_run(readme, data_file, tmp_path, capsys):
    path = tmp_path / "README.md"
    if readme == "without-block":
        path.write_text("intro\n")
    if readme == "end-first":
        path.write_text("<!-- /reproduce:dmf-paper:clustered -->\n"
                        "<!-- reproduce:dmf-paper:clustered -->\n")
    out = tmp_path / "out"
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), *QUICK,
                 "--output", str(out), "--readme", str(path)]) == 2
    assert f"dmfx: error: --readme {path}" in capsys.readouterr().err
    assert not out.exists()


def test_readme_refuses_only(data_file, tmp_path, capsys):
    """--only with --readme replaced the whole block by the --only tables, losing the others."""
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), *QUICK, "--only", "table3",
                 "--output", str(tmp_path / "out"), "--readme", str(tmp_path / "README.md")]) == 2
    assert "--readme replaces the experiment's whole block" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_paper_values_and_the_full_grids():
    tables = {t.key: t for t in EXPERIMENTS["dmf-paper"].tables(False)}
    rows = {r.label: r for t in tables.values() for r in t.rows}
    assert rows["DMF-2-nce"].paper["ml-100k"] == {"hr@10": 0.687, "ndcg@10": 0.409}
    assert rows["NeuMF-p"].paper["ml-1m"] == {"hr@10": 0.722, "ndcg@10": 0.440}
    assert rows["eALS"].paper["amazon-movies"] == {"hr@10": 0.693, "ndcg@10": 0.455}
    assert rows["DMF-1-nce"].paper["amazon-music"] == {"hr@10": 0.572, "ndcg@10": 0.389}
    assert [r.label for r in tables["table4"].rows] == ["neg-1", "neg-2", "neg-5", "neg-9", "neg-10"]
    assert [r.label for r in tables["table5"].rows] == [f"{f} factors" for f in (8, 16, 32, 64, 128)]
    assert len(tables["figure2"].rows) == 4 and tables["figure2"].curves
    assert len(rows["ItemKNN"].grid) > 1  # chosen on validation


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--protocol", "full"], "--protocol: the tables compare with the papers' sampled protocol"),
    (["--protocol", "sampled:0"], "--protocol: expected sampled:N with N >= 1"),
    (["--seeds", "1", "1"], "repeats a seed"),
    (["--dataset", "no-such-set"], "unknown data set"),
])
def test_bad_input_gives_one_line(argv, message, capsys):
    assert main(["reproduce", "dmf-paper", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmfx: error:") and message in err and "\n" not in err


def test_help_states_the_defaults():
    from dmfx.cli import build_parser

    text = " ".join(build_parser()._subparsers._group_actions[0].choices["reproduce"]
                    .format_help().split())
    assert "fixes one split for all (default 0 1 2)" in text
    assert "(1, the default: in this process" in text
    assert "default each seed's own: seed s trains on split seed s)" in text
    # full ranking is refused here: the help offers the sampled protocol alone
    assert "--protocol sampled:N " in text and "full ranks" not in text
    assert "runs/EXPERIMENT-DATASET-quick with --quick" in text


@pytest.mark.parametrize("terminal, quiet, bar", [(False, False, False), (True, False, True),
                                                  (True, True, False)])
def test_the_progress_bar_is_drawn_on_a_terminal_only(data_file, tmp_path, monkeypatch, capsys,
                                                      terminal, quiet, bar):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), "--quick", "--seeds", "0",
                 "--eval-negatives", "20", "--only", "table3", "--output", str(tmp_path / "out"),
                 *(["--quiet"] if quiet else [])]) == 0
    assert ("runs: 100%" in capsys.readouterr().err) == bar


def test_einmf_paper_quick_end_to_end(data_file, tmp_path):
    out = tmp_path / "einmf-paper"
    assert main(["reproduce", "einmf-paper", "--data", str(data_file), "--quick", "--seeds", "0",
                 "--eval-negatives", "20", "--only", "table3", "loo", "figure4", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [t["key"] for t in results["tables"]] == ["table3", "loo", "figure4"]
    assert not results["failed"]
    table3 = results["tables"][0]
    assert [r["label"] for r in table3["rows"]] == ["Pop", "Item-KNN", "BPR-MF", "NCF", "DMF", "EINMF",
                                                   "EINMF ids"]
    for row in table3["rows"]:
        assert set(row["test"]) >= {f"user_{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)}
        assert all(0 <= row["test"][m][0] <= 1 for m in row["test"])
    markdown = (out / "table3.md").read_text()
    assert "| HR@5 |" in markdown and "| NDCG@20 |" in markdown and "paper" not in markdown
    assert (out / "table3.png").is_file() and (out / "figure4.png").is_file()
    report = (out / "report.md").read_text()
    assert report.startswith("Test HR@N / NDCG@N on clustered")
    assert ('"full" columns rank the held-out item among all items, the others among the '
            "sampled ones, but for the per-user tables, which rank each user's items among all "
            "the items the user did not train on.") in report
    # every run used the random split and reported the per-user metrics of every cut-off
    run = json.loads(next((out / "runs").glob("einmf-*/seed0/metrics.json")).read_text())
    assert run["config"]["holdout"] == "ratio"
    assert_reused(out, ["einmf-paper", "--data", str(data_file), "--quick", "--seeds", "0",
                        "--eval-negatives", "20", "--only", "table3", "loo", "figure4"])


def assert_reused(out, argv):
    """A second invocation trains nothing: every finished run's settings are still those its
    arguments mean."""
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.json")}
    assert before and main(["reproduce", *argv, "--output", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.json")} == before


def test_a_finished_run_under_other_defaults_is_refused(reproduced, data_file, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reproduced, out)
    path = next(out.glob("runs/dmf-*/seed0/metrics.json"))
    metrics = json.loads(path.read_text())
    metrics["config"]["train"]["lr"] = 0.5  # as if the default had been 0.5 then
    path.write_text(json.dumps(metrics))
    assert main(["reproduce", "dmf-paper", "--data", str(data_file), *QUICK,
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path.parent} is a finished run with other settings (lr 0.5 (now " in err


def test_einmf_paper_tables_and_values(capsys):
    tables = {t.key: t for t in EXPERIMENTS["einmf-paper"].tables(False)}
    assert list(tables) == ["table3", "loo", "figure2", "figure3", "figure4"]
    rows = {r.label: r for r in tables["table3"].rows}
    assert rows["EINMF"].paper["ml-100k"]["user_hr@10"] == 0.8038
    assert rows["NCF"].paper["ml-1m"]["user_ndcg@5"] == 0.2608
    # the literal reading of the paper's input: the same EINMF but for --input ids, no paper row
    (ids,), (rows_input,) = rows["EINMF ids"].grid, rows["EINMF"].grid
    assert list(ids) == [*rows_input, "--input", "ids"] and rows["EINMF ids"].paper == {}
    assert [r.label for r in tables["figure4"].rows][-1] == "EINMF eta 1.0"
    assert len(tables["figure3"].rows) == 9 and len(tables["figure2"].rows) == 20
    assert main(["reproduce", "einmf-paper", "--only", "table9"]) == 2
    assert "--only: experiment einmf-paper has no table table9" in capsys.readouterr().err


def test_dmf_new_users_quick_end_to_end(data_file, tmp_path):
    out = tmp_path / "dmf-new-users"
    assert main(["reproduce", "dmf-new-users", "--data", str(data_file), *QUICK,
                 "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    (table,) = results["tables"]
    assert [r["label"] for r in table["rows"]] == ["ItemPop", "ItemKNN", "DMF-2-nce", "EINMF"]
    assert not results["failed"]
    for row in table["rows"]:
        for metric in ("new_hr@10", "full_new_hr@10", "hr@10", "full_hr@10"):
            assert 0 <= row["test"][metric][0] <= 1, (row["label"], metric)
    markdown = (out / "new-users.md").read_text()
    assert "| new HR@10 |" in markdown and "full new NDCG@10" in markdown
    assert "paper" not in markdown.split("\n")[0]  # no paper values: no empty paper columns
    assert (out / "report.md").read_text().startswith("Test HR@10 / NDCG@10 on clustered")
    # each seed held out its own tenth of the users: the run records the share
    for seed in (0, 1):
        folder = next((out / "runs").glob(f"dmf-*/seed{seed}*"))
        run = json.loads((folder / "metrics.json").read_text())
        assert run["config"]["data"]["held_out_users"] == 0.1
    assert_reused(out, ["dmf-new-users", "--data", str(data_file), *QUICK])


def test_paper_columns_only_where_the_paper_has_values():
    from dmfx.reproduce import _table_rows

    def row(label, paper):
        per_seed = [{"seed": s, "test": {"hr@10": 0.5 + s / 10, "full_hr@10": 0.1},
                     "best_epoch": 3, "epochs": 5} for s in (0, 1)]
        return {"label": label, "paper": paper, "args": [], "candidates": [{}], "per_seed": per_seed,
                "test": {"hr@10": (0.55, 0.07), "full_hr@10": (0.1, 0.0)},
                "valid": {"ndcg@10": (0.3, 0.01)}}

    table = {"metrics": ["hr@10"], "reference": "B", "curves": False,
             "rows": [row("A", {"hr@10": 0.6}), row("B", None)]}
    a, b = _table_rows(table)
    assert a["paper HR@10"] == "0.600" and a["HR@10 − paper"] == "-0.050"
    assert b["paper HR@10"] == "—" and b["HR@10 vs B"] == "reference"
    table["rows"][0]["paper"] = None
    assert not any(key.startswith("paper") for key in _table_rows(table)[0])


def _jobs(tmp_path, models):
    from dmfx.reproduce import Job
    return [Job(model, (), 0, 0, tmp_path / model / "seed0") for model in models]


def _finish(argv):
    """What a finished run leaves: its metrics."""
    folder = argv[argv.index("--output") + 1]
    with open(f"{folder}/metrics.json", "w") as handle:
        json.dump({"test": {"hr@10": 0.5, "ndcg@10": 0.25, "full_hr@10": 0.1}}, handle)


def test_one_worker_survives_a_crashing_run_and_reports_on_the_console(tmp_path, monkeypatch,
                                                                       capsys):
    """A run that raised (not a user error) ended the whole reproduction with --jobs 1, and
    the progress lines went into the next run's log."""
    import dmfx.cli
    from dmfx.reproduce import _run_all

    def fake_main(argv):
        if argv[argv.index("--model") + 1] == "lfm":
            raise RuntimeError("simulated out of memory")
        print("training")
        _finish(argv)
        return 0

    monkeypatch.setattr(dmfx.cli, "main", fake_main)
    jobs = _jobs(tmp_path, ["dmf", "lfm", "gmf"])
    failed = _run_all(jobs, [], 1)
    assert [job.model for job, _ in failed] == ["lfm"]
    assert "RuntimeError: simulated out of memory" in (jobs[1].folder / "train.log").read_text()
    for job in (jobs[0], jobs[2]):
        assert (job.folder / "train.log").read_text() == "training\n"
    out = capsys.readouterr().out
    assert "failed: lfm" in out and "HR@10 0.5000" in out


def test_ctrl_c_stops_one_worker_at_once(tmp_path, monkeypatch):
    import dmfx.cli
    from dmfx.reproduce import _run_all

    started = []
    monkeypatch.setattr(dmfx.cli, "main", lambda argv: started.append(argv) or 130)
    with pytest.raises(KeyboardInterrupt):
        _run_all(_jobs(tmp_path, ["dmf", "lfm"]), [], 1)
    assert len(started) == 1


def test_ctrl_c_stops_the_processes_under_way_and_starts_no_other(tmp_path, monkeypatch):
    """The pool used to run every queued run to its end before the interrupt took effect."""
    import threading

    import dmfx.reproduce as reproduce

    started, lock, second = [], threading.Lock(), threading.Event()

    class FakeProcess:
        def __init__(self, argv, **kwargs):
            self.model = argv[argv.index("--model") + 1]
            self.stopped = threading.Event()
            self.terminated = False
            with lock:
                started.append(self)
            if self.model == "second":
                second.set()

        def wait(self):
            if self.model == "first":  # ends once the second is under way
                assert second.wait(30)
                return 1
            assert self.stopped.wait(30), "never terminated"
            return -15

        def terminate(self):
            self.terminated = True
            self.stopped.set()

    def ctrl_c():
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce.subprocess, "Popen", FakeProcess)
    jobs = _jobs(tmp_path, ["first", "second", "third", "fourth", "fifth"])
    with pytest.raises(KeyboardInterrupt):
        reproduce._run_all(jobs, [], 2, on_finished=ctrl_c)
    # The two workers start "first" and "second" in either order; one of them may take "third"
    # before the interrupt lands; "fourth" and "fifth" never start.
    models = sorted(p.model for p in started)
    assert models in (["first", "second"], ["first", "second", "third"]), models
    assert all(p.terminated for p in started if p.model != "first")


def test_the_report_says_what_its_columns_rank():
    from dmfx.reproduce import _what_is_ranked

    assert _what_is_ranked({"hr@10", "ndcg@10"}) == (
        "HR@10 / NDCG@10", '"full" columns rank the held-out item among all items, the others '
        "among the sampled ones")
    what, ranking = _what_is_ranked({"user_hr@5", "user_hr@10"})
    assert what == "HR@N / NDCG@N" and ranking == (
        "the tables rank each user's items among all the items the user did not train on")
    assert _what_is_ranked({"new_hr@10", "hr@10"})[0] == "HR@10 / NDCG@10"


def test_the_readme_blocks_carry_each_experiments_current_notes():
    """The blocks are generated; a note changed in the code must be changed in them too (a
    rerun would write it)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, experiment in EXPERIMENTS.items():
        start = readme.index(f"<!-- reproduce:{name}:ml-100k -->")
        block = readme[start:readme.index(f"<!-- /reproduce:{name}:ml-100k -->")]
        assert experiment.notes in block, name

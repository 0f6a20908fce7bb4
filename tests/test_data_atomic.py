"""Splits written and read in RecBole's atomic-file layout."""
import json

import numpy as np
import pytest

from dmfx.data import atomic
from dmfx.data import (DataFormatError, Interactions, leave_one_out, load_dataset, ratio_split,
                       read_atomic, synthetic, write_atomic)


def assert_same_split(a, b):
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "timestamps"):
        x, y = getattr(a.train, name), getattr(b.train, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for name in ("valid_users", "valid_items", "test_users", "test_items", "valid_negatives",
                 "test_negatives"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert getattr(a, name).shape == getattr(b, name).shape, name
    assert a.holdout == b.holdout


def test_ml100k_round_trip(tmp_path):
    data = load_dataset("ml-100k")
    split = leave_one_out(data, num_negatives=100, seed=3)
    folder = write_atomic(data, split, tmp_path, "ml-100k")
    assert folder == tmp_path / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ml-100k.dmfx.json", "ml-100k.item", "ml-100k.test.inter", "ml-100k.test.neg",
        "ml-100k.train.inter", "ml-100k.user", "ml-100k.valid.inter", "ml-100k.valid.neg"]
    lines = (folder / "ml-100k.test.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    user, item, rating, time = lines[1].split("\t")
    raw = (data.user_ids[split.test_users[0]], data.item_ids[split.test_items[0]])
    assert (int(user), int(item)) == raw
    row = np.flatnonzero((data.users == split.test_users[0]) & (data.items == split.test_items[0]))
    assert float(rating) == data.ratings[row[0]] and int(time) == data.timestamps[row[0]]
    assert len(lines) == 1 + len(split.test_users)
    everything, back = read_atomic(tmp_path, "ml-100k")
    assert_same_split(split, back)
    assert everything.nnz == data.nnz and np.array_equal(everything.user_ids, data.user_ids)


def test_string_ids_random_split_without_timestamps(tmp_path):
    rng = np.random.default_rng(0)
    users = rng.choice(np.array(["007", "42", "u 1", "x"]), 200)
    items = rng.choice(np.array([f"i{k}" for k in range(40)] + ["13", "0013"]), 200)
    data = Interactions.from_arrays(users, items, rng.integers(1, 6, 200) / 2)
    split = ratio_split(data, (0.6, 0.2, 0.2), num_negatives=5, seed=1)
    write_atomic(data, split, tmp_path, "strings")
    header = (tmp_path / "strings" / "strings.train.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\trating:float"
    _, back = read_atomic(tmp_path, "strings")
    assert_same_split(split, back)
    assert back.train.user_ids.dtype.kind == "U" and "007" in back.train.user_ids


def test_full_protocol_split_has_no_negative_files(tmp_path):
    data = synthetic(50, 90, 1200, seed=2)
    with_lists = leave_one_out(data, num_negatives=10, seed=0)
    write_atomic(data, with_lists, tmp_path, "d")
    bare = leave_one_out(data, num_negatives=0, seed=0)
    folder = write_atomic(data, bare, tmp_path, "d")  # over the earlier export
    assert not list(folder.glob("*.neg"))
    assert json.loads((folder / "d.dmfx.json").read_text())["num_negatives"] == 0
    _, back = read_atomic(tmp_path, "d")
    assert_same_split(bare, back)


def test_another_tools_files_draw_the_negatives_from_the_seed(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    head = "user_id:token\titem_id:token\trating:float\n"
    train = [(u, i) for u in range(1, 6) for i in range(1, 30) if (u + i) % 3]
    (folder / "plain.train.inter").write_text(head + "".join(f"{u}\t{i}\t1\n" for u, i in train))
    (folder / "plain.valid.inter").write_text(head + "".join(f"{u}\t{30 + u}\t4\n" for u in range(1, 6)))
    (folder / "plain.test.inter").write_text(head + "1\t40\t5\n1\t41\t5\n2\t40\t3\n")
    data, split = read_atomic(tmp_path, "plain", num_negatives=4, seed=7)
    assert data.user_ids.tolist() == [1, 2, 3, 4, 5]  # plain integers: integer ids
    assert split.holdout == "ratio" and split.test_negatives.shape == (3, 4)
    assert split.train.timestamps is None and split.train.nnz == len(train)
    seen = set(zip(data.users.tolist(), data.items.tolist()))
    for part in ("valid", "test"):
        users, negatives = getattr(split, f"{part}_users"), getattr(split, f"{part}_negatives")
        assert not any((u, i) in seen for u, row in zip(users, negatives) for i in row)
    _, again = read_atomic(tmp_path, "plain", num_negatives=4, seed=7)
    assert np.array_equal(again.test_negatives, split.test_negatives)
    _, other = read_atomic(tmp_path, "plain", num_negatives=4, seed=8)
    assert not np.array_equal(other.valid_negatives, split.valid_negatives)


def test_mistakes_are_one_clear_error(tmp_path):
    data = Interactions.from_arrays(["a\tb", "c", "c", "c"], ["x", "y", "z", "x"], [1, 2, 3, 4])
    split = leave_one_out(data, num_negatives=0, seed=0, valid=False, min_interactions=2)
    with pytest.raises(ValueError, match="user id 'a\\\\tb' cannot be written"):
        write_atomic(data, split, tmp_path, "bad")
    with pytest.raises(ValueError, match="name must be a plain file name"):
        write_atomic(data, split, tmp_path, "a/b")
    with pytest.raises(FileNotFoundError, match="no split nothing in"):
        read_atomic(tmp_path, "nothing")
    folder = write_atomic(*leave_one_out_pair(), tmp_path, "ok")
    neg = folder / "ok.test.neg"
    lines = neg.read_text().splitlines()
    user, item, lists = lines[1].split("\t")
    lines[1] = "\t".join([user, item, " ".join(["99999", *lists.split(" ")[1:]])])
    neg.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"^{folder}/ok\.test\.neg:2: item id 99999 is not in "
                                              "the item list"):
        read_atomic(tmp_path, "ok")
    neg.write_text("\n".join(lines[:3] + ["\t".join([user, item, "1 2"])] + lines[4:]) + "\n")
    with pytest.raises(DataFormatError, match=rf"^{folder}/ok\.test\.neg:4: 2 sampled items where "
                                              "line 2 has 3"):
        read_atomic(tmp_path, "ok")
    ids = folder / "ok.user"
    ids.write_text(ids.read_text().replace("\n3\n", "\n3x\n"))
    with pytest.raises(DataFormatError, match=rf"^{folder}/ok\.user:5: expected an integer user id, "
                                              r"got '3x' \(the split's \.dmfx\.json says"):
        read_atomic(tmp_path, "ok")


def leave_one_out_pair():
    data = synthetic(30, 60, 600, seed=1)
    return data, leave_one_out(data, num_negatives=3, seed=0)


def test_dmfx_split_writes_what_train_would_use(tmp_path, capsys):
    from dmfx.cli import main
    from dmfx.data import read_npz

    data = synthetic(40, 70, 900, seed=4)
    data.save_npz(tmp_path / "d.npz")
    assert main(["split", "--data", str(tmp_path / "d.npz"), "--split", "random",
                 "--protocol", "sampled:7", "--split-seed", "3", "--output", str(tmp_path / "out"),
                 "--name", "mine"]) == 0
    assert "7 sampled items each (split seed 3)" in capsys.readouterr().out
    _, back = read_atomic(tmp_path / "out", "mine")
    assert_same_split(ratio_split(read_npz(tmp_path / "d.npz"), num_negatives=7, seed=3), back)


def test_train_on_a_written_split_equals_training_on_the_data(tmp_path, capsys):
    """`dmfx train --split atomic --data FOLDER/NAME` trains on exactly the split `dmfx split`
    wrote: the same metrics as the run that split the data itself, and the model file and a
    resume read the folder back."""
    from dmfx.cli import main

    synthetic(40, 70, 900, seed=4).save_npz(tmp_path / "d.npz")
    tiny = ["--user-layers", "8", "--item-layers", "8", "--protocol", "sampled:9",
            "--split-seed", "2", "--epochs", "2", "--patience", "0", "--quiet"]
    assert main(["split", "--data", str(tmp_path / "d.npz"), "--protocol", "sampled:9",
                 "--split-seed", "2", "--output", str(tmp_path / "splits")]) == 0
    assert main(["train", "--data", str(tmp_path / "d.npz"), *tiny,
                 "--output", str(tmp_path / "direct")]) == 0
    assert main(["train", "--split", "atomic", "--data", str(tmp_path / "splits" / "d"), *tiny,
                 "--output", str(tmp_path / "atomic")]) == 0
    direct, atomic = (json.loads((tmp_path / run / "metrics.json").read_text())
                      for run in ("direct", "atomic"))
    assert atomic["test"] == direct["test"] and 0 < atomic["test"]["hr@10"] <= 1
    assert atomic["config"]["data"]["spec"]["protocol"] == "atomic"
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "atomic" / "checkpoint.pt")]) == 0  # re-reads the folder
    assert json.loads(capsys.readouterr().out)["test"]["hr@10"] == atomic["test"]["hr@10"]
    with pytest.raises(ValueError, match="--data FOLDER/NAME"):
        from dmfx.experiment import DataSpec
        DataSpec(dataset="ml-100k", protocol="atomic")


HEAD = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write_parts(folder, name, train, valid="1\t12\t5\t200\n2\t11\t4\t201\n",
                test="1\t13\t5\t300\n2\t13\t4\t301\n"):
    """A split folder of another tool's files: ``.inter`` parts only."""
    base = folder / name
    base.mkdir()
    for part, rows in (("train", train), ("valid", valid), ("test", test)):
        (base / f"{name}.{part}.inter").write_text(HEAD + rows)
    return base


def test_a_pair_in_two_parts_or_twice_in_one_is_refused(tmp_path):
    """A held-out pair that is also in train would be trained on (leakage); one twice in a
    part used to fail later in to_scipy, naming no file."""
    base = write_parts(tmp_path, "leak", "1\t10\t5\t100\n1\t11\t4\t101\n2\t10\t3\t102\n",
                       test="1\t13\t5\t300\n2\t10\t4\t301\n")
    with pytest.raises(ValueError, match=rf"^{base}/leak\.train\.inter:4 and {base}/leak\.test\.inter:3 "
                                         r"both hold user 2, item 10"):
        read_atomic(tmp_path, "leak", num_negatives=0)
    base = write_parts(tmp_path, "twice", "1\t10\t5\t100\n\n1\t10\t4\t101\n2\t10\t3\t102\n")
    with pytest.raises(ValueError, match=rf"^{base}/twice\.train\.inter holds user 1, item 10 twice "
                                         r"\(lines 2 and 4\)"):
        read_atomic(tmp_path, "twice", num_negatives=0)


@pytest.mark.parametrize(("line", "expected"), [
    ("1\t11\tfive\t101", "expected a numeric rating, got 'five'"),
    ("1\t11\tnan\t101", "expected a finite rating, got 'nan'"),
    ("1\t11\tinf\t101", "expected a finite rating, got 'inf'"),
    ("1\t11\t-4\t101", "expected a rating >= 0, got '-4'"),
    ("1\t11\t4\tyesterday", "expected a timestamp .*, got 'yesterday'"),
    ("1\t11\t4\tnan", "expected a timestamp .*, got 'nan'"),
    ("1\t11\t4\t1e30", "expected a timestamp \\(a number in the int64 range\\), got '1e30'"),
    ("1\t11\t4", "3 fields where the header has 4"),
])
def test_bad_values_name_the_physical_line(tmp_path, line, expected):
    """Blank lines count: the message points at the line an editor shows."""
    base = write_parts(tmp_path, "bad", f"1\t10\t5\t100\n\n\n{line}\n2\t10\t3\t102\n")
    with pytest.raises(DataFormatError, match=rf"^{base}/bad\.train\.inter:5: {expected}"):
        read_atomic(tmp_path, "bad", num_negatives=0)


def test_fractional_timestamps_are_rounded_down_and_a_byte_order_mark_is_read(tmp_path):
    base = write_parts(tmp_path, "bom", "1\t10\t5\t100.7\n1\t11\t4\t101\n2\t10\t3\t102\n")
    train = base / "bom.train.inter"
    train.write_bytes(b"\xef\xbb\xbf" + train.read_bytes())
    data, split = read_atomic(tmp_path, "bom", num_negatives=0)
    assert split.train.timestamps.tolist() == [100, 101, 102]
    assert data.user_ids.tolist() == [1, 2] and data.nnz == 7


def test_line_ends_blank_lines_and_utf8_ids_read_as_a_text_editor_shows_them(tmp_path):
    """CRLF and lone CR end lines, lines of only spaces and tabs are blank, ids keep their
    spaces and any UTF-8 text, and plain integers only become integer ids."""
    base = write_parts(tmp_path, "text", "", valid="", test="")
    head = "user_id:token\titem_id:token\trating:float\r\n"
    rows = ["ana\tcafé\t5", " \t\t ", "ana\t 7\t4", "", "bø\tcafé\t3", "bø\t7\t2.5"]
    (base / "text.train.inter").write_bytes((head + "\r\n".join(rows) + "\r").encode())
    (base / "text.valid.inter").write_text(head + "ana\t07\t1\n")
    (base / "text.test.inter").write_text(head + "bø\t07\t1")  # no line end at the end
    data, split = read_atomic(tmp_path, "text", num_negatives=0)
    assert data.user_ids.tolist() == ["ana", "bø"]
    assert data.item_ids.tolist() == [" 7", "07", "7", "café"]  # "07" and " 7" are not 7
    assert split.train.ratings.tolist() == [5, 4, 3, 2.5] and split.train.nnz == 4
    (base / "text.test.inter").write_bytes(head.encode() + b"b\xf8\t07\t1\n")
    with pytest.raises(DataFormatError, match=rf"^{base}/text\.test\.inter:2: expected UTF-8 text"):
        read_atomic(tmp_path, "text", num_negatives=0)


def test_many_rows_read_in_pieces_as_in_one(tmp_path, monkeypatch):
    """The reader cuts a file a few MB at a time; pieces must join without a seam."""
    data, split = leave_one_out_pair()
    write_atomic(data, split, tmp_path, "pieces")
    whole = read_atomic(tmp_path, "pieces")
    monkeypatch.setattr(atomic, "_CHUNK_BYTES", 7)  # lines of ~20 bytes: a piece per line
    monkeypatch.setattr(atomic, "_GATHER", 3)
    pieces = read_atomic(tmp_path, "pieces")
    assert_same_split(whole[1], pieces[1])
    assert_same_split(split, pieces[1])
    base = write_parts(tmp_path, "late", "1\t10\t5\t100\n2\t10\t3\t102\n\n1\t11\n")
    with pytest.raises(DataFormatError, match=rf"^{base}/late\.train\.inter:5: 2 fields where"):
        read_atomic(tmp_path, "late", num_negatives=0)


@pytest.mark.parametrize("which", ["held-out", "train"])
def test_a_sampled_item_the_user_has_is_refused(tmp_path, which):
    data, split = leave_one_out_pair()
    folder = write_atomic(data, split, tmp_path, "ok")
    neg = folder / "ok.test.neg"
    lines = neg.read_text().splitlines()
    user, item, lists = lines[3].split("\t")
    seen = item if which == "held-out" else str(
        data.item_ids[split.train.items[split.train.users == data.user_index(user)][0]])
    lines[3] = "\t".join([user, item, " ".join([seen, *lists.split(" ")[1:]])])
    neg.write_text("\n".join(lines) + "\n")
    what = "the row's own held-out item" if which == "held-out" else f"an item user {user} interacted with"
    with pytest.raises(DataFormatError, match=rf"^{folder}/ok\.test\.neg:4: sampled item {seen} is {what}; "):
        read_atomic(tmp_path, "ok")

"""Input hygiene: duplicate and conflicting pairs, id normalisation, encoding and delimiter
errors, logging of what the data stage changes, and the bounded negatives file."""

import io
import logging

import numpy as np
import pandas as pd
import pytest

from twotower_utils.config import ConfigError, load_config
from twotower_utils.data.datasets import DataValidationError, read_csv_dataset, resolve_pairs
from twotower_utils.data.preprocessing import DataPreprocessor, load_processed, summarise
from twotower_utils.logs import configure_logging
from twotower_utils.reports import eda

USERS = "user_id\n" + "".join(f"{u}\n" for u in range(1, 61))
ITEMS = "item_id\n" + "".join(f"i{i}\n" for i in range(1, 41))


def write(folder, users=USERS, items=ITEMS, interactions=""):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("users.csv", users), ("items.csv", items),
                       ("interactions.csv", interactions)):
        if isinstance(text, bytes):
            (folder / name).write_bytes(text)
        else:
            (folder / name).write_text(text)
    return [folder / name for name in ("users.csv", "items.csv", "interactions.csv")]


def read(paths, **kwargs):
    return read_csv_dataset(*paths, None, None, **kwargs)


def csv_config(project_root, tmp_path, folder, **overrides):
    return load_config(project_root / "config.json", {
        "data.dataset": "csv",
        "data.users_csv": str(folder / "users.csv"),
        "data.items_csv": str(folder / "items.csv"),
        "data.interactions_csv": str(folder / "interactions.csv"),
        "data.split.method": "random", "data.split.train_ratio": 0.8,
        "paths.raw_dir": str(tmp_path / "raw"),
        "paths.processed_dir": str(tmp_path / "processed"),
        **overrides,
    })


def duplicated_interactions(rows=1900, seed=0):
    """`rows` interactions over 60 users x 40 items with about a quarter repeated pairs."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 61, rows)
    items = rng.integers(1, 41, rows)
    distinct = len(set(zip(users, items, strict=True)))
    lines = [f"{u},i{i},1,{1000 + n}" for n, (u, i) in enumerate(zip(users, items, strict=True))]
    return "user_id,item_id,label,timestamp\n" + "\n".join(lines) + "\n", distinct


# --- duplicates ----------------------------------------------------------------------------


def test_duplicates_are_collapsed_before_the_split_counted_and_logged(project_root, tmp_path,
                                                                      caplog):
    text, distinct = duplicated_interactions()
    folder = tmp_path / "csv"
    write(folder, interactions=text)
    with caplog.at_level(logging.INFO, logger="twotower_utils"):
        preprocessor = DataPreprocessor(csv_config(project_root, tmp_path, folder))
        data = load_processed(preprocessor.run())
    pairs = {name: set(zip(getattr(data, name)["user_id"], getattr(data, name)["item_id"],
                           strict=True)) for name in ("train", "validation", "test")}
    assert pairs["train"].isdisjoint(pairs["test"])
    assert pairs["train"].isdisjoint(pairs["validation"])
    assert pairs["validation"].isdisjoint(pairs["test"])
    assert sum(len(p) for p in pairs.values()) == distinct
    hygiene = data.stats["input_hygiene"]
    assert hygiene["duplicate_rows_removed"] == 1900 - distinct > 200
    message = f"removed {1900 - distinct:,} duplicate row(s)"
    assert any(message in note for note in data.stats["notes"])
    assert any(message in record.getMessage() and record.levelno == logging.WARNING
               for record in caplog.records if record.name == "twotower_utils.data")
    assert message in summarise(data.stats, data.directory)


def test_keep_latest_keeps_the_latest_timestamp_and_keep_first_the_earliest(tmp_path):
    text = ("user_id,item_id,label,timestamp,rating\n"
            "1,i1,1,300,3\n2,i2,1,100,1\n1,i1,1,500,5\n1,i1,1,200,2\n")
    paths = write(tmp_path, interactions=text)
    latest = read(paths).interactions
    assert latest[["user_id", "rating"]].to_numpy().tolist() == [["2", 1.0], ["1", 5.0]]
    first = read(paths, duplicates="keep_first").interactions
    assert first[["user_id", "rating"]].to_numpy().tolist() == [["2", 1.0], ["1", 2.0]]
    raw = read(paths)
    assert raw.hygiene["duplicate_pairs"] == 1 and raw.hygiene["duplicate_rows_removed"] == 2
    assert "user '1', item 'i1' at data rows 1 and 3 (lines 2 and 4)" in " ".join(raw.notes)


def test_without_timestamps_file_order_decides(tmp_path):
    text = "user_id,item_id,label,rating\n1,i1,1,1\n1,i1,1,2\n1,i1,1,3\n"
    paths = write(tmp_path, interactions=text)
    assert read(paths).interactions["rating"].tolist() == [3.0]
    assert read(paths, duplicates="keep_first").interactions["rating"].tolist() == [1.0]
    assert "the last row in file order is kept" in " ".join(read(paths).notes)


def test_duplicates_error_names_the_rows_and_the_fix(tmp_path):
    paths = write(tmp_path, interactions="user_id,item_id,label\n1,i1,1\n2,i1,1\n1,i1,1\n")
    with pytest.raises(DataValidationError) as caught:
        read(paths, duplicates="error")
    message = str(caught.value)
    assert "interactions.csv" in message and "user '1', item 'i1'" in message
    assert "data rows 1 and 3 (lines 2 and 4)" in message
    assert "data.duplicates" in message and "keep_latest" in message


# --- conflicting labels ----------------------------------------------------------------------

CONFLICT = ("user_id,item_id,label,timestamp\n"
            "1,i1,0,100\n2,i2,1,100\n1,i1,1,50\n3,i3,1,10\n3,i3,0,20\n")


def test_conflicting_labels_positive_wins_by_default_and_is_reported(tmp_path, caplog):
    paths = write(tmp_path, interactions=CONFLICT)
    with caplog.at_level(logging.WARNING, logger="twotower_utils"):
        raw = read(paths)
    inter = raw.interactions
    assert inter[["user_id", "item_id", "label"]].to_numpy().tolist() == [
        ["2", "i2", 1], ["1", "i1", 1], ["3", "i3", 1]]
    assert raw.hygiene["conflicting_pairs"] == 2 and raw.hygiene["conflicting_rows_removed"] == 2
    note = next(n for n in raw.notes if "labelled both 1 and 0" in n)
    assert "user '1', item 'i1': label 1 at data row 3 (line 4), label 0 at data row 1" in note
    assert "positive_wins" in note
    assert any("labelled both 1 and 0" in r.getMessage() for r in caplog.records)


def test_conflicting_labels_latest_wins_and_error(tmp_path):
    paths = write(tmp_path, interactions=CONFLICT)
    latest = read(paths, conflicting_labels="latest_wins").interactions
    assert latest[["user_id", "label"]].to_numpy().tolist() == [["1", 0], ["2", 1], ["3", 0]]
    with pytest.raises(DataValidationError) as caught:
        read(paths, conflicting_labels="error")
    message = str(caught.value)
    assert "2 (user, item) pair(s) are labelled both 1 and 0" in message
    assert "line 4" in message and "line 2" in message
    assert "data.conflicting_labels" in message


def test_resolve_pairs_leaves_unique_pairs_alone_and_checks_policies():
    frame = pd.DataFrame({"user_id": ["1", "2"], "item_id": ["a", "a"], "label": [1, 1]})
    out, counts = resolve_pairs(frame)
    assert out is frame and not any(counts.values())
    with pytest.raises(ValueError, match="data.duplicates = 'drop'"):
        resolve_pairs(frame, duplicates="drop")


def test_policies_are_config_keys_validated_once(project_root):
    config = load_config(project_root / "config.json")
    assert config.data.duplicates == "keep_latest"
    assert config.data.conflicting_labels == "positive_wins"
    assert config.data.negatives_sample_size == 100_000
    with pytest.raises(ConfigError) as caught:
        load_config(project_root / "config.json", {"data.duplicates": "drop",
                                                    "data.negatives_sample_size": 0})
    assert "data.duplicates = 'drop'" in str(caught.value)
    assert "data.negatives_sample_size = 0" in str(caught.value)


# --- ids ---------------------------------------------------------------------------------------


def test_float_written_ids_match_integer_ids_and_all_rows_are_kept(tmp_path, caplog):
    users = "user_id\n1\n2\n3\n"
    items = "item_id\n10\n20\n"
    inter = "user_id,item_id,label\n1.0,10,1\n2.0,20.0,1\n3,10,1\n 2 ,10,1\n"
    paths = write(tmp_path, users=users, items=items, interactions=inter)
    with caplog.at_level(logging.INFO, logger="twotower_utils"):
        raw = read(paths)
    assert raw.interactions[["user_id", "item_id"]].to_numpy().tolist() == [
        ["1", "10"], ["2", "20"], ["3", "10"], ["2", "10"]]
    notes = " | ".join(raw.notes)
    assert "read 2 user_id value(s) written as whole-number floats as integers" in notes
    assert "first '1.0' -> '1'" in notes
    assert "stripped surrounding spaces from 1 user_id value(s)" in notes
    assert "data row 4 (line 5)" in notes
    assert any("whole-number floats" in r.getMessage() for r in caplog.records)


def test_ids_stay_as_written_when_the_column_is_not_all_numeric(tmp_path):
    users = "user_id\n1.0\nu2\n007\n"
    inter = "user_id,item_id,label\n1.0,i1,1\nu2,i1,1\n007,i1,1\n"
    raw = read(write(tmp_path, users=users, interactions=inter))
    assert raw.interactions["user_id"].tolist() == ["1.0", "u2", "007"]
    assert not any("whole-number" in note for note in raw.notes)
    # numeric column: leading zeros are kept, only the zero fraction goes
    raw = read(write(tmp_path / "b", users="user_id\n007.0\n8\n",
                     interactions="user_id,item_id,label\n007,i1,1\n8.00,i1,1\n"))
    assert raw.users["user_id"].tolist() == ["007", "8"]
    assert raw.interactions["user_id"].tolist() == ["007", "8"]
    # a fractional id is an id of its own, untouched; only whole floats are rewritten
    raw = read(write(tmp_path / "c", users="user_id\n1.05\n2\n",
                     interactions="user_id,item_id,label\n1.05,i1,1\n2.0,i1,1\n"))
    assert raw.interactions["user_id"].tolist() == ["1.05", "2"]


@pytest.mark.parametrize("marker", ["NaN", "nan", "None", "null", "NULL", " ", ""])
def test_missing_value_markers_are_not_ids(tmp_path, marker):
    inter = f"user_id,item_id,label\n1,i1,1\n2,i2,1\n{marker},i3,1\n"
    paths = write(tmp_path, interactions=inter)
    with pytest.raises(DataValidationError) as caught:
        read(paths)
    message = str(caught.value)
    assert "interactions.csv" in message and "column 'user_id'" in message
    assert "data row 3 (line 4)" in message and "missing id" in message


def test_a_column_of_empty_ids_names_the_first_row(tmp_path):
    with pytest.raises(DataValidationError, match="column 'user_id', data row 1 .*missing id"):
        read(write(tmp_path, interactions="user_id,item_id,label\n,i1,1\n,i2,1\n"))


def test_line_numbers_count_blank_lines_and_multi_line_cells(tmp_path):
    items = 'item_id,title\ni1,"two\nlines"\n\ni2,x\nnull,y\n'
    with pytest.raises(DataValidationError) as caught:
        read(write(tmp_path, items=items, interactions="user_id,item_id,label\n1,i1,1\n"))
    assert "items.csv: column 'item_id', data row 3 (line 6)" in str(caught.value)


def test_ids_equal_after_normalising_are_duplicates_in_a_feature_table(tmp_path):
    paths = write(tmp_path, users="user_id\n1\n1.0\n", interactions="user_id,item_id,label\n"
                                                                     "1,i1,1\n")
    with pytest.raises(DataValidationError, match=r"users.csv.*data row 2.*duplicate id '1'"):
        read(paths)


# --- encoding and delimiter --------------------------------------------------------------------


def test_latin1_file_names_the_line_and_says_save_as_utf8(tmp_path):
    items = "item_id,title\ni1,Toy Story\ni2,Caf\u00e9 Society\n".encode("latin-1")
    paths = write(tmp_path, items=items, interactions="user_id,item_id,label\n1,i1,1\n")
    with pytest.raises(DataValidationError) as caught:
        read(paths)
    message = str(caught.value)
    assert "items.csv" in message and "line 3" in message and "0xe9" in message
    assert "save it as UTF-8" in message


def test_utf16_file_is_named_as_such(tmp_path):
    items = "item_id\ti1\n".encode("utf-16")
    paths = write(tmp_path, items=items, interactions="user_id,item_id,label\n1,i1,1\n")
    with pytest.raises(DataValidationError, match="items.csv: the file is UTF-16.*as UTF-8"):
        read(paths)


@pytest.mark.parametrize("delimiter, name", [(";", "semicolon"), ("\t", "tab")])
def test_other_delimiters_are_named_with_the_fix(tmp_path, delimiter, name):
    inter = f"user_id{delimiter}item_id{delimiter}label\n1{delimiter}i1{delimiter}1\n"
    paths = write(tmp_path, interactions=inter)
    with pytest.raises(DataValidationError) as caught:
        read(paths)
    message = str(caught.value)
    assert "interactions.csv" in message and f"{name}-delimited" in message
    assert repr(delimiter) in message and "save it with commas" in message


def test_semicolon_file_with_commas_in_values_names_the_delimiter(tmp_path):
    items = "item_id;title\ni1;Hello, world\ni2;x\n"
    paths = write(tmp_path, items=items, interactions="user_id,item_id,label\n1,i1,1\n")
    with pytest.raises(DataValidationError, match="semicolon-delimited"):
        read_csv_dataset(*paths, None, {"title": "categorical"})


# --- logging ---------------------------------------------------------------------------------


def test_configure_logging_is_idempotent_and_shows_plain_lines(tmp_path):
    stream = io.StringIO()
    configure_logging(stream=stream)
    configure_logging("INFO", stream=stream)
    logger = logging.getLogger("twotower_utils")
    assert sum(getattr(h, "_twotower_handler", False) for h in logger.handlers) == 1
    read(write(tmp_path, interactions="user_id,item_id,label\n1,i1,1\n1,i1,1\n"))
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("interactions.csv: data.label = 'column'"), "plain lines"
    assert lines[1].startswith("interactions.csv: removed 1 duplicate row(s)")
    assert len(lines) == 2, "each line once"
    with pytest.raises(ValueError, match="logging level 'loud'"):
        configure_logging("loud")


def test_configured_lines_are_not_repeated_by_a_root_handler(tmp_path):
    # TensorFlow's absl logging adds a stderr handler to the root logger on its first log
    # line (a checkpoint save); the package's lines must still show once.
    stream, root_stream = io.StringIO(), io.StringIO()
    root_handler = logging.StreamHandler(root_stream)
    logging.getLogger().addHandler(root_handler)
    try:
        configure_logging(stream=stream)
        read(write(tmp_path, interactions="user_id,item_id,label\n1,i1,1\n1,i1,1\n"))
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert "removed 1 duplicate row(s)" in stream.getvalue()
    assert root_stream.getvalue() == ""


def test_configure_logging_writes_to_stdout_by_default(tmp_path, capsys):
    configure_logging()
    read(write(tmp_path, interactions="user_id,item_id,label\n1,i1,1\n1,i1,1\n"))
    assert "removed 1 duplicate row(s)" in capsys.readouterr().out


def test_the_data_stage_prints_nothing_until_logging_is_configured_then_each_line_once(
        project_root, tmp_path, capsys):
    text, _ = duplicated_interactions(300)
    folder = tmp_path / "csv"
    write(folder, interactions=text)
    config = csv_config(project_root, tmp_path, folder)
    DataPreprocessor(config).load_data()
    quiet = capsys.readouterr()
    assert quiet.out == "" and "dataset " not in quiet.err, "progress is INFO: not shown"
    stream = io.StringIO()
    configure_logging(stream=stream)
    DataPreprocessor(config).load_data()
    shown = stream.getvalue().splitlines()
    assert sum("duplicate row(s)" in line for line in shown) == 1
    assert sum(line.startswith("dataset ") for line in shown) == 1
    assert capsys.readouterr().out == ""


# --- bounded negatives file --------------------------------------------------------------------


def synthetic_config(project_root, tmp_path, **overrides):
    return load_config(project_root / "config.json", {
        "data.dataset": "synthetic", "data.user_features": None, "data.item_features": None,
        "data.synthetic": {"num_users": 120, "num_items": 80, "num_interactions": 3000,
                           "num_clusters": 4, "seed": 3},
        "data.split.method": "random", "data.split.train_ratio": 0.8,
        "paths.raw_dir": str(tmp_path / "raw"),
        "paths.processed_dir": str(tmp_path / "processed"), **overrides,
    })


def test_negatives_file_is_a_bounded_seeded_sample(project_root, tmp_path):
    config = synthetic_config(project_root, tmp_path, **{"data.negatives_sample_size": 500})
    preprocessor = DataPreprocessor(config)
    data = load_processed(preprocessor.run())
    negatives = data.negatives
    assert len(negatives) == 500
    assert data.stats["num_negatives"] == 500
    assert data.stats["negatives_sampled_from"] == 16 * len(data.train)
    assert any("seeded sample of 500" in note for note in data.stats["notes"])
    assert eda.preprocessing_checks(data)["passed"].all()  # never a training positive
    assert set(negatives["user_idx"]) <= set(data.train["user_idx"])
    again = DataPreprocessor(config)
    again.split_data()
    pd.testing.assert_frame_equal(again.generate_negatives(), negatives)
    other = DataPreprocessor(config.with_overrides({"data.split.seed": 7}))
    other.split_data()
    assert not other.generate_negatives().equals(negatives)
    # A data setting seeds it: the processed data (and this file) is shared by every
    # training seed, so the training seed must not change it.
    same = DataPreprocessor(config.with_overrides({"training.seed": 7}))
    same.split_data()
    pd.testing.assert_frame_equal(same.generate_negatives(), negatives)


def test_small_data_keeps_every_negative_and_zero_negatives_still_leaves_a_sample(
        project_root, tmp_path):
    full = DataPreprocessor(synthetic_config(project_root, tmp_path))
    full.split_data()
    assert len(full.generate_negatives()) == 16 * len(full.train)
    assert full.stats()["negatives_sampled_from"] == 16 * len(full.train)
    none = DataPreprocessor(synthetic_config(project_root, tmp_path, **{
        "data.num_negatives": 0, "training.in_batch_negatives": True}))
    none.split_data()
    assert len(none.generate_negatives()) == len(none.train)  # for the score AUC of 05

"""Your own data: raw files read as they are, labels from what the log has, `inspect`, and the
suggested config run end to end without hand editing.

The raw files imitate a public MovieLens catalogue as downloaded: `ratings.csv` with
`userId,movieId,rating,timestamp` and trailing empty columns, `movies.csv` with
`movieId,title,genres` (titles with commas in quotes, `Action|Comedy` lists, "(no genres
listed)"). The end-to-end test runs the whole pipeline (FAST) once per label mode on tiny data.
"""

import json
import logging

import numpy as np
import pytest

from twotower_utils.config import ConfigError, load_config
from twotower_utils.data.__main__ import main as data_main
from twotower_utils.data.datasets import DataValidationError, load_dataset
from twotower_utils.data.inspect_data import infer_column, run_inspect
from twotower_utils.data.preprocessing import DataPreprocessor, load_processed, summarise
from twotower_utils.pipeline import runner as pipeline

GENRES = ["Action", "Comedy", "Drama", "Romance", "Sci-Fi", "Thriller"]


def write_raw(folder, users=48, items=30, liked=False, seed=0):
    """Write ratings.csv and movies.csv shaped like the raw MovieLens downloads."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for movie in range(1, items + 1):
        genres = "|".join(sorted(rng.choice(GENRES, size=1 + movie % 3, replace=False)))
        if movie % 7 == 0:
            genres = "(no genres listed)"
        title = f'"Story of {movie}, The ({1980 + movie})"' if movie % 2 else f"Film {movie} (1999)"
        lines.append(f"{movie},{title},{genres}\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "".join(lines))
    header = "userId,movieId,rating,timestamp" + (",liked" if liked else "") + ",,\n"
    rows = []
    for user in range(1, users + 1):
        taste = user % 2  # odd users like odd movies: something for the model to find
        for movie in rng.choice(np.arange(1, items + 1), size=14, replace=False):
            good = movie % 2 == taste
            rating = float(np.clip(rng.normal(4.2 if good else 2.4, 0.7) * 2, 1, 10)) // 1 / 2
            stamp = 964_982_703 + int(rng.integers(0, 10_000_000))
            extra = f",{int(rating >= 4)}" if liked else ""
            rows.append(f"{user},{movie},{rating:.1f},{stamp}{extra},,\n")
    (folder / "ratings.csv").write_text(header + "".join(rows))
    return folder / "ratings.csv", folder / "movies.csv"


def own_config(tmp_path, folder, **overrides):
    return load_config(tmp_path / "config.json" if (tmp_path / "config.json").is_file()
                       else _project_config(), {
        "data.dataset": "csv", "data.users_csv": None,
        "data.items_csv": str(folder / "movies.csv"),
        "data.interactions_csv": str(folder / "ratings.csv"),
        "data.columns": {"items": {"item_id": "movieId"},
                         "interactions": {"user_id": "userId", "item_id": "movieId"}},
        "data.item_features": {"genres": "multi_hot"},
        "data.split.method": "random", "data.split.train_ratio": 0.8,
        "paths.processed_dir": str(tmp_path / "processed"), **overrides})


def _project_config():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "config.json"


# --- reading raw files as they are ----------------------------------------------------------


@pytest.mark.parametrize("label, positives", [("all_positive", "all"), ("rating >= 4", "some")])
def test_raw_files_are_read_through_the_column_mapping(tmp_path, label, positives):
    write_raw(tmp_path / "raw")
    raw = load_dataset(own_config(tmp_path, tmp_path / "raw", **{"data.label": label,
                       "data.missing_values": ["(no genres listed)"]}))
    assert list(raw.interactions.columns[:3]) == ["user_id", "item_id", "label"]
    assert set(raw.interactions.columns) == {"user_id", "item_id", "label", "rating",
                                             "timestamp"}
    assert raw.items["title"].iloc[0] == "Story of 1, The (1981)", "quoted commas kept"
    assert raw.items.loc[raw.items["item_id"] == "7", "genres"].isna().all(), \
        "(no genres listed) means no genre"
    assert list(raw.users.columns) == ["user_id"] and len(raw.users) == 48
    notes = " | ".join(raw.notes)
    assert "ratings.csv: dropped 2 trailing column(s) with an empty header" in notes
    assert "movies.csv: column(s) not used: title" in notes
    assert "no data.users_csv: 48 users taken from ratings.csv, without features" in notes
    counts = raw.labels
    assert counts["mode"] == label and counts["rows"] == 48 * 14
    expected = (raw.interactions["rating"] >= 4).sum() if positives == "some" else 48 * 14
    assert counts["positives"] == expected == (raw.interactions["label"] == 1).sum()
    assert counts["explicit_negatives"] == 48 * 14 - expected


def test_rows_with_extra_empty_fields_and_an_unused_column_are_noted(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("userId,movieId,rating,when\nu1,m1,4.5,x,,\nu1,m2,2,y\n")
    raw = load_dataset(load_config(_project_config(), {
        "data.dataset": "csv", "data.interactions_csv": str(path), "data.label": "rating > 3",
        "data.columns.interactions": {"user_id": "userId", "item_id": "movieId"}}))
    notes = " | ".join(raw.notes)
    assert "1 row(s) end in empty fields beyond the header's 4 columns" in notes
    assert "ignored column(s) when" in notes
    assert raw.interactions["label"].tolist() == [1, 0]


def test_label_errors_name_the_key_column_row_and_fix(tmp_path):
    write_raw(tmp_path / "raw")
    with pytest.raises(ConfigError, match=r"data.label = 'rating => 4': expected 'column'"):
        own_config(tmp_path, tmp_path / "raw", **{"data.label": "rating => 4"})
    config = own_config(tmp_path, tmp_path / "raw", **{"data.label": "column"})
    with pytest.raises(DataValidationError) as caught:
        load_dataset(config)
    message = str(caught.value)
    assert "ratings.csv: missing column(s) 'label'" in message
    assert "set data.label to 'all_positive'" in message and "'rating >= 4'" in message
    # A rating column used as the label: the value, the row and the threshold to use instead.
    config = own_config(tmp_path, tmp_path / "raw", **{
        "data.label": "column", "data.columns.interactions.label": "rating"})
    with pytest.raises(DataValidationError, match=r"column 'rating', data row \d+ .*"
                       r"set data.label to a threshold such as 'rating >= 4'"):
        load_dataset(config)
    with pytest.raises(ConfigError, match="data.item_features = .*data.items_csv is null"):
        own_config(tmp_path, tmp_path / "raw", **{"data.items_csv": None})


def test_data_stage_says_what_is_used_labels_features_and_unused_columns(tmp_path, caplog):
    write_raw(tmp_path / "raw")
    config = own_config(tmp_path, tmp_path / "raw", **{"data.label": "rating >= 4"})
    preprocessor = DataPreprocessor(config)
    with caplog.at_level(logging.INFO, logger="twotower_utils"):
        directory = preprocessor.run()
    logged = caplog.text
    assert "item feature 'genres' (multi_hot): 7 values + 1 unknown slot, up to 3 per row" \
        in logged, "(no genres listed) is a value until data.missing_values says otherwise"
    assert "user tower: id and history only" in logged
    stats = load_processed(directory).stats
    assert stats["labels"]["mode"] == "rating >= 4"
    assert stats["num_explicit_negatives"] == stats["labels"]["explicit_negatives"] > 0
    assert stats["unused_columns"] == {"items": ["title"], "interactions": []}
    assert stats["features"]["item"][0] == {"name": "genres", "type": "multi_hot", "size": 8,
                                            "max_len": 3, "encoded": "7 values + 1 unknown "
                                            "slot, up to 3 per row"}
    text = summarise(stats, directory)
    assert "labels: data.label = 'rating >= 4'" in text
    assert "columns not used: items: title" in text


# --- inspect --------------------------------------------------------------------------------


def test_column_types_are_inferred():
    import pandas as pd

    kinds = {
        "userId": (["1", "2", "3"], "id-like"),
        "rating": (["4.5", "3", "0.5"], "numeric"),
        "timestamp": (["964982703", "964982224", "964983815"], "timestamp"),
        "genres": (["Action|Comedy", "Drama", "Comedy|Drama"] * 5, "multi-hot"),
        "title": ([f"A long title number {i}, The" for i in range(40)], "free text"),
        "gender": (["F", "M", "M", None], "categorical"),
        "clicked_at": (["2024-01-02", "2024-02-03"], "timestamp"),
    }
    for name, (values, kind) in kinds.items():
        info = infer_column(name, pd.Series(values, dtype=object))
        assert info.kind == kind, (name, info)
    assert infer_column("genres", pd.Series(["a|b", "b|c"] * 3)).separator == "|"
    assert infer_column("gender", pd.Series(["F", "M", None])).missing == pytest.approx(1 / 3)


def test_inspect_prints_types_problems_and_a_suggestion_it_checked(tmp_path, capsys):
    ratings, movies = write_raw(tmp_path / "raw")
    status = data_main(["inspect", "--items", str(movies), "--interactions", str(ratings),
                        "--write-config", str(tmp_path / "cfg" / "my.json")])
    out = capsys.readouterr().out
    assert status == 0
    assert "genres   multi-hot (7 values, separator '|')" in out
    assert "title    free text" in out and "timestamp  timestamp (Unix seconds)" in out
    assert "data.label = \"rating >= 4\"" in out and "--label all_positive" in out
    assert "dry run of the data stage's loading with these settings: OK: 48 users" in out
    written = json.loads((tmp_path / "cfg" / "my.json").read_text())["data"]
    assert written["items_csv"] == "../raw/movies.csv" and written["users_csv"] is None
    assert written["columns"]["interactions"]["user_id"] == "userId"
    assert written["item_features"] == {"genres": "multi_hot"}
    assert written["missing_values"] == ["(no genres listed)"]
    assert data_main(["inspect", "--interactions", str(ratings), "--label", "ratings>4"]) == 2
    with pytest.raises(ConfigError, match="--label column: ratings.csv has no 0/1 column"):
        run_inspect(ratings, label="column", print_=lambda *a: None)


def test_inspect_reports_a_file_it_cannot_read(tmp_path):
    (tmp_path / "bad.csv").write_text("user;item\n1;2\n")
    lines = []
    run_inspect(tmp_path / "bad.csv", print_=lines.append)
    text = "\n".join(lines)
    assert "PROBLEM:" in text and "semicolon-delimited" in text


# --- end to end: raw files -> inspect -> make run, per label mode -----------------------------


@pytest.mark.tf
@pytest.mark.parametrize("mode", ["rating", "all_positive", "column"])
def test_raw_files_through_inspect_to_a_finished_fast_run(tmp_path, mode):
    ratings, movies = write_raw(tmp_path / "downloads", liked=mode == "column")
    config = tmp_path / "my.json"
    args = ["inspect", "--items", str(movies), "--interactions", str(ratings),
            "--write-config", str(config)]
    assert data_main(args + (["--label", "all_positive"] if mode == "all_positive" else [])) == 0
    label = json.loads(config.read_text())["data"]["label"]
    assert label == {"rating": "rating >= 4", "all_positive": "all_positive",
                     "column": "column"}[mode]
    # The full pipeline for one mode; data and training stages for the others (time). One
    # model instead of config.json's ensemble of four keeps each run short; the written
    # config itself is used as it is.
    stages = [] if mode == "rating" else ["--stage", "preprocessing", "--stage", "training"]
    status = pipeline.main(["--config", str(config), "--fast", "--run-id", f"own-{mode}",
                            "--no-html", "-p", "model.ensemble_size", "1", *stages])
    assert status == 0
    summary = json.loads((tmp_path / "reports" / f"own-{mode}" / "summary.json").read_text())
    assert summary["status"] == "ok"
    recorded = summary["results"]["preprocessing"]
    assert recorded["labels"]["mode"] == label
    assert recorded["unused_columns"]["items"] == ["title"]
    if mode == "rating":
        assert summary["metrics"]["two_tower"]["ndcg@10"] >= 0


def test_a_config_error_is_printed_once_and_make_help_shows_the_pipeline_options(
        tmp_path, capsys):
    import shutil
    import subprocess

    shutil.copy(_project_config(), tmp_path / "config.json")  # an ensemble of four members
    assert pipeline.main(["--config", str(tmp_path / "config.json"),
                          "-p", "data.label", "rating => 4"]) == 2
    assert capsys.readouterr().err.count("data.label = 'rating => 4'") == 1
    if shutil.which("make"):
        text = subprocess.run(["make", "help"], capture_output=True, text=True, check=True,
                              cwd=_project_config().parent).stdout
        for option in ("--config FILE", "--cell-timeout", "--from-stage", "--run-id",
                       "resume", "make inspect"):
            assert option in text, option


def test_a_users_file_with_its_own_id_name_joins_the_log(tmp_path):
    ratings, movies = write_raw(tmp_path / "raw", users=6)
    (tmp_path / "raw" / "people.csv").write_text(
        "person,age,city\n" + "".join(f"{u}.0,{20 + u},c{u % 2}\n" for u in range(1, 7)))
    raw = load_dataset(own_config(tmp_path, tmp_path / "raw", **{
        "data.users_csv": str(tmp_path / "raw" / "people.csv"),
        "data.columns.users.user_id": "person", "data.user_features": {"age": "numeric"},
        "data.label": "all_positive"}))
    assert list(raw.users.columns) == ["user_id", "age", "city"]
    assert sorted(raw.users["user_id"]) == [str(u) for u in range(1, 7)], "'1.0' read as '1'"
    assert len(raw.interactions) == 6 * 14
    assert "people.csv: column(s) not used: city" in " | ".join(raw.notes)
    assert raw.unused_columns == {"users": ["city"], "items": ["title"], "interactions": []}

"""twotower_utils.data.datasets: CSV validation, the synthetic generator, MovieLens-100K sources.

No test uses the network: the zip and wheel sources are served from small fakes built in
tmp_path, through the injectable `urlopen` and `pip_download` of `fetch_movielens_100k`.
"""

import functools
import hashlib
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from log_capture import captured_log

from twotower_utils.config import config_from_dict
from twotower_utils.data import datasets
from twotower_utils.data.datasets import (
    ML100K_ITEM_FEATURES,
    ML100K_USER_FEATURES,
    DataSourceError,
    DataValidationError,
    fetch_movielens_100k,
    generate_synthetic,
    load_dataset,
    read_csv_dataset,
    write_dataset,
)
from twotower_utils.data.movielens import ML100K_GENRES, RECBOLE_PREFIX

# --- CSV files --------------------------------------------------------------------------------

USERS = "user_id,age,gender\n007,30,F\n8,41,M\n9,,F\n"
ITEMS = "item_id,genres,year\na,x|y,1999\nb,y,2001\n"
INTERACTIONS = "user_id,item_id,label,timestamp,rating,session\n007,a,1,100,4.5,s1\n8,b,0,101,,s2\n"
USER_FEATURES = {"age": "numeric", "gender": "categorical"}
ITEM_FEATURES = {"genres": "multi_hot", "year": "numeric"}


def write_csvs(folder: Path, users=USERS, items=ITEMS, interactions=INTERACTIONS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("users.csv", users), ("items.csv", items),
                       ("interactions.csv", interactions)):
        if text is not None:
            (folder / name).write_text(text)
        paths.append(folder / name)
    return paths


def read(paths, **kwargs):
    return read_csv_dataset(*paths, USER_FEATURES, ITEM_FEATURES, **kwargs)


def test_valid_csvs_keep_string_ids_types_order_and_explicit_negatives(tmp_path):
    raw = read(write_csvs(tmp_path))
    assert raw.users["user_id"].tolist() == ["007", "8", "9"]
    assert raw.users["age"].isna().tolist() == [False, False, True]
    assert raw.items["year"].tolist() == [1999, 2001]
    inter = raw.interactions
    assert list(inter.columns) == ["user_id", "item_id", "label", "rating", "timestamp"]
    assert inter["user_id"].tolist() == ["007", "8"] and inter["label"].tolist() == [1, 0]
    assert inter["label"].dtype == np.int8 and inter["timestamp"].dtype == np.int64
    assert inter["rating"].dtype == np.float32 and np.isnan(inter["rating"].iloc[1])
    assert raw.user_features == USER_FEATURES and raw.item_features == ITEM_FEATURES
    assert any("ignored column(s) session" in note for note in raw.notes)


BAD_INPUTS = {
    "missing declared feature": (
        {"users": "user_id,gender\n1,F\n"}, ["users.csv", "missing column(s) 'age'",
                                             "data.user_features"]),
    "missing label column": (
        {"interactions": "user_id,item_id\n007,a\n"}, ["interactions.csv", "'label'"]),
    "label outside 0/1": (
        {"interactions": "user_id,item_id,label\n007,a,1\n8,b,2\n"},
        ["interactions.csv", "column 'label', data row 2 (line 3)", "'2'", "0 or 1"]),
    "label not a number": (
        {"interactions": "user_id,item_id,label\n007,a,yes\n"},
        ["interactions.csv", "column 'label', data row 1 (line 2)", "'yes'"]),
    "label missing": (
        {"interactions": "user_id,item_id,label\n007,a,1\n8,b,\n"},
        ["column 'label', data row 2", "an empty cell"]),
    "non-numeric numeric feature": (
        {"users": "user_id,age,gender\n1,30,F\n2,thirty,M\n"},
        ["users.csv", "column 'age', data row 2 (line 3)", "'thirty'", "a number"]),
    "non-numeric item numeric": (
        {"items": "item_id,genres,year\na,x,n/a\n"}, ["items.csv", "column 'year'", "'n/a'"]),
    "duplicate user id": (
        {"users": "user_id,age,gender\n1,30,F\n8,41,M\n8,42,M\n"},
        ["users.csv", "column 'user_id', data row 3", "duplicate id '8'",
         "first seen at data row 2"]),
    "duplicate item id": (
        {"items": "item_id,genres,year\na,x,1\na,y,2\n"},
        ["items.csv", "column 'item_id', data row 2", "duplicate id 'a'"]),
    "missing id": (
        {"interactions": "user_id,item_id,label\n007,a,1\n,b,1\n"},
        ["interactions.csv", "column 'user_id', data row 2", "missing id", "an empty cell"]),
    "fractional timestamp": (
        {"interactions": "user_id,item_id,label,timestamp\n007,a,1,1.5\n"},
        ["column 'timestamp', data row 1", "'1.5'", "whole seconds"]),
    "bad rating": (
        {"interactions": "user_id,item_id,label,rating\n007,a,1,good\n"},
        ["column 'rating', data row 1", "'good'"]),
    "empty file": ({"items": ""}, ["items.csv", "empty file", "item_id"]),
    "header only": ({"users": "user_id,age,gender\n"}, ["users.csv", "no data rows"]),
    "missing file": ({"interactions": None}, ["interactions.csv", "file not found"]),
    "ragged row": (
        {"items": "item_id,genres,year\na,x,1\nb,y,2,extra\n"},
        ["items.csv", "line 3 has 4 fields but the header has 3"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_csv_input_is_refused_naming_file_column_and_row(tmp_path, case):
    replace, expected = BAD_INPUTS[case]
    paths = write_csvs(tmp_path, **replace)
    with pytest.raises(DataValidationError) as caught:
        read(paths)
    for text in expected:
        assert text in str(caught.value)


def test_bad_declarations_are_refused(tmp_path):
    paths = write_csvs(tmp_path)
    with pytest.raises(DataValidationError, match="'age'.*'ordinal'.*expected one of"):
        read_csv_dataset(*paths, {"age": "ordinal"}, {})
    with pytest.raises(ValueError, match="missing_feature_rows = 'ignore'"):
        read(paths, missing_feature_rows="ignore")


MISSING_ROWS = ("user_id,item_id,label\n007,a,1\n99,a,1\n99,b,1\n8,zz,1\n9,b,1\n")


def test_missing_feature_rows_are_counted_then_dropped_or_kept(tmp_path):
    paths = write_csvs(tmp_path, interactions=MISSING_ROWS)
    dropped = read(paths)
    assert dropped.interactions["user_id"].tolist() == ["007", "9"]
    notes = " | ".join(dropped.notes)
    assert ("2 interaction(s) have a user_id with no row in users.csv (1 distinct id(s); "
            "first '99' at interactions.csv data row 2)") in notes
    assert "1 interaction(s) have a item_id with no row in items.csv" in notes
    assert "dropped 3 of 5" in notes
    kept = read(paths, missing_feature_rows="keep")
    assert len(kept.interactions) == 5 and "kept 3 interaction(s)" in " ".join(kept.notes)
    nothing_matches = write_csvs(tmp_path / "b", interactions="user_id,item_id,label\nx,y,1\n")
    with pytest.raises(DataValidationError, match="none of the 1 interactions"):
        read(nothing_matches)


def test_write_dataset_round_trips_and_a_failed_write_keeps_the_old_copy(
        tmp_path, small_synthetic, monkeypatch):
    raw = small_synthetic
    target = write_dataset(raw, tmp_path / "syn")
    back = read_csv_dataset(target / "users.csv", target / "items.csv",
                            target / "interactions.csv", raw.user_features, raw.item_features)
    pd.testing.assert_frame_equal(back.interactions, raw.interactions)
    for side, features in (("users", raw.user_features), ("items", raw.item_features)):
        columns = [f"{side[:-1]}_id", *features]
        pd.testing.assert_frame_equal(getattr(back, side)[columns], getattr(raw, side)[columns])
    before = (target / "interactions.csv").read_bytes()

    def broken(frame, path, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(raw, target)
    assert (target / "interactions.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temporary leftovers


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed(small_synthetic):
    again = generate_synthetic(300, 200, 6000, num_clusters=8, seed=0)
    for part in ("users", "items", "interactions"):
        pd.testing.assert_frame_equal(getattr(again, part), getattr(small_synthetic, part))
    other = generate_synthetic(300, 200, 6000, num_clusters=8, seed=1)
    assert not other.interactions.equals(small_synthetic.interactions)


def test_synthetic_follows_the_data_contract(small_synthetic):
    raw = small_synthetic
    inter = raw.interactions
    assert len(inter) == 6000 and not inter.duplicated(["user_id", "item_id"]).any()
    assert inter["user_id"].dtype == "str" and (inter["label"] == 1).all()
    assert inter["timestamp"].is_monotonic_increasing and inter["rating"].between(1, 5).all()
    assert inter["user_id"].isin(raw.users["user_id"]).all()
    assert inter["item_id"].isin(raw.items["item_id"]).all()
    kinds = {*raw.user_features.values(), *raw.item_features.values()}
    assert kinds == {"categorical", "numeric", "multi_hot"}
    assert set(raw.users.columns) >= {"user_id", *raw.user_features}
    assert set(raw.items.columns) >= {"item_id", *raw.item_features}


def test_synthetic_held_out_items_come_mostly_from_the_users_cluster(small_synthetic):
    raw = small_synthetic
    inter = raw.interactions.merge(raw.items[["item_id", "cluster", "category"]], on="item_id")
    inter = inter.sort_values("timestamp", kind="stable")
    held_out = inter.groupby("user_id").tail(1)
    train = inter.drop(held_out.index)
    users = raw.users.set_index("user_id")
    # Learnable from ids: a user's last item sits in their cluster.
    assert (held_out["cluster"].to_numpy()
            == users.loc[held_out["user_id"], "cluster"].to_numpy()).mean() >= 0.7
    # Learnable from history and features alone: the majority category of the training items.
    majority = train.groupby("user_id")["category"].agg(lambda s: s.mode().iloc[0])
    last = held_out.set_index("user_id")["category"]
    hit = (last == majority.reindex(last.index)).mean()
    assert hit >= 0.45  # chance is 1/8
    segment_matches = raw.users["segment"] == "seg" + raw.users["cluster"].astype(str)
    assert segment_matches.mean() >= 0.75


def test_synthetic_popularity_is_long_tailed_and_arguments_are_checked():
    def top_decile_share(exponent):
        counts = generate_synthetic(500, 400, 8000, popularity_exponent=exponent).interactions[
            "item_id"].value_counts()
        return counts.iloc[:40].sum() / counts.sum()

    assert top_decile_share(1.0) > top_decile_share(0.0) + 0.1
    with pytest.raises(ValueError, match="num_users = 0"):
        generate_synthetic(0, 10, 10)
    with pytest.raises(ValueError, match="more than the 6 distinct"):
        generate_synthetic(2, 3, 7)
    assert len(generate_synthetic(2, 3, 6).interactions) == 6  # every pair, still exact


# --- MovieLens-100K sources (local fakes) --------------------------------------------------------

FAKE_UDATA = "1\t10\t4\t881250949\n2\t10\t3\t891717742\n1\t20\t5\t878887116\n3\t30\t1\t8800\n"
FAKE_SHA256 = hashlib.sha256(FAKE_UDATA.encode()).hexdigest()
FAKE_USERS = [("1", "24", "M", "technician", "85711"), ("2", "53", "F", "other", "94043"),
              ("3", "23", "M", "writer", "E2A4H")]
FAKE_ITEMS = [("10", "Toy Story (1995)", "01-Jan-1995", ["Animation", "Comedy"]),
              ("20", "Misérables, Les (1995)", "01-Jan-1996", ["Drama", "Musical"]),
              ("30", "unknown", "", ["unknown"])]


def flags(genres):
    return "|".join("1" if name in genres else "0" for name in ML100K_GENRES)


def make_grouplens_dir(folder: Path, udata: str = FAKE_UDATA) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(udata)
    (folder / "u.user").write_text("".join("|".join(row) + "\n" for row in FAKE_USERS))
    items = "".join(f"{i}|{title}|{date}||http://x|{flags(genres)}\n"
                    for i, title, date, genres in FAKE_ITEMS)
    (folder / "u.item").write_bytes(items.encode("latin-1"))
    (folder / "u.genre").write_text("".join(f"{g}|{n}\n" for n, g in enumerate(ML100K_GENRES)))
    return folder


def make_zip(path: Path, source: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in source.iterdir():
            archive.write(file, f"ml-100k/{file.name}")
    return path


def make_wheel(path: Path, udata: str = FAKE_UDATA) -> Path:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + udata
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" + "".join(
        "\t".join(row) + "\n" for row in FAKE_USERS)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    for item_id, title, _, genres in FAKE_ITEMS:
        # recbole splits "Title (1995)" into title and year; "unkonwn" (sic) when it has none
        found = re.fullmatch(r"(.*) \((\d{4})\)", title)
        name, year = found.groups() if found else (title, "unkonwn")
        item += f"{item_id}\t{name}\t{year}\t{' '.join(genres)}\n"
    with zipfile.ZipFile(path, "w") as archive:
        for suffix, text in (("inter", inter), ("user", user), ("item", item)):
            archive.writestr(f"{RECBOLE_PREFIX}.{suffix}", text.encode("utf-8"))
        archive.writestr("recbole/__init__.py", "")
    return path


def offline(url, timeout=None):
    raise urllib.error.URLError("network disabled in tests")


def no_pip(requirement, dest):
    raise RuntimeError("pip disabled in tests")


def wheel_pip(tmp_path, udata=FAKE_UDATA):
    def download(requirement, dest):
        assert requirement == "recbole==1.2.1"
        make_wheel(Path(dest) / "recbole-1.2.1-py3-none-any.whl", udata)

    return download


@pytest.fixture()
def fetch(tmp_path, monkeypatch):
    """fetch_movielens_100k into tmp_path/raw, offline by default, its log lines collected."""
    monkeypatch.delenv("TWOTOWER_ML100K_DIR", raising=False)

    def run(local_dir=None, **kwargs):
        kwargs = {"expected_sha256": FAKE_SHA256, "urlopen": offline, "pip_download": no_pip,
                  **kwargs}
        return fetch_movielens_100k(tmp_path / "raw", local_dir, **kwargs)

    with captured_log("twotower_utils.data.movielens") as run.logs:
        yield run


def read_ml(directory):
    return read_csv_dataset(directory / "users.csv", directory / "items.csv",
                            directory / "interactions.csv", ML100K_USER_FEATURES,
                            ML100K_ITEM_FEATURES)


def test_local_directory_is_converted_to_the_contract(tmp_path, fetch):
    raw = read_ml(fetch(make_grouplens_dir(tmp_path / "ml")))
    inter = raw.interactions
    assert inter[["user_id", "item_id"]].to_numpy().tolist() == [
        ["1", "10"], ["2", "10"], ["1", "20"], ["3", "30"]]  # u.data order
    assert inter["rating"].tolist() == [4, 3, 5, 1] and inter["timestamp"].iloc[3] == 8800
    assert raw.users["zip_prefix"].tolist() == ["857", "940", "E2A"]
    assert raw.items["title"].iloc[1] == "Misérables, Les (1995)"  # latin-1 decoded
    assert raw.items["release_year"].iloc[:2].tolist() == [1995, 1996]
    assert np.isnan(raw.items["release_year"].iloc[2])
    assert raw.items["genres"].tolist() == ["Animation|Comedy", "Drama|Musical", "unknown"]
    assert "converted from local directory" in fetch.logs[-1]


def test_zip_source_downloads_once_and_is_cached(tmp_path, fetch):
    archive = make_zip(tmp_path / "ml-100k.zip", make_grouplens_dir(tmp_path / "ml"))
    out = fetch(url=archive.as_uri(), urlopen=urllib.request.urlopen)
    assert "local directory failed: not configured" in fetch.logs[0]
    assert (tmp_path / "raw" / "downloads" / "ml-100k.zip").is_file()
    assert len(read_ml(out).interactions) == 4
    fetch(force=True)  # offline now: the cached zip serves the conversion again
    assert "converted from GroupLens zip" in fetch.logs[-1]


def test_wheel_source_reads_recbole_atomic_files_without_installing(tmp_path, fetch):
    out = fetch(pip_download=wheel_pip(tmp_path))
    assert any("GroupLens zip" in line and "network disabled" in line for line in fetch.logs)
    raw = read_ml(out)
    assert raw.interactions["item_id"].tolist() == ["10", "10", "20", "30"]
    assert raw.items["genres"].tolist() == ["Animation|Comedy", "Drama|Musical", "unknown"]
    assert raw.items["title"].iloc[0] == "Toy Story"  # recbole drops the "(year)" suffix
    manifest = (out / "manifest.json").read_text()
    assert "PyPI wheel recbole==1.2.1" in manifest and "release-date year" in manifest
    assert (tmp_path / "raw" / "downloads" / "recbole-1.2.1-py3-none-any.whl").is_file()


def test_a_copy_from_the_wheel_gives_way_to_a_configured_grouplens_directory(tmp_path, fetch):
    # recbole's item table differs from u.item (release years, titles): a benchmark given
    # GroupLens' files must not train on a copy an earlier run converted from the wheel.
    fetch(pip_download=wheel_pip(tmp_path))
    out = fetch(make_grouplens_dir(tmp_path / "ml"))
    assert "converted from local directory" in fetch.logs[-1]
    assert "local directory" in (out / "manifest.json").read_text()
    assert read_ml(out).items["title"].iloc[0] != "Toy Story", "u.item's title, with its year"
    fetch(make_grouplens_dir(tmp_path / "ml"))
    assert "using the converted copy" in fetch.logs[-1]


def test_all_sources_failing_lists_every_source_and_reason(fetch):
    with pytest.raises(DataSourceError) as caught:
        fetch()
    message = str(caught.value)
    assert "1. local directory: not configured" in message
    assert "2. GroupLens zip https://files.grouplens.org" in message and "network" in message
    assert "3. PyPI wheel recbole==1.2.1: pip disabled in tests" in message
    assert "TWOTOWER_ML100K_DIR" in message and len(fetch.logs) == 3


def test_hash_mismatch_is_refused_from_every_source(tmp_path, fetch):
    shuffled = "".join(reversed(FAKE_UDATA.splitlines(keepends=True)))
    local = make_grouplens_dir(tmp_path / "ml", udata=shuffled)
    with pytest.raises(DataSourceError) as caught:
        fetch(local, pip_download=wheel_pip(tmp_path, udata=shuffled))
    message = str(caught.value)
    assert message.count(f"expected {FAKE_SHA256}") == 2 and "refusing" in message
    assert not (tmp_path / "raw" / "movielens-100k").exists()


def test_second_call_is_a_cache_hit_without_any_source(tmp_path, fetch):
    first = fetch(make_grouplens_dir(tmp_path / "ml"))
    assert fetch(tmp_path / "nowhere") == first
    assert "using the converted copy" in fetch.logs[-1]
    with pytest.raises(DataSourceError):  # another expected hash: the cache does not count
        fetch(expected_sha256="0" * 64)


def test_environment_variable_names_the_local_directory(tmp_path, fetch, monkeypatch):
    monkeypatch.setenv("TWOTOWER_ML100K_DIR", str(make_grouplens_dir(tmp_path / "ml")))
    fetch()
    assert f"local directory {tmp_path / 'ml'}" in fetch.logs[-1]


@pytest.mark.movielens
def test_real_local_copy_matches_u_data(tmp_path, ml100k_dir):
    out = fetch_movielens_100k(tmp_path / "raw", ml100k_dir,
                               urlopen=offline, pip_download=no_pip)
    raw = read_ml(out)
    assert (len(raw.users), len(raw.items), len(raw.interactions)) == (943, 1682, 100000)
    udata = pd.read_csv(ml100k_dir / "u.data", sep="\t", header=None, dtype=str)
    assert raw.interactions["user_id"].tolist() == udata[0].tolist()
    assert raw.interactions["item_id"].tolist() == udata[1].tolist()
    assert raw.items.loc[0, "genres"] == "Animation|Children's|Comedy"


# --- load_dataset ----------------------------------------------------------------------------


def test_load_dataset_dispatches_on_the_configured_source(tmp_path, monkeypatch):
    write_csvs(tmp_path / "mine")
    csv_config = config_from_dict({"data": {
        "dataset": "csv", "users_csv": "mine/users.csv", "items_csv": "mine/items.csv",
        "interactions_csv": "mine/interactions.csv", "user_features": None,
        "item_features": ITEM_FEATURES}}, root=tmp_path)
    raw = load_dataset(csv_config)
    assert raw.user_features == {} and raw.item_features == ITEM_FEATURES

    synthetic = {"dataset": "synthetic", "user_features": None, "item_features": None,
                 "synthetic": {"num_users": 50, "num_items": 40, "num_interactions": 500}}
    raw = load_dataset(config_from_dict({"data": synthetic}, root=tmp_path))
    assert raw.name == "synthetic" and len(raw.interactions) == 500
    declared = {**synthetic, "user_features": ML100K_USER_FEATURES}
    with pytest.raises(DataValidationError, match="user_features to null"):
        load_dataset(config_from_dict({"data": declared}, root=tmp_path))

    make_grouplens_dir(tmp_path / "ml")
    monkeypatch.delenv("TWOTOWER_ML100K_DIR", raising=False)
    monkeypatch.setattr(datasets, "fetch_movielens_100k", functools.partial(
        fetch_movielens_100k, expected_sha256=FAKE_SHA256, urlopen=offline, pip_download=no_pip))
    ml_config = config_from_dict({"data": {"ml100k_dir": "ml", "user_features": None},
                                  "paths": {"raw_dir": "raw"}}, root=tmp_path)
    raw = load_dataset(ml_config)
    assert raw.name == "movielens-100k" and raw.user_features == ML100K_USER_FEATURES
    assert raw.notes[0].startswith("MovieLens-100K from local directory")
    assert (tmp_path / "raw" / "movielens-100k" / "interactions.csv").is_file()

"""MovieLens-100K: find the GroupLens files, verify them and convert them to the data contract.

Sources are tried in order, each failure noted in one line:
1. a local directory with `u.data`, `u.user`, `u.item` (`local_dir`, else `TWOTOWER_ML100K_DIR`);
2. the official `ml-100k.zip`, downloaded once into `<raw_dir>/downloads/`;
3. the PyPI wheel `recbole==1.2.1`, whose `recbole/dataset_example/ml-100k/ml-100k.{inter,user,
   item}` atomic files (tab-separated, typed headers such as `user_id:token`) carry the same
   ratings; read straight from the wheel zip, never installed.
Whatever the source, the interactions must re-create `u.data` byte for byte (its sha256 is
`ML100K_SHA256`). The result is `<raw_dir>/movielens-100k/{users,items,interactions}.csv`
plus `manifest.json`, written atomically; a later call finds it and does no I/O beyond that.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_utils.data.rawdata import (
    CSV_NAMES,
    DataValidationError,
    RawDataset,
    as_str_series,
    read_manifest,
    write_dataset,
)

ML100K_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_ENV_VAR = "TWOTOWER_ML100K_DIR"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/ml-100k"
ML100K_USER_FEATURES = {"age": "numeric", "gender": "categorical", "occupation": "categorical",
                        "zip_prefix": "categorical"}
ML100K_ITEM_FEATURES = {"release_year": "numeric", "genres": "multi_hot"}
# u.genre's order; used when a source has no u.genre (the recbole wheel names genres itself).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
logger = logging.getLogger(__name__)  # under twotower_utils.data: the data stage's log
_FORMAT = 1  # bump when the conversion changes, so older caches are rebuilt
_UDATA = ["user_id", "item_id", "rating", "timestamp"]
_UUSER = ["user_id", "age", "gender", "occupation", "zip_code"]

PipDownload = Callable[[str, Path], None]
Reader = Callable[[str], bytes]


class DataSourceError(RuntimeError):
    """No source could provide the dataset; the message lists every source tried and why."""


def pip_download(requirement: str, dest: Path) -> None:
    """Download the wheel `requirement` (e.g. "recbole==1.2.1") into `dest` with pip.

    Runs `python -m pip download --no-deps --only-binary=:all:` with the running interpreter,
    with a short network timeout and one retry so that an offline machine fails in seconds.
    Returns None; raises `RuntimeError` with pip's last error line when pip fails.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--timeout", "15", "--retries", "1",
               requirement, "-d", str(dest)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
        raise RuntimeError(f"pip download exited with {done.returncode}: {lines[-1].strip()}")


def fetch_movielens_100k(
    raw_dir: str | Path,
    local_dir: str | Path | None = None,
    *,
    expected_sha256: str = ML100K_SHA256,
    url: str = ML100K_URL,
    urlopen: Callable = urllib.request.urlopen,
    pip_download: PipDownload = pip_download,
    timeout: float = 10.0,
    force: bool = False,
) -> Path:
    """Make `<raw_dir>/movielens-100k/{users,items,interactions}.csv` exist; return that dir.

    Takes the raw-data directory, an optional directory holding the GroupLens files (default:
    the `TWOTOWER_ML100K_DIR` environment variable), the
    sha256 the `u.data` text must have, and injectable `url`/`urlopen`/`pip_download` (tests
    serve local fakes through them). A finished earlier conversion with the same hash is
    reused without touching any source unless `force`, or unless it came from the recbole
    wheel (whose item table differs from u.item) while a local directory holding u.data is
    configured: GroupLens' own files then replace it, so a configured copy always decides
    the data. Raises `DataSourceError` listing every source and its failure when none works
    (a source whose data fails the hash is refused).
    """
    raw_dir = Path(raw_dir).resolve()
    target = raw_dir / "movielens-100k"
    manifest = read_manifest(target)
    if local_dir is None and os.environ.get(ML100K_ENV_VAR):
        local_dir = os.environ[ML100K_ENV_VAR]
    derived_while_exact_at_hand = (
        manifest is not None and str(manifest.get("source", "")).startswith("PyPI wheel")
        and local_dir is not None and (Path(local_dir).expanduser() / "u.data").is_file())
    if (not force and manifest and manifest.get("sha256") == expected_sha256
            and manifest.get("format") == _FORMAT and not derived_while_exact_at_hand
            and all((target / name).is_file() for name in CSV_NAMES)):
        logger.info(f"MovieLens-100K: using the converted copy in {target}")
        return target
    downloads = raw_dir / "downloads"
    sources: list[tuple[str, Callable[[], RawDataset]]] = [
        (f"local directory {local_dir}" if local_dir else "local directory",
         lambda: _from_local(local_dir, expected_sha256)),
        (f"GroupLens zip {url}", lambda: _from_zip(downloads, url, urlopen, timeout,
                                                   expected_sha256)),
        (f"PyPI wheel {RECBOLE_REQUIREMENT}", lambda: _from_wheel(downloads, pip_download,
                                                                 expected_sha256)),
    ]
    failures = []
    for label, load in sources:
        try:
            raw = load()
        except Exception as err:  # any failure means: try the next source
            reason = " ".join(str(err).split()) or type(err).__name__
            failures.append(f"{label}: {reason}")
            logger.info(f"MovieLens-100K: {label} failed: {reason}")
            continue
        raw.notes.insert(0, f"MovieLens-100K from {label} (u.data sha256 verified)")
        write_dataset(raw, target, manifest={"dataset": "movielens-100k", "source": label,
                                             "sha256": expected_sha256, "format": _FORMAT})
        logger.info(f"MovieLens-100K: converted from {label} into {target}")
        return target
    listing = "\n".join(f"  {n}. {line}" for n, line in enumerate(failures, 1))
    raise DataSourceError(
        f"MovieLens-100K is not available; every source failed:\n{listing}\n"
        f"Fix: on a machine with internet access download {ML100K_URL}, unzip it and set "
        f"{ML100K_ENV_VAR} (or data.ml100k_dir in config.json) to the ml-100k folder."
    )


# --- sources -------------------------------------------------------------------------------


def _from_local(local_dir: str | Path | None, expected: str) -> RawDataset:
    if not local_dir:
        raise FileNotFoundError(f"not configured (pass local_dir, set data.ml100k_dir in "
                                f"config.json or the {ML100K_ENV_VAR} environment variable)")
    folder = Path(local_dir).expanduser()
    if not (folder / "u.data").is_file():
        raise FileNotFoundError(f"no u.data in {folder}")
    return _convert_grouplens(lambda name: (folder / name).read_bytes(), str(folder), expected)


def _from_zip(downloads: Path, url: str, urlopen: Callable, timeout: float,
              expected: str) -> RawDataset:
    cached = downloads / "ml-100k.zip"
    if cached.is_file():
        try:
            return _convert_zip(cached, expected)
        except Exception as err:  # a broken cache is replaced by a download
            logger.info(f"MovieLens-100K: cached {cached} is unusable ({err}); downloading again")
            cached.unlink()
    _download(url, cached, urlopen, timeout)
    return _convert_zip(cached, expected)


def _convert_zip(path: Path, expected: str) -> RawDataset:
    with zipfile.ZipFile(path) as archive:
        members = {Path(name).name: name for name in archive.namelist()
                   if Path(name).name.startswith("u.")}

        def read(name: str) -> bytes:
            if name not in members:
                raise FileNotFoundError(f"{path} has no {name}")
            return archive.read(members[name])

        return _convert_grouplens(read, str(path), expected)


def _from_wheel(downloads: Path, download: PipDownload, expected: str) -> RawDataset:
    name, version = RECBOLE_REQUIREMENT.split("==")
    pattern = f"{name}-{version}-*.whl"
    wheels = sorted(downloads.glob(pattern))
    if not wheels:
        downloads.mkdir(parents=True, exist_ok=True)
        # pip writes into a private directory; only a complete wheel is moved into the cache.
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            download(RECBOLE_REQUIREMENT, Path(tmp))
            fetched = sorted(Path(tmp).glob(pattern))
            if not fetched:
                raise FileNotFoundError(f"pip download produced no {pattern}")
            os.replace(fetched[0], downloads / fetched[0].name)
        wheels = [downloads / fetched[0].name]
    with zipfile.ZipFile(wheels[0]) as archive:
        def read(suffix: str) -> bytes:
            return archive.read(f"{RECBOLE_PREFIX}.{suffix}")

        return _convert_recbole(read, str(wheels[0]), expected)


def _download(url: str, dest: Path, urlopen: Callable, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    try:
        with urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


# --- conversion ----------------------------------------------------------------------------


def _check_sha256(udata: bytes, expected: str, origin: str) -> None:
    got = hashlib.sha256(udata).hexdigest()
    if got != expected:
        raise DataValidationError(
            f"{origin}: the ratings (as u.data text) have sha256 {got}, expected {expected}; "
            "refusing data that is not the original MovieLens-100K (edited, truncated or "
            "re-ordered)"
        )


def _table(data: bytes | str, sep: str, names: list[str] | None, origin: str) -> pd.DataFrame:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        # QUOTE_NONE: titles contain quote characters that are text, not CSV quoting.
        return pd.read_csv(io.StringIO(text), sep=sep, header=None if names else 0, names=names,
                           dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False,
                           na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataValidationError(f"{origin}: cannot parse: {err}") from None


def _interactions(ratings: pd.DataFrame, origin: str) -> pd.DataFrame:
    if ratings[_UDATA].isna().to_numpy().any():
        raise DataValidationError(f"{origin}: some rating lines have fewer than 4 fields")
    return pd.DataFrame({
        "user_id": as_str_series(ratings["user_id"]),
        "item_id": as_str_series(ratings["item_id"]),
        "label": np.ones(len(ratings), dtype=np.int8),
        "rating": ratings["rating"].astype(np.float32),
        "timestamp": ratings["timestamp"].astype(np.int64),
    })


def _users(users: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": as_str_series(users["user_id"]),
        "age": pd.to_numeric(users["age"], errors="coerce"),
        "gender": users["gender"],
        "occupation": users["occupation"],
        # Canadian postcodes ("E2A4H") are not numbers: the prefix stays a string.
        "zip_prefix": users["zip_code"].str[:3],
    })


def _raw(interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
         notes: list[str]) -> RawDataset:
    return RawDataset("movielens-100k", users, items, interactions,
                      dict(ML100K_USER_FEATURES), dict(ML100K_ITEM_FEATURES), notes)


def _convert_grouplens(read: Reader, origin: str, expected: str) -> RawDataset:
    udata = read("u.data")
    _check_sha256(udata, expected, f"{origin}/u.data")
    ratings = _table(udata, "\t", _UDATA, f"{origin}/u.data")
    users = _table(read("u.user"), "|", _UUSER, f"{origin}/u.user")
    try:
        genre_lines = read("u.genre").decode("latin-1").splitlines()
        genres = [line.split("|")[0] for line in genre_lines if line.strip()]
    except (FileNotFoundError, KeyError):
        genres = list(ML100K_GENRES)
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *genres]
    # u.item is latin-1 (accented film titles); decoding it as UTF-8 fails on those bytes.
    items = _table(read("u.item").decode("latin-1"), "|", names, f"{origin}/u.item")
    flags = items[genres].fillna("0").to_numpy() == "1"
    genre_names = np.array(genres, dtype=object)
    joined = ["|".join(genre_names[row]) or np.nan for row in flags]
    year = items["release_date"].str.extract(r"(\d{4})\s*$", expand=False)
    item_table = pd.DataFrame({
        "item_id": as_str_series(items["item_id"]),
        "title": items["title"],
        "release_year": pd.to_numeric(year, errors="coerce").astype(np.float64),
        "genres": as_str_series(joined),
    })
    return _raw(_interactions(ratings, f"{origin}/u.data"), _users(users), item_table, [])


def _atomic(data: bytes, expected_fields: list[str], origin: str) -> pd.DataFrame:
    # RecBole's atomic files: tab-separated, header fields "name:type" (token, float, ...).
    table = _table(data, "\t", None, origin)
    fields = [str(column).split(":")[0] for column in table.columns]
    if sorted(set(expected_fields) - set(fields)):
        raise DataValidationError(
            f"{origin}: header has {list(table.columns)}, expected fields {expected_fields}"
        )
    table.columns = fields
    return table


def _convert_recbole(read: Reader, origin: str, expected: str) -> RawDataset:
    inter = _atomic(read("inter"), _UDATA, f"{origin}:{RECBOLE_PREFIX}.inter")
    # Rebuild u.data's lines from the fields as written, so the hash checks content and order.
    text = (inter["user_id"] + "\t" + inter["item_id"] + "\t" + inter["rating"] + "\t"
            + inter["timestamp"] + "\n")
    _check_sha256("".join(text.tolist()).encode(), expected,
                  f"{origin}:{RECBOLE_PREFIX}.inter")
    users = _atomic(read("user"), _UUSER, f"{origin}:{RECBOLE_PREFIX}.user")
    items = _atomic(read("item"), ["item_id", "movie_title", "release_year", "class"],
                    f"{origin}:{RECBOLE_PREFIX}.item")
    item_table = pd.DataFrame({
        "item_id": as_str_series(items["item_id"]),
        "title": items["movie_title"],
        # "unkonwn" (sic) for the one film without a date becomes NaN.
        "release_year": pd.to_numeric(items["release_year"], errors="coerce").astype(np.float64),
        "genres": items["class"].str.split(" ").str.join("|"),
    })
    notes = ["items from recbole's ml-100k.item: titles lack the '(year)' suffix and "
             "release_year is the year in the title, which differs from u.item's release-date "
             "year for about 190 of the 1682 films; ratings and users are identical to u.data "
             "and u.user"]
    return _raw(_interactions(inter, f"{origin}:{RECBOLE_PREFIX}.inter"), _users(users),
                item_table, notes)


"""What the benchmark scripts share; each imports it before the package.

    import _common  # first: puts this checkout's root on sys.path

The scripts run as `.venv/bin/python benchmarks/<script>.py` from the repository root, so
this directory is on `sys.path` and `import _common` finds this file; importing it puts the
repository root first on `sys.path`, so `twotower_utils` is this checkout's package even
where another is installed. It also holds the MovieLens-100K benchmark overrides
(`ML100K_OVERRIDES`), the `--set KEY VALUE` option (values read by the package's
`config.parse_overrides`, as the pipeline's `-p`) and the `--ml100k-dir` option (default:
`$TWOTOWER_ML100K_DIR`, else the data is fetched as `make run` does).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))

ML100K_ENV_VAR = "TWOTOWER_ML100K_DIR"
# The benchmark protocol on MovieLens-100K: Microsoft Recommenders' stratified 75/25 split.
ML100K_OVERRIDES: dict[str, Any] = {"data.dataset": "movielens-100k",
                                    "data.split.method": "benchmark"}


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """Add `--set KEY VALUE` (repeatable) to `parser`; read them with `set_overrides`.

    Takes the script's parser; returns nothing.
    """
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a config key (dotted); VALUE read as JSON, else YAML, "
                             "else the text (as the pipeline's -p)")


def set_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The `--set` pairs of `args` as a dict of config overrides (a later key wins).

    Takes the parser (a value that cannot be parsed ends the script through
    `parser.error`, naming the key) and the parsed arguments; returns the dict.
    """
    from twotower_utils.config import ConfigError, parse_overrides

    try:
        return parse_overrides(args.set)
    except ConfigError as error:
        parser.error(f"--set {error}")


def add_ml100k_option(parser: argparse.ArgumentParser) -> None:
    """Add `--ml100k-dir DIR` to `parser`; `use_ml100k_dir` applies it.

    Takes the script's parser; returns nothing.
    """
    parser.add_argument("--ml100k-dir", default=None,
                        help=f"GroupLens ml-100k directory (default: ${ML100K_ENV_VAR}, else "
                             "fetched as `make run` does)")


def use_ml100k_dir(args: argparse.Namespace) -> str | None:
    """Point the data stage at `--ml100k-dir` when given (by setting `TWOTOWER_ML100K_DIR`
    to its absolute path, which the MovieLens fetcher reads).

    Takes the parsed arguments; returns the directory now in effect (None when neither the
    option nor the environment variable names one).
    """
    if args.ml100k_dir:
        os.environ[ML100K_ENV_VAR] = str(Path(args.ml100k_dir).resolve())
    return os.environ.get(ML100K_ENV_VAR) or None

"""Data tools on the command line: `python -m twotower_utils.data inspect ...`.

    python -m twotower_utils.data inspect --interactions ratings.csv --items movies.csv \
        --write-config my.json
    make run ARGS="--config my.json"

`inspect` prints, per file, the columns with their inferred type, sizes, missing shares and
the problems the data stage would refuse, then a suggested `data` section checked by a dry
run; `--write-config` writes it (the project's config.json with that section replaced) for
the user to read and run. The work is in `twotower_utils.data.inspect_data`.
"""

from __future__ import annotations

import argparse
import sys

from twotower_utils.config import ConfigError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input)."""
    parser = argparse.ArgumentParser(prog="python -m twotower_utils.data",
                                     description="Tools for bringing your own data.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="describe raw CSV files and suggest a config for them",
        description="Print each file's columns with their inferred type, sizes, missing shares "
                    "and the problems the data stage would refuse; suggest a config (a "
                    "suggestion to check, never applied silently).")
    inspect.add_argument("--interactions", required=True, help="the interaction log (CSV)")
    inspect.add_argument("--users", help="user features (CSV); without it users have none")
    inspect.add_argument("--items", help="item features (CSV); without it items have none")
    inspect.add_argument("--write-config", metavar="FILE",
                         help="write the suggested config here (paths relative to it)")
    inspect.add_argument("--label", help="data.label to use instead of the inferred one: "
                         "column, all_positive or e.g. 'rating >= 4'")
    inspect.add_argument("--base", help="config to start from (default: ./config.json, else "
                         "the project's)")
    args = parser.parse_args(argv)
    from twotower_utils.data.inspect_data import run_inspect

    try:
        run_inspect(args.interactions, args.users, args.items, args.write_config, args.label,
                    args.base)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m twotower_utils.serving ...`: serving's command line (see `run.main`)."""

from twotower_utils.serving.run import main

if __name__ == "__main__":
    raise SystemExit(main())

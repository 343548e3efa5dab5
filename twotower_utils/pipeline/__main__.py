"""`python -m twotower_utils.pipeline ...`: the pipeline's command line (see `runner.main`)."""

from twotower_utils.pipeline.runner import main

if __name__ == "__main__":
    raise SystemExit(main())

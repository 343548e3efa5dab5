"""The pipeline: notebooks 01-05 run by papermill into `reports/<run_id>/`, and the sweeps.

It owns the runner and its command line (`runner`, `python -m twotower_utils.pipeline ...`
through `__main__`), executing and rendering notebooks (`nbtools`), run ids and each
notebook's run context (`runs`), grids of runs with their comparison report (`sweeps`),
Ctrl-C and SIGTERM handling (`interrupts`) and the headless-browser check of the HTML
reports (`browser`). It drives the other packages only through the notebooks: it may import
the top-level modules, `data` (fingerprints) and `reports` (summaries, index), and never
TensorFlow, so starting a run stays light.
"""

"""The data stage: raw datasets in, processed data out (`data/processed/<dataset>-<digest>/`).

It owns reading and validating the raw sources (`datasets` with `movielens`, `synthetic`,
`rawdata`, `csvread`, `interactions`), the data stage itself (`preprocessing`: vocabularies,
feature encoding in `features`, the time-ordered `splits`, sampled negatives in `sampling`,
the summaries of `datasummary`, the fingerprint of `fingerprint`), the reader of its output
(`processed`), and the bring-your-own-data inspector (`inspect_data`, the command
`python -m twotower_utils.data inspect ...` of `__main__`). It may import only the top-level
modules (`config`, `typed_config`, `io`, `logs`, `display`) and numpy/pandas/scipy/pyarrow:
never TensorFlow nor another subpackage, so every other package can build on it.
"""

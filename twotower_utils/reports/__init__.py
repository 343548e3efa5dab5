"""What the notebooks show and what the runs leave to read: analyses, figures and the index.

It owns the notebooks' analyses (`eda`, `analysis`, `embedding_analysis`, `model_view`),
the figures (`plots`), the redaction and checks that make a report shareable (`sharing`) and
the runs' summaries and the HTML index of every run and sweep (`index`: `reports/<run_id>/`
summaries, `reports/index.html`, from `templates/index.html.j2`). It may import the
top-level modules, `data` and `evaluation`; never TensorFlow (a built `Tower` is only read
through its Keras attributes), never `model`, `serving` or `pipeline`.
"""

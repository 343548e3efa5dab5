"""What the data stage used, in words: features with their encoded sizes, and the summary.

`report_features` logs each feature the towers get with its encoded size (and declared
features a `model.use_*_features` switch leaves out); `summarise` turns `stats.json` into the
lines the data stage prints (labels, input hygiene, split, features, columns not used,
notes). No TensorFlow here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from twotower_utils.logs import report

__all__ = ["encoded_size", "report_features", "summarise"]


def report_features(raw, model, feature_specs: dict[str, list[dict[str, Any]]]
                    ) -> dict[str, list[dict[str, Any]]]:
    """Log each feature the towers get (`feature_specs[side]`, fitted) with its encoded size,
    and each declared feature a `model.use_*_features` switch leaves out; returns
    `{side: [{name, type, size, ...}]}`."""
    sizes: dict[str, list[dict[str, Any]]] = {}
    for side in ("user", "item"):
        sizes[side] = [encoded_size(spec) for spec in feature_specs[side]]
        for entry in sizes[side]:
            report(None, f"{side} feature {entry['name']!r} ({entry['type']}): "
                         f"{entry['encoded']}", logging.INFO)
        declared = getattr(raw, f"{side}_features")
        if declared and not getattr(model, f"use_{side}_features"):
            report(raw.notes, f"{side} feature(s) {', '.join(declared)} declared but not used "
                              f"(model.use_{side}_features = false)", logging.INFO)
        if not sizes[side]:
            report(None, f"{side} tower: id and history only, no {side} features "
                         f"(data.{side}_features declares none)", logging.INFO)
    return sizes


def encoded_size(spec: dict[str, Any]) -> dict[str, Any]:
    """`{name, type, size, encoded}`: `size` is the embedding rows (vocabulary + the unknown
    slot) of a categorical or multi-hot feature, 1 for a numeric one."""
    kind = spec["type"]
    entry = {"name": spec["name"], "type": kind}
    if kind == "numeric":
        entry["size"] = 1
        entry["encoded"] = (f"1 standardised value (mean {spec['mean']:.4g}, std "
                            f"{spec['std']:.4g}; missing = the mean)")
    else:
        entry["size"] = len(spec["vocabulary"]) + 1
        entry["encoded"] = f"{len(spec['vocabulary']):,} values + 1 unknown slot"
        if kind == "multi_hot":
            entry["max_len"] = spec["max_len"]
            entry["encoded"] += f", up to {spec['max_len']} per row"
    return entry


def summarise(stats: dict[str, Any], directory: Path) -> str:
    """A short human-readable summary of `stats.json` (a dict), for the terminal; a string.

    Says how the labels were made, what input hygiene removed, the split, the features with
    their encoded sizes and the columns not used, then the notes.
    """
    hygiene = stats.get("input_hygiene", {})
    sampled = stats.get("negatives_sampled_from", 0)
    labels = stats.get("labels") or {}
    features = stats.get("features") or {}
    unused = {part: columns for part, columns in (stats.get("unused_columns") or {}).items()
              if columns}
    lines = [
        f"dataset {stats['dataset']}: {stats['num_users']:,} users, {stats['num_items']:,} items, "
        f"{stats['num_interactions']:,} positive interactions "
        f"(sparsity {stats['sparsity']:.4f})",
        *([f"labels: data.label = {labels['mode']!r}: {labels['positives']:,} positive and "
           f"{labels['explicit_negatives']:,} explicit negative row(s) of {labels['rows']:,}"]
          if labels else []),
        *[f"{side} features: " + (", ".join(f"{e['name']} ({e['type']}, {e['encoded']})"
                                            for e in entries) or "none (id and history only)")
          for side, entries in features.items()],
        *([("columns not used: " + "; ".join(f"{part}: {', '.join(columns)}"
                                              for part, columns in unused.items()))]
          if unused else []),
        f"input hygiene: {hygiene.get('duplicate_rows_removed', 0):,} duplicate row(s) of "
        f"{hygiene.get('duplicate_pairs', 0):,} pair(s) removed, "
        f"{hygiene.get('conflicting_pairs', 0):,} pair(s) with conflicting labels resolved",
        f"split '{stats['split_method']}': "
        + ", ".join(f"{name} {info['rows']:,}" for name, info in stats["splits"].items()),
        f"negatives for inspection: {stats['num_negatives']:,}"
        + (f" (a sample of {sampled:,})" if sampled > stats["num_negatives"] else ""),
        *[f"note: {note}" for note in stats["notes"]],
        f"timings (s): {stats['timings_seconds']}",
        f"written to {directory}",
    ]
    return "\n".join(lines)

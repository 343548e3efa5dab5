"""`FeatureEncoding`: a tower's feature preprocessing as Keras preprocessing layers.

Built from one side's feature specs (`twotower_utils.data.features.fit_feature_specs`), it
turns raw values (`raw_feature_values`: strings, or float64 for numeric features) into the
codes and standardised values the tower embeds:

- categorical: `StringLookup` over the vocabulary: the value at position p -> p + 1, anything
  else (unknown, missing, "") -> 0;
- numeric: `Normalization` with the fitted mean and variance, in float64; missing (NaN) -> 0;
- multi_hot: split on "|", each part stripped and looked up, unknown parts dropped, padded
  (or cut) with 0 to the fitted `max_len`.

It is the only encoder: the model encodes its training feature tables with it once, and every
exported tower runs it in-graph, so a SavedModel takes the same raw values as users.csv.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from twotower_utils.data.features import MULTI_HOT_SEPARATOR

__all__ = ["FeatureEncoding"]


class FeatureEncoding(tf.keras.layers.Layer):
    """Raw feature values of one side -> `{name: encoded tensor}` (see the module docstring).

    Args:
        specs: that side's feature specs (`feature_specs[side]`).

    Call with `{name: values}` (string `[B]`, or float64 `[B]` for a numeric feature; any
    array-like). Returns int32 `[B]` (categorical), float32 `[B]` (numeric) or int32
    `[B, max_len]` (multi_hot) per spec.
    """

    def __init__(self, specs: list[dict[str, Any]], **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.specs = [dict(spec) for spec in specs]
        self.lookups, self.normalizers = {}, {}
        for spec in self.specs:
            name = spec["name"]
            if spec["type"] == "numeric":
                self.normalizers[name] = tf.keras.layers.Normalization(
                    axis=None, mean=spec["mean"], variance=spec["std"] ** 2, dtype="float64",
                    name=f"{name}_normalization")
            elif spec["vocabulary"]:  # StringLookup refuses an empty vocabulary
                self.lookups[name] = tf.keras.layers.StringLookup(
                    vocabulary=list(spec["vocabulary"]), num_oov_indices=1, mask_token=None,
                    name=f"{name}_lookup")

    def call(self, raw: dict[str, Any]) -> dict[str, tf.Tensor]:
        """Encode `raw` (see the class docstring); a missing feature raises a KeyError."""
        missing = [spec["name"] for spec in self.specs if spec["name"] not in raw]
        if missing:
            raise KeyError(f"raw features missing: {', '.join(missing)} (this side encodes "
                           f"{', '.join(spec['name'] for spec in self.specs)})")
        return {spec["name"]: self._encode(spec, raw[spec["name"]]) for spec in self.specs}

    def _encode(self, spec: dict[str, Any], value: Any) -> tf.Tensor:
        name = spec["name"]
        if spec["type"] == "numeric":
            scaled = self.normalizers[name](tf.cast(value, tf.float64))
            return tf.cast(tf.where(tf.math.is_nan(scaled), tf.zeros_like(scaled), scaled),
                           tf.float32)
        value = tf.convert_to_tensor(value, tf.string)
        if spec["type"] == "categorical":
            if name not in self.lookups:
                return tf.zeros(tf.shape(value), tf.int32)
            return tf.cast(self.lookups[name](tf.strings.strip(value)), tf.int32)
        width = spec["max_len"]
        if name not in self.lookups:
            return tf.zeros([tf.size(value), width], tf.int32)
        parts = tf.strings.strip(tf.strings.split(value, MULTI_HOT_SEPARATOR))
        codes = tf.ragged.map_flat_values(self.lookups[name], parts)
        codes = tf.ragged.boolean_mask(codes, codes > 0)
        return tf.cast(codes.to_tensor(0, shape=[None, width]), tf.int32)

    def signature(self) -> dict[str, tf.TensorSpec]:
        """TensorSpecs of the raw inputs: string `[B]` for categorical and multi-hot
        (`|`-separated), float64 `[B]` for numeric."""
        return {spec["name"]: tf.TensorSpec(
            [None], tf.float64 if spec["type"] == "numeric" else tf.string, name=spec["name"])
            for spec in self.specs}

    def encode_tables(self, tables: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
        """Encode whole raw feature tables (`{name: [N] array}`) at once, eagerly: the
        model's per-index training tables."""
        if not self.specs:
            return {}
        return self({spec["name"]: tf.constant(tables[spec["name"]]) for spec in self.specs})

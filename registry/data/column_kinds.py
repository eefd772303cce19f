"""Which columns hold numbers: the ones an expression can read, that get numeric statistics, that a fill-null
fills with a number. Integers and floats are numeric; booleans, text, dates and anything else are not."""

from __future__ import annotations

import pandas as pd


def is_numeric(series: pd.Series) -> bool:
    return bool(pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_float_dtype(series.dtype))

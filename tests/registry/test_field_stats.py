"""registry/data/field_stats.py: every figure of a split's statistics checked against pandas (and the similarity
against scipy's Jensen-Shannon distance), computed here independently of the registry's code, and the seed's JSON
shape exactly."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped]

from registry.data.field_stats import (
    CategoricalFieldStats,
    FieldStatsError,
    NumericFieldStats,
    split_stats,
    stats_to_json,
)
from registry.data.splits import SplitKind, split_frame

NUMERIC_KEYS = ["field", "numTotal", "numNull", "mean", "min", "max", "stddev", "numZero", "numNegative"]
NUMERIC_KEYS += ["numPositive", "histo", "similarity"]
CATEGORICAL_KEYS = ["field", "numTotal", "numNull", "numEmpty", "unique", "histo", "similarity"]


def _table(rows: int = 400) -> pd.DataFrame:
    generator = np.random.default_rng(5)
    price = generator.normal(50, 30, rows).round(1)
    price[generator.random(rows) < 0.1] = np.nan
    price[:7] = 0.0
    price[7] = np.inf
    cities = np.array([f"city-{index}" for index in range(14)] + ["", "  "])
    city = generator.choice(cities, rows).astype(object)
    city[generator.random(rows) < 0.05] = None
    return pd.DataFrame(
        {
            "price": price,
            "rooms": generator.integers(-2, 9, rows),
            "city": city,
            "garden": generator.random(rows) < 0.3,
        }
    )


def _pair(train: object, test: object) -> dict[str, object]:
    return {"train": train, "test": test}


def _jsd_similarity(train_counts: list[int], test_counts: list[int]) -> float:
    return 1.0 - float(jensenshannon(train_counts, test_counts, base=2))


def _expected_numeric(name: str, train: pd.Series, test: pd.Series) -> dict[str, object]:
    def described(side: pd.Series) -> dict[str, object]:
        finite = side.replace([np.inf, -np.inf], np.nan).dropna()
        return {
            "numTotal": len(side),
            "numNull": int(side.isna().sum()),
            "mean": float(finite.mean()) if len(finite) else None,
            "min": float(finite.min()) if len(finite) else None,
            "max": float(finite.max()) if len(finite) else None,
            "stddev": float(finite.std()) if len(finite) > 1 else None,
            "numZero": int((side == 0).sum()),
            "numNegative": int((side < 0).sum()),
            "numPositive": int((side > 0).sum()),
        }

    train_figures, test_figures = described(train), described(test)
    expected: dict[str, object] = {"field": name}
    for key in train_figures:
        expected[key] = _pair(train_figures[key], test_figures[key])
    return expected


def _expected_numeric_bins(train: pd.Series, test: pd.Series) -> tuple[list[int], list[int], list[float]]:
    both = pd.concat([train, test]).replace([np.inf, -np.inf], np.nan).dropna()
    edges = np.linspace(both.min(), both.max(), 11)

    def counted(side: pd.Series) -> list[int]:
        values = side.replace([np.inf, -np.inf], np.nan).dropna()
        binned = pd.cut(values, edges, right=False).value_counts(sort=False).tolist()
        binned[-1] += int((values == both.max()).sum())  # the last bin is closed
        return [int(count) for count in binned]

    return counted(train), counted(test), edges.tolist()


def _label_edges(label: str) -> tuple[float, float]:
    match = re.fullmatch(r"\[([^,]+),([^,]+)[)\]]", label)
    assert match is not None, label
    return float(match.group(1)), float(match.group(2))


def test_numeric_fields_match_pandas() -> None:
    split = split_frame(_table(), SplitKind.RANDOM, 70, seed=3)
    stats = {entry.field: entry for entry in split_stats(split.train, split.test)}
    for name in ("price", "rooms"):
        train, test = split.train[name].astype(float), split.test[name].astype(float)
        entry = stats[name]
        assert isinstance(entry, NumericFieldStats)
        document = entry.to_json()
        assert list(document) == NUMERIC_KEYS
        expected = _expected_numeric(name, train, test)
        for key, value in expected.items():
            if key == "field":
                assert document[key] == value
                continue
            got = document[key]
            assert isinstance(got, dict)
            assert isinstance(value, dict)
            for side in ("train", "test"):
                assert got[side] == pytest.approx(value[side], rel=1e-12), (name, key, side)
        train_bins, test_bins, edges = _expected_numeric_bins(train, test)
        histo = document["histo"]
        assert isinstance(histo, list)
        assert [item["count"] for item in histo] == [_pair(a, b) for a, b in zip(train_bins, test_bins, strict=True)]
        for index, item in enumerate(histo):
            low, high = _label_edges(item["bin"])
            assert low == pytest.approx(edges[index], rel=1e-5, abs=1e-9)
            assert high == pytest.approx(edges[index + 1], rel=1e-5, abs=1e-9)
        assert histo[-1]["bin"].endswith("]")
        assert all(item["bin"].endswith(")") for item in histo[:-1])
        missing_train = int(train.isna().sum() + np.isinf(train).sum())
        missing_test = int(test.isna().sum() + np.isinf(test).sum())
        assert document["similarity"] == pytest.approx(
            _jsd_similarity([*train_bins, missing_train], [*test_bins, missing_test]), abs=1e-12
        )


def test_the_price_column_holds_what_the_test_means_to_check() -> None:
    """The table exercises zeros, nulls, an infinity, negatives (rooms) and more than ten categories (city)."""
    table = _table()
    assert (table["price"] == 0).sum() >= 7
    assert np.isinf(table["price"]).sum() == 1
    assert table["price"].isna().sum() > 0
    assert (table["rooms"] < 0).sum() > 0
    assert table["city"].nunique() > 10


def test_categorical_fields_match_pandas() -> None:
    split = split_frame(_table(), SplitKind.RANDOM, 70, seed=3)
    stats = {entry.field: entry for entry in split_stats(split.train, split.test)}
    for name in ("city", "garden"):
        entry = stats[name]
        assert isinstance(entry, CategoricalFieldStats)
        document = entry.to_json()
        assert list(document) == CATEGORICAL_KEYS
        train, test = split.train[name], split.test[name]
        train_text, test_text = train.dropna().astype(str), test.dropna().astype(str)
        assert document["numTotal"] == _pair(len(train), len(test))
        assert document["numNull"] == _pair(int(train.isna().sum()), int(test.isna().sum()))
        assert document["numEmpty"] == _pair(
            int((train_text.str.strip() == "").sum()), int((test_text.str.strip() == "").sum())
        )
        assert document["unique"] == _pair(train_text.nunique(), test_text.nunique())
        together = pd.concat([train_text, test_text]).value_counts()
        ranked = sorted(together.items(), key=lambda item: (-item[1], item[0]))
        top = [value for value, _ in ranked[:10]]
        expected_histo = [
            {"bin": value, "count": _pair(int((train_text == value).sum()), int((test_text == value).sum()))}
            for value in top
        ]
        if len(ranked) > 10:
            rest_train, rest_test = int((~train_text.isin(top)).sum()), int((~test_text.isin(top)).sum())
            expected_histo.append({"bin": "other", "count": _pair(rest_train, rest_test)})
        assert document["histo"] == expected_histo
        train_counts = [item["count"]["train"] for item in expected_histo] + [int(train.isna().sum())]
        test_counts = [item["count"]["test"] for item in expected_histo] + [int(test.isna().sum())]
        assert document["similarity"] == pytest.approx(_jsd_similarity(train_counts, test_counts), abs=1e-12)
    assert len(stats["city"].histo) == 11  # ten categories and "other"


def test_the_whole_document_is_strict_json_in_the_seeds_shape_with_the_outcome_first() -> None:
    split = split_frame(_table(), SplitKind.FIRST, 80)
    document = stats_to_json(split_stats(split.train, split.test, outcome="city"))
    text = json.dumps(document, allow_nan=False)  # no NaN or Infinity anywhere
    assert [entry["field"] for entry in json.loads(text)] == ["city", "price", "rooms", "garden"]
    for entry in document:
        for key, value in entry.items():
            if key not in ("field", "histo", "similarity"):
                assert isinstance(value, dict)
                assert set(value) == {"train", "test"}, key
        histo = entry["histo"]
        assert isinstance(histo, list)
        assert all(set(item) == {"bin", "count"} and set(item["count"]) == {"train", "test"} for item in histo)
        similarity = entry["similarity"]
        assert isinstance(similarity, float)
        assert 0.0 <= similarity <= 1.0


def test_identical_sides_are_fully_similar_and_disjoint_ones_not_at_all() -> None:
    same = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "c": ["a", "b", "a", "b"]})
    stats = split_stats(same, same.copy())
    assert [entry.similarity for entry in stats] == [pytest.approx(1.0), pytest.approx(1.0)]
    low = pd.DataFrame({"x": [0.0, 0.1], "c": ["a", "a"]})
    high = pd.DataFrame({"x": [9.9, 10.0], "c": ["b", "b"]})
    assert [entry.similarity for entry in split_stats(low, high)] == [pytest.approx(0.0), pytest.approx(0.0)]


def test_missing_values_on_one_side_lower_the_similarity() -> None:
    train = pd.DataFrame({"x": [1.0, 2.0, 1.0, 2.0]})
    test = pd.DataFrame({"x": [1.0, 2.0, np.nan, np.nan]})
    (entry,) = split_stats(train, test)
    assert isinstance(entry, NumericFieldStats)
    assert entry.similarity == pytest.approx(_jsd_similarity([2, 2, 0], [1, 1, 2]))
    assert entry.similarity is not None
    assert entry.similarity < 1.0


def test_edge_shapes_constant_all_null_empty_side_and_a_category_named_other() -> None:
    train = pd.DataFrame(
        {"k": [5.0, 5.0, 5.0], "none": [np.nan] * 3, "cat": ["other", "other", "other"], "n": [1, 2, 3]}
    )
    test = train.iloc[0:0]
    stats = {entry.field: entry.to_json() for entry in split_stats(train, test)}
    assert stats["k"]["histo"] == [{"bin": "[5,5]", "count": _pair(3, 0)}]
    assert stats["k"]["stddev"] == _pair(0.0, None)
    assert stats["none"]["histo"] == []
    assert stats["none"]["mean"] == _pair(None, None)
    assert stats["none"]["numNull"] == _pair(3, 0)
    assert all(entry["similarity"] is None for entry in stats.values())  # the test side has no rows
    many = pd.DataFrame({"cat": ["other"] * 20 + [f"v{index}" for index in range(12)]})
    histo = split_stats(many, many)[0].to_json()["histo"]
    assert isinstance(histo, list)
    assert histo[0]["bin"] == "other"
    assert histo[-1] == {"bin": "(other)", "count": _pair(3, 3)}  # v9, v10 ... beyond the top ten: 12 - 9


def test_huge_values_give_no_infinite_figures() -> None:
    frame = pd.DataFrame({"x": [1e308, 1.5e308, -1e308, 1.7e308]})
    (entry,) = split_stats(frame, frame)
    document = entry.to_json()
    json.dumps(document, allow_nan=False)
    assert document["mean"] == _pair(None, None)  # the sum overflows: no mean rather than a false one
    assert document["max"] == _pair(1.7e308, 1.7e308)
    histo = document["histo"]
    assert isinstance(histo, list)
    assert sum(item["count"]["train"] for item in histo) == 4
    assert len({item["bin"] for item in histo}) == len(histo)


def test_an_outcome_that_is_not_a_column_and_sides_that_differ_are_refused() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    with pytest.raises(FieldStatsError, match="the outcome 'price' is not a column"):
        split_stats(frame, frame, outcome="price")
    with pytest.raises(FieldStatsError, match="different columns"):
        split_stats(frame, frame.rename(columns={"x": "y"}))


def test_stddev_is_the_sample_one() -> None:
    frame = pd.DataFrame({"x": [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]})
    (entry,) = split_stats(frame, frame)
    assert isinstance(entry, NumericFieldStats)
    assert entry.stddev.train == pytest.approx(math.sqrt(32 / 7))

"""Arbitrary bytes as a dataset of each format (Hypothesis): a Dataset or a DatasetError, never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from registry.data.datasets import Dataset, DatasetError, DatasetFormat, DatasetLimits, read_dataset, resolve_source

LIMITS = DatasetLimits(max_rows=50, max_columns=20, max_xml_depth=8)

fragments = st.sampled_from(
    [b"a,b\n", b"1,2\n", b'"x', b"\n", b",", b"\x00", b"\xff\xfe", b"PAR1", b"<annotation>", b"</annotation>",
     b"<object><name>", b"</name></object>", b"<!DOCTYPE a>", b"&x;", b"img.jpg cat\n", b"# c\n", b"\t", b"\r"]
)  # fmt: skip
contents = st.one_of(st.binary(max_size=300), st.lists(fragments, max_size=30).map(b"".join))


@settings(max_examples=300, deadline=None)
@given(contents, st.sampled_from(["d.csv", "d.parquet", "d.txt", "d.xml", "d"]))
def test_any_bytes_in_any_format(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / name).write_bytes(data)
        try:
            dataset = read_dataset(resolve_source(name, datasets_root=root, s3=None), LIMITS)
        except DatasetError as error:
            assert name in str(error)
            return
    assert isinstance(dataset, Dataset)
    assert dataset.size_bytes == len(data)
    assert 1 <= dataset.sample_count <= LIMITS.max_rows
    assert (dataset.frame is None) == (dataset.format in (DatasetFormat.TXT, DatasetFormat.XML))

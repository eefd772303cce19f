"""registry/data/datasets.py and sources.py: each format read or counted, malformed and over-limit files refused
with a DatasetError naming the cause, srcpaths kept inside the datasets root, and S3 against a real SeaweedFS."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelplane.s3 import S3Settings
from registry.data.datasets import (
    DatasetError,
    DatasetFormat,
    DatasetLimits,
    DatasetUnavailableError,
    LocalDataset,
    S3Dataset,
    read_dataset,
    resolve_source,
)
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, S3Server

pytest_plugins = ["tests.support.real_components"]

WRONG_SECRET = "wrong-secret-key-xyz"  # noqa: S105 -- a key the test server refuses
CSV = b"age,city,price\n31,Paris,10.5\n45,Lyon,\n27,,7.25\n"
VOC = b"""<?xml version="1.0"?>
<annotation>
  <filename>000001.jpg</filename>
  <size><width>353</width><height>500</height><depth>3</depth></size>
  <object><name>dog</name><bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox></object>
  <object><name>person</name><part><name>head</name></part></object>
  <object><name>dog</name></object>
</annotation>
"""


def _write(root: Path, name: str, data: bytes) -> LocalDataset:
    (root / name).write_bytes(data)
    source = resolve_source(name, datasets_root=root, s3=None)
    assert isinstance(source, LocalDataset)
    return source


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_a_csv_file_becomes_a_table_with_its_hash_and_size(tmp_path: Path) -> None:
    dataset = read_dataset(_write(tmp_path, "houses.csv", CSV))
    assert dataset.format is DatasetFormat.CSV
    assert dataset.sample_count == 3
    assert dataset.sha256 == hashlib.sha256(CSV).hexdigest()
    assert dataset.size_bytes == len(CSV)
    assert dataset.frame is not None
    assert list(dataset.frame.columns) == ["age", "city", "price"]
    assert dataset.frame["age"].tolist() == [31, 45, 27]
    assert dataset.frame["price"].isna().tolist() == [False, True, False]


def test_a_parquet_file_becomes_a_table(tmp_path: Path) -> None:
    data = _parquet(pa.table({"x": [1.5, 2.5], "label": ["a", "b"]}))
    dataset = read_dataset(_write(tmp_path, "data.parquet", data))
    assert dataset.format is DatasetFormat.PARQUET
    assert dataset.sample_count == 2
    assert dataset.sha256 == hashlib.sha256(data).hexdigest()
    assert dataset.frame is not None
    assert dataset.frame["label"].tolist() == ["a", "b"]


def test_the_format_comes_from_the_content_when_the_name_has_no_known_extension(tmp_path: Path) -> None:
    assert read_dataset(_write(tmp_path, "blob", _parquet(pa.table({"x": [1]})))).format is DatasetFormat.PARQUET
    assert read_dataset(_write(tmp_path, "notes", VOC)).format is DatasetFormat.XML
    assert read_dataset(_write(tmp_path, "rows", CSV)).format is DatasetFormat.CSV
    asked = read_dataset(_write(tmp_path, "list.dat", b"a.jpg cat\n"), dataset_format=DatasetFormat.TXT)
    assert asked.format is DatasetFormat.TXT


def test_an_image_list_is_counted_with_its_labels_not_read_as_a_table(tmp_path: Path) -> None:
    data = b"# images\ntrain/cat 1.jpg cat\ntrain/dog.jpg dog\n\n   train/cat2.jpg   cat  \n"
    dataset = read_dataset(_write(tmp_path, "train.txt", data))
    assert dataset.format is DatasetFormat.TXT
    assert dataset.frame is None
    assert dataset.sample_count == 3
    assert dataset.label_counts == {"cat": 2, "dog": 1}
    assert dataset.sha256 == hashlib.sha256(data).hexdigest()


def test_detection_annotations_are_counted_per_image_with_objects_per_class(tmp_path: Path) -> None:
    dataset = read_dataset(_write(tmp_path, "000001.xml", VOC))
    assert dataset.format is DatasetFormat.XML
    assert dataset.frame is None
    assert dataset.sample_count == 1
    assert dataset.label_counts == {"dog": 2, "person": 1}  # a part's <name> is not an object's class
    several = b"<dataset>" + VOC.split(b"?>", 1)[1] * 3 + b"</dataset>"
    assert read_dataset(_write(tmp_path, "all.xml", several)).sample_count == 3


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.csv", b"", "is empty"),
        ("header-only.csv", b"a,b\n", "has no rows"),
        ("ragged.csv", b"a,b\n1,2\n3,4,5\n", "not a readable CSV file: Error tokenizing data"),
        ("latin1.csv", "a,b\n1,é\n".encode("latin-1"), "not UTF-8"),
        ("duplicate.csv", b"a,b,a\n1,2,3\n", "duplicate column names: ['a']"),
        ("unnamed.csv", b"a,,c\n1,2,3\n", "column 2 has no name"),
        ("fake.parquet", b"a,b\n1,2\n", "not a Parquet file"),
        ("cut.parquet", b"PAR1" + b"\x00" * 40, "not a readable Parquet file"),
        ("nested.parquet", None, "column 'tags' is of type list<"),
        ("pathless.txt", b"img.jpg cat\nlonely\n", "line 2: expected 'path label'"),
        ("nothing.txt", b"# only a comment\n\n", "lists no samples"),
        ("broken.xml", b"<annotation><object></annotation>", "not well-formed XML: mismatched tag at line 1"),
        ("plain.xml", b"<images><image/></images>", "holds no <annotation> element"),
        ("nameless.xml", b"<annotation><object><name> </name></object></annotation>", "empty <name>"),
        (
            "laughs.xml",
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;">]>'
            b"<annotation>&l2;</annotation>",
            "declares a DTD",
        ),
        (
            "external.xml",
            b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>&x;</annotation>',
            "declares a DTD",
        ),
        ("deep.xml", b"<annotation>" + b"<a>" * 100 + b"</a>" * 100 + b"</annotation>", "nests elements deeper than"),
    ],
)
def test_malformed_files_are_refused_naming_the_cause(
    tmp_path: Path, name: str, data: bytes | None, reason: str
) -> None:
    if data is None:
        data = _parquet(pa.table({"tags": pa.array([["a", "b"]], type=pa.list_(pa.string()))}))
    with pytest.raises(DatasetError) as caught:
        read_dataset(_write(tmp_path, name, data))
    assert reason in str(caught.value)
    assert name in str(caught.value)


@pytest.mark.parametrize(
    ("name", "data", "limits", "reason"),
    [
        ("big.csv", CSV, DatasetLimits(max_bytes=len(CSV) - 1), f"is {len(CSV)} bytes; the limit is {len(CSV) - 1}"),
        ("long.csv", CSV, DatasetLimits(max_rows=2), "more than 2 rows"),
        ("wide.csv", CSV, DatasetLimits(max_columns=2), "has 3 columns; the limit is 2"),
        ("long.parquet", None, DatasetLimits(max_rows=2), "more than 2 rows"),
        ("wide.parquet", None, DatasetLimits(max_columns=2), "has 3 columns; the limit is 2"),
        ("swollen.parquet", None, DatasetLimits(max_decoded_bytes=16), "the limit is 16"),
        ("long.txt", b"a.jpg x\nb.jpg y\nc.jpg x\n", DatasetLimits(max_rows=2), "more than 2 samples"),
        ("long.xml", b"<all>" + b"<annotation/>" * 3 + b"</all>", DatasetLimits(max_rows=2), "more than 2 annotations"),
    ],
)
def test_files_over_a_limit_are_refused_naming_it(
    tmp_path: Path, name: str, data: bytes | None, limits: DatasetLimits, reason: str
) -> None:
    if data is None:
        data = _parquet(pa.table({"a": list(range(3)), "b": ["x" * 10] * 3, "c": [0.5] * 3}))
    with pytest.raises(DatasetError, match=r"the limit|more than") as caught:
        read_dataset(_write(tmp_path, name, data), limits)
    assert reason in str(caught.value)


def test_exactly_the_row_limit_is_accepted(tmp_path: Path) -> None:
    dataset = read_dataset(_write(tmp_path, "three.csv", CSV), DatasetLimits(max_rows=3))
    assert dataset.sample_count == 3


def test_a_file_that_is_missing_or_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(resolve_source("gone.csv", datasets_root=tmp_path, s3=None))
    with pytest.raises(DatasetError, match="is a directory"):
        read_dataset(resolve_source("folder", datasets_root=tmp_path, s3=None))


@pytest.mark.parametrize(
    ("srcpath", "reason"),
    [
        ("../outside.csv", "points outside the datasets root"),
        ("file:///etc/passwd", "points outside the datasets root"),
        ("escape/x.csv", "points outside the datasets root"),  # a symlink inside the root to a folder outside it
        (".", "points outside the datasets root"),
        ("", "srcpath is empty"),
        ("a\x00b.csv", "control characters"),
        ("x" * 2000, "longer than 1024"),
        ("file://host/data.csv", "must name a local path"),
        ("http://example.com/data.csv", "scheme 'http' is not supported"),
        ("s3://bucket", "must name one object"),
        ("s3://bucket/folder/", "must name one object"),
        ("s3://key:secret@bucket/data.csv", "must not hold credentials"),
        ("s3://bucket/data.csv?versionId=1", "take no query"),
        ("s3://bucket/data.csv", "no S3 store configured"),
    ],
)
def test_srcpaths_are_refused_when_malformed_or_outside_the_root(tmp_path: Path, srcpath: str, reason: str) -> None:
    root = tmp_path / "datasets"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.csv").write_bytes(CSV)
    (tmp_path / "outside.csv").write_bytes(CSV)
    os.symlink(outside, root / "escape")
    with pytest.raises(DatasetError) as caught:
        resolve_source(srcpath, datasets_root=root, s3=None)
    assert reason in str(caught.value)
    assert "secret" not in str(caught.value)


def test_local_paths_need_a_datasets_root_and_file_urls_resolve_inside_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no datasets root"):
        resolve_source("data.csv", datasets_root=None, s3=None)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.csv").write_bytes(CSV)
    source = resolve_source(f"file://{tmp_path}/sub/d.csv", datasets_root=tmp_path, s3=None)
    assert source == LocalDataset((tmp_path / "sub" / "d.csv").resolve(), f"file://{tmp_path}/sub/d.csv")
    # A leading / is the root's (seed 002 writes "/path/to/files"): never the host's.
    rooted = resolve_source("/sub/d.csv", datasets_root=tmp_path, s3=None)
    assert rooted == LocalDataset((tmp_path / "sub" / "d.csv").resolve(), "/sub/d.csv")
    host_path = resolve_source("/etc/passwd", datasets_root=tmp_path, s3=None)
    assert host_path == LocalDataset((tmp_path / "etc" / "passwd").resolve(), "/etc/passwd")
    assert read_dataset(source).sample_count == 3


def _s3_settings(s3_server: S3Server, secret_key: str = SECRET_KEY) -> S3Settings:
    endpoint = s3_server.endpoint.removeprefix("http://")
    return S3Settings(endpoint, False, "us-east-1", "test", ACCESS_KEY, secret_key)


def test_an_s3_dataset_is_read_through_the_store(s3_server: S3Server) -> None:
    data = _parquet(pa.table({"x": [1.0, 2.0, 3.0]}))
    bucket = s3_server.new_bucket({"sets/x.parquet": data, "sets/list.txt": b"a.jpg cat\n"})
    settings = _s3_settings(s3_server)
    source = resolve_source(f"s3://{bucket}/sets/x.parquet", datasets_root=None, s3=settings)
    assert source == S3Dataset(bucket, "sets/x.parquet", settings)
    dataset = read_dataset(source)
    assert dataset.format is DatasetFormat.PARQUET
    assert dataset.sample_count == 3
    assert dataset.sha256 == hashlib.sha256(data).hexdigest()
    assert dataset.origin == f"s3://{bucket}/sets/x.parquet"
    listed = read_dataset(resolve_source(f"s3://{bucket}/sets/list.txt", datasets_root=None, s3=settings))
    assert listed.label_counts == {"cat": 1}


def test_s3_datasets_that_are_missing_too_large_or_refused_are_dataset_errors(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket({"d.csv": CSV})
    settings = _s3_settings(s3_server)
    with pytest.raises(DatasetError, match="does not exist") as missing:
        read_dataset(S3Dataset(bucket, "other.csv", settings))
    assert not isinstance(missing.value, DatasetUnavailableError)
    with pytest.raises(DatasetError, match=f"is {len(CSV)} bytes; the limit is 10"):
        read_dataset(S3Dataset(bucket, "d.csv", settings), DatasetLimits(max_bytes=10))
    with pytest.raises(DatasetError, match="was refused") as refused:
        read_dataset(S3Dataset(bucket, "d.csv", _s3_settings(s3_server, WRONG_SECRET)))
    assert WRONG_SECRET not in str(refused.value)
    assert not isinstance(refused.value, DatasetUnavailableError)


def test_an_s3_store_that_is_down_is_unavailable_not_the_datasets_fault(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket({"d.csv": CSV})
    with s3_server.stopped(), pytest.raises(DatasetUnavailableError, match="cannot connect"):
        read_dataset(S3Dataset(bucket, "d.csv", _s3_settings(s3_server)), DatasetLimits(timeout_seconds=10))

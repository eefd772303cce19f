"""Datasets the registry counts but does not train on (seed 001): image-classification lists and detection
annotations. What it learns of them is how many samples they hold and how often each label occurs.

- TXT, an image-classification list: UTF-8, one sample per line, ``path label`` (the label is the last
  whitespace-separated word, so a path may hold spaces); blank lines and lines starting with ``#`` are skipped.
- XML, detection annotations in the Pascal VOC style: one ``<annotation>`` element per image (the root, or each
  child of the root when one file gathers several), its ``<object>`` elements each with a ``<name>`` (the class).
  Label counts are per object. DTDs are refused outright, so no entity can expand (the "billion laughs") or
  reach outside the file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from xml.parsers import expat

from registry.data.dataset_errors import DatasetError
from registry.data.dataset_limits import DatasetLimits

MAX_LABELS = 10_000  # distinct labels: more is no classification list
MAX_LABEL_CHARS = 256


@dataclass(frozen=True)
class SampleCount:
    samples: int
    label_counts: dict[str, int]


def count_image_list(data: bytes, shown: str, limits: DatasetLimits) -> SampleCount:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset {shown} is not UTF-8 text (byte {exc.start})") from None
    labels: Counter[str] = Counter()
    samples = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.rsplit(maxsplit=1)
        if len(words) != 2:
            raise DatasetError(f"dataset {shown} line {number}: expected 'path label', got {_shorten(line)!r}")
        label = words[1]
        samples += 1
        if samples > limits.max_rows:
            raise DatasetError(f"dataset {shown} has more than {limits.max_rows} samples (the limit)")
        _count_label(labels, label, shown, f"line {number}")
    if samples == 0:
        raise DatasetError(f"dataset {shown} lists no samples ('path label' lines)")
    return SampleCount(samples, dict(labels))


def count_detection_annotations(data: bytes, shown: str, limits: DatasetLimits) -> SampleCount:
    counter = _AnnotationCounter(shown, limits)
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = counter.refuse_doctype
    parser.EntityDeclHandler = counter.refuse_entity
    parser.StartElementHandler = counter.start
    parser.EndElementHandler = counter.end
    parser.CharacterDataHandler = counter.text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        reason = expat.errors.messages.get(exc.code, "malformed") if exc.code is not None else "malformed"
        raise DatasetError(
            f"dataset {shown} is not well-formed XML: {reason} at line {exc.lineno}, column {exc.offset}"
        ) from None
    if counter.samples == 0:
        raise DatasetError(f"dataset {shown} holds no <annotation> element (Pascal VOC detection annotations)")
    return SampleCount(counter.samples, dict(counter.labels))


@dataclass
class _AnnotationCounter:
    shown: str
    limits: DatasetLimits
    samples: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    _path: list[str] = field(default_factory=list)
    _name_text: list[str] | None = None

    def refuse_doctype(self, *_: object) -> None:
        raise DatasetError(f"dataset {self.shown} declares a DTD (<!DOCTYPE>); DTDs are refused")

    def refuse_entity(self, *_: object) -> None:
        raise DatasetError(f"dataset {self.shown} declares an entity; entities are refused")

    def start(self, name: str, _attributes: dict[str, str]) -> None:
        self._path.append(name)
        if len(self._path) > self.limits.max_xml_depth:
            raise DatasetError(f"dataset {self.shown} nests elements deeper than {self.limits.max_xml_depth}")
        if name == "annotation" and len(self._path) <= 2:
            self.samples += 1
            if self.samples > self.limits.max_rows:
                raise DatasetError(f"dataset {self.shown} has more than {self.limits.max_rows} annotations")
        if name == "name" and len(self._path) >= 2 and self._path[-2] == "object":
            self._name_text = []

    def text(self, data: str) -> None:
        if self._name_text is not None:
            self._name_text.append(data)
            if sum(map(len, self._name_text)) > MAX_LABEL_CHARS:
                raise DatasetError(f"dataset {self.shown}: an object's <name> is longer than {MAX_LABEL_CHARS}")

    def end(self, name: str) -> None:
        if name == "name" and self._name_text is not None:
            label = "".join(self._name_text).strip()
            self._name_text = None
            if not label:
                raise DatasetError(f"dataset {self.shown}: an <object> has an empty <name> (annotation {self.samples})")
            _count_label(self.labels, label, self.shown, f"annotation {self.samples}")
        self._path.pop()


def _count_label(labels: Counter[str], label: str, shown: str, where: str) -> None:
    if len(label) > MAX_LABEL_CHARS:
        raise DatasetError(f"dataset {shown} {where}: the label is longer than {MAX_LABEL_CHARS} characters")
    if label not in labels and len(labels) >= MAX_LABELS:
        raise DatasetError(f"dataset {shown} has more than {MAX_LABELS} distinct labels (the limit)")
    labels[label] += 1


def _shorten(text: str) -> str:
    return text if len(text) <= 80 else f"{text[:77]}..."

"""parse_model_manifest: Seldon's Model resource (YAML) to the Scheduler API's Model message.

Every field maps; every bad manifest is a ManifestError that names the field; and (hypothesis) no
input, however odd, raises anything else.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.cli.manifests import MAX_MANIFEST_BYTES, ManifestError, load_yaml_documents, parse_model_manifest

FULL = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: iris
  namespace: models
  generation: 3
spec:
  storageUri: s3://models/iris
  artifactVersion: 2
  requirements: [sklearn, mlserver]
  memory: 100Mi
  replicas: 2
  minReplicas: 1
  maxReplicas: 4
  server: mlserver
  secretName: s3-credentials
  parameters:
    - {name: sha256, value: "abc123"}
    - {name: task, value: 7}
"""

MINIMAL = """\
apiVersion: mlops.seldon.io/v1
kind: Model
metadata: {name: tiny}
spec: {storageUri: /models/tiny}
"""


def manifest(**spec: Any) -> str:
    """A valid manifest with ``spec`` merged over a minimal one (None removes a field)."""
    document: dict[str, Any] = {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m"},
        "spec": {"storageUri": "/models/m"},
    }
    for key, value in spec.items():
        if value is None:
            document["spec"].pop(key, None)
        else:
            document["spec"][key] = value
    return yaml.safe_dump(document)


def test_a_full_manifest_maps_every_field() -> None:
    model = parse_model_manifest(FULL)
    assert model.meta.name == "iris"
    assert model.meta.kind == "Model"
    assert model.meta.kubernetesMeta.namespace == "models"
    assert model.meta.kubernetesMeta.generation == 3
    spec = model.modelSpec
    assert spec.uri == "s3://models/iris"
    assert spec.HasField("artifactVersion")
    assert spec.artifactVersion == 2
    assert list(spec.requirements) == ["sklearn", "mlserver"]
    assert spec.memoryBytes == 104_857_600
    assert spec.server == "mlserver"
    assert spec.storageConfig.storageSecretName == "s3-credentials"
    assert [(p.name, p.value) for p in spec.parameters] == [("sha256", "abc123"), ("task", "7")]
    deployment = model.deploymentSpec
    assert (deployment.replicas, deployment.minReplicas, deployment.maxReplicas) == (2, 1, 4)


def test_defaults_of_a_minimal_manifest() -> None:
    model = parse_model_manifest(MINIMAL)
    assert model.meta.name == "tiny"
    assert not model.meta.HasField("kubernetesMeta")
    assert model.modelSpec.uri == "/models/tiny"
    assert not model.modelSpec.HasField("artifactVersion")
    assert list(model.modelSpec.requirements) == []
    assert model.modelSpec.memoryBytes == 0
    assert model.modelSpec.server == ""
    assert not model.modelSpec.HasField("storageConfig")
    assert list(model.modelSpec.parameters) == []
    assert (model.deploymentSpec.replicas, model.deploymentSpec.minReplicas, model.deploymentSpec.maxReplicas) == (
        1,
        0,
        0,
    )


def test_null_fields_are_the_same_as_missing_ones() -> None:
    text = MINIMAL.replace(
        "spec: {storageUri: /models/tiny}",
        "spec: {storageUri: /models/tiny, replicas: null, memory: null, requirements: null, parameters: null}",
    )
    model = parse_model_manifest(text)
    assert model.deploymentSpec.replicas == 1
    assert model.modelSpec.memoryBytes == 0
    assert list(model.modelSpec.requirements) == []
    assert list(model.modelSpec.parameters) == []


def test_zero_replicas_is_kept() -> None:
    assert parse_model_manifest(manifest(replicas=0)).deploymentSpec.replicas == 0


def test_a_namespace_alone_makes_kubernetes_meta() -> None:
    text = MINIMAL.replace("metadata: {name: tiny}", "metadata: {name: tiny, namespace: prod}")
    model = parse_model_manifest(text)
    assert model.meta.kubernetesMeta.namespace == "prod"
    assert model.meta.kubernetesMeta.generation == 0


BAD_MANIFESTS = [
    ("api-version-v2", MINIMAL.replace("mlops.seldon.io/v1", "mlops.seldon.io/v2"), "apiVersion"),
    ("api-version-missing", MINIMAL.replace("apiVersion: mlops.seldon.io/v1\n", ""), "apiVersion"),
    ("kind-pipeline", MINIMAL.replace("kind: Model", "kind: Pipeline"), "kind must be Model, not 'Pipeline'"),
    ("kind-missing", MINIMAL.replace("kind: Model\n", ""), "kind must be Model, not None"),
    ("name-missing", MINIMAL.replace("metadata: {name: tiny}", "metadata: {namespace: x}"), "metadata.name is missing"),
    ("metadata-missing", MINIMAL.replace("metadata: {name: tiny}\n", ""), "metadata is missing"),
    (
        "metadata-not-mapping",
        MINIMAL.replace("metadata: {name: tiny}", "metadata: tiny"),
        "metadata must be a mapping, not str",
    ),
    (
        "name-not-str",
        MINIMAL.replace("metadata: {name: tiny}", "metadata: {name: 5}"),
        "metadata.name must be a string, not int",
    ),
    (
        "generation-not-int",
        MINIMAL.replace("metadata: {name: tiny}", "metadata: {name: tiny, generation: two}"),
        "metadata.generation must be a whole number, not str",
    ),
    (
        "storage-uri-missing",
        MINIMAL.replace("spec: {storageUri: /models/tiny}", "spec: {}"),
        "spec.storageUri is missing",
    ),
    (
        "spec-not-mapping",
        MINIMAL.replace("spec: {storageUri: /models/tiny}", "spec: [a]"),
        "spec must be a mapping, not list",
    ),
    ("storage-uri-removed", manifest(storageUri=None), "spec.storageUri is missing"),
    ("storage-uri-not-str", manifest(storageUri=5), "spec.storageUri must be a string, not int"),
    ("unknown-field", manifest(storageURI="/x"), "spec has unknown field(s) storageURI"),
    ("memory-lots", manifest(memory="lots"), "spec.memory: 'lots' is not a size"),
    ("memory-negative", manifest(memory="-1Mi"), "spec.memory"),
    ("memory-too-big", manifest(memory="2PiB"), "spec.memory"),
    ("replicas-negative", manifest(replicas=-1), "spec.replicas must be between 0 and 1000, not -1"),
    ("replicas-5000", manifest(replicas=5000), "spec.replicas must be between 0 and 1000, not 5000"),
    ("replicas-text", manifest(replicas="two"), "spec.replicas must be a whole number, not str"),
    ("replicas-bool", manifest(replicas=True), "spec.replicas must be a whole number, not bool"),
    ("replicas-float", manifest(replicas=1.5), "spec.replicas must be a whole number, not float"),
    ("min-replicas-negative", manifest(minReplicas=-3), "spec.minReplicas must be between 0 and 1000"),
    ("max-replicas-1001", manifest(maxReplicas=1001), "spec.maxReplicas must be between 0 and 1000"),
    ("artifact-version-negative", manifest(artifactVersion=-1), "spec.artifactVersion must be between 0 and 1000"),
    ("artifact-version-text", manifest(artifactVersion="v1"), "spec.artifactVersion must be a whole number, not str"),
    ("requirements-not-list", manifest(requirements="sklearn"), "spec.requirements must be a list, not str"),
    ("requirements-int", manifest(requirements=["sklearn", 3]), "spec.requirements must be a list of strings"),
    ("requirements-nested", manifest(requirements=[["sklearn"]]), "spec.requirements must be a list of strings"),
    ("server-list", manifest(server=["a"]), "spec.server must be a string, not list"),
    ("secret-name-dict", manifest(secretName={"name": "s"}), "spec.secretName must be a string, not dict"),
    ("parameters-dict", manifest(parameters={"sha256": "x"}), "spec.parameters must be a list, not dict"),
    (
        "parameters-not-mapping",
        manifest(parameters=["sha256=x"]),
        "spec.parameters[0] must be a mapping, not str",
    ),
    (
        "parameters-no-name",
        manifest(parameters=[{"name": "a", "value": "1"}, {"value": "2"}]),
        "spec.parameters[1].name is missing",
    ),
    ("parameters-int-name", manifest(parameters=[{"name": 3, "value": "x"}]), "spec.parameters[0]"),
    ("yaml-unclosed", "apiVersion: [unclosed\n", "not valid YAML"),
    ("yaml-nested-mapping", "a: b: c\n", "not valid YAML"),
    ("yaml-tab", "\tkind: Model\n", "not valid YAML"),
    ("yaml-python-tag", "!!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ("document-list", "- just\n- a list\n", "the manifest must be a mapping"),
    ("document-text", "just text\n", "the manifest must be a mapping"),
    ("document-empty", "", "the manifest must be a mapping"),
    ("document-comment", "# only a comment\n", "the manifest must be a mapping"),
    ("document-number", "42\n", "the manifest must be a mapping"),
    ("over-1-mib", "x" * (MAX_MANIFEST_BYTES + 1), "larger than 1 MiB"),
    # Bytes, not characters: 600,000 two-byte characters are more than 1 MiB.
    ("over-1-mib-in-bytes", "#" + "é" * 600_000, "larger than 1 MiB"),
]


@pytest.mark.parametrize(("text", "names"), [row[1:] for row in BAD_MANIFESTS], ids=[row[0] for row in BAD_MANIFESTS])
def test_bad_manifests_name_the_problem(text: str, names: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_model_manifest(text)
    assert names in str(caught.value)


def test_unknown_fields_are_listed_with_the_known_ones() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_model_manifest(manifest(replica=1, gpu=True))
    message = str(caught.value)
    assert "unknown field(s) gpu, replica" in message
    assert "known: " in message
    assert "replicas" in message.split("known: ")[1]


def test_explainer_and_llm_map_and_exclude_each_other() -> None:
    explainer = parse_model_manifest(manifest(explainer={"type": "anchor_tabular", "modelRef": "iris"}))
    assert explainer.modelSpec.explainer == pb.ExplainerSpec(type="anchor_tabular", modelRef="iris")
    llm = parse_model_manifest(manifest(llm={"pipelineRef": "chat"}))
    assert llm.modelSpec.llm == pb.LlmSpec(pipelineRef="chat")
    with pytest.raises(ManifestError, match="cannot both be set"):
        parse_model_manifest(manifest(explainer={"type": "anchor"}, llm={"modelRef": "x"}))


def test_both_api_versions_are_accepted() -> None:
    for version in ("mlops.seldon.io/v1alpha1", "mlops.seldon.io/v1"):
        text = MINIMAL.replace("apiVersion: mlops.seldon.io/v1", f"apiVersion: {version}")
        assert parse_model_manifest(text).meta.name == "tiny"


def test_a_manifest_of_exactly_1_mib_is_read() -> None:
    padding = MAX_MANIFEST_BYTES - len(MINIMAL.encode()) - 2
    text = MINIMAL + "#" + "x" * padding + "\n"
    assert len(text.encode()) == MAX_MANIFEST_BYTES
    assert parse_model_manifest(text).meta.name == "tiny"


def test_yaml_anchors_and_aliases_resolve() -> None:
    text = "x-shared: &reqs [sklearn, xgboost]\n" + manifest().replace("spec:\n", "spec:\n  requirements: *reqs\n")
    assert list(parse_model_manifest(text).modelSpec.requirements) == ["sklearn", "xgboost"]


def _billion_laughs(levels: int, fanout: int) -> str:
    """Nine levels of nine aliases each: under 1 KiB of text that expands to fanout**levels strings."""
    lines = ['a0: &a0 "lol"']
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*a{level - 1}"] * fanout)
        lines.append(f"a{level}: &a{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def test_aliases_that_expand_beyond_the_node_limit_are_a_manifest_error() -> None:
    text = _billion_laughs(9, 9) + BASE
    assert len(text.encode()) < 1024
    with pytest.raises(ManifestError, match="aliases expand"):
        parse_model_manifest(text)


def test_the_node_limit_is_for_the_whole_file_not_each_document() -> None:
    one = _billion_laughs(4, 9)  # 9**4 = 6,561 strings: each document alone is under the limit
    text = "---\n".join([one] * 20)  # together, over it
    with pytest.raises(ManifestError, match="aliases expand"):
        load_yaml_documents(text)
    assert len(load_yaml_documents("---\n".join([one] * 2))) == 2


def test_a_recursive_alias_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="refers to itself"):
        parse_model_manifest("x: &loop [*loop]\n" + BASE)


def test_aliases_under_the_node_limit_still_resolve() -> None:
    text = _billion_laughs(3, 9) + BASE + "  requirements: [sklearn]\n"
    assert list(parse_model_manifest(text).modelSpec.requirements) == ["sklearn"]


def test_memory_may_be_a_plain_number_of_bytes() -> None:
    assert parse_model_manifest(manifest(memory=2048)).modelSpec.memoryBytes == 2048
    assert parse_model_manifest(manifest(memory="1.5G")).modelSpec.memoryBytes == 1_500_000_000


# ------------------------------------------------------------------------------------- known bugs

BASE = "apiVersion: mlops.seldon.io/v1\nkind: Model\nmetadata: {name: a}\nspec:\n  storageUri: /m\n"


def test_a_non_string_spec_key_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="unknown field"):
        parse_model_manifest(BASE + "  1: 2\n")


def test_a_huge_memory_number_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match=r"spec\.memory"):
        parse_model_manifest(BASE + "  memory: " + "9" * 400 + "\n")


def test_a_generation_beyond_int64_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match=r"metadata\.generation"):
        parse_model_manifest(BASE.replace("{name: a}", "{name: a, generation: 100000000000000000000000}"))


@pytest.mark.parametrize(
    "text",
    [
        BASE.replace("{name: a}", '{name: "\\uD800"}'),
        BASE + '  requirements: ["\\uDC80"]\n',
        BASE + '  server: "\\uDC80"\n',
    ],
    ids=["name", "requirements", "server"],
)
def test_a_lone_surrogate_is_a_manifest_error(text: str) -> None:
    with pytest.raises(ManifestError):
        parse_model_manifest(text)


def test_deep_nesting_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError):
        parse_model_manifest("[" * 3000 + "]" * 3000)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2020-13-45", "month must be in 1..12"),  # looks like a date, so YAML makes one
        ("!!timestamp 2020-01-01 99:00:00", "hour must be in 0..23"),
        ("!!float abc", "could not convert string to float"),
        ("!!int 0xZZ", "invalid literal for int()"),
        ("9" * 5000, "integer string conversion"),
        ("!!timestamp", "a tagged value is malformed (AttributeError in the YAML library)"),  # found by hypothesis
    ],
)
def test_a_value_yaml_cannot_build_is_a_manifest_error(value: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_model_manifest(BASE + f"  server: {value}\n")
    assert str(caught.value).startswith("not valid YAML: a value cannot be read: ")
    assert problem in str(caught.value)


def test_messages_are_one_bounded_line_whatever_the_input() -> None:
    long_key = "k" * 5000
    for text in (
        "apiVersion: [unclosed\n",  # PyYAML's own message spans lines and quotes the input
        BASE + '  "two\\nlines": 1\n',
        BASE + "".join(f"  field{index}: 1\n" for index in range(500)),
        BASE + f"  {long_key}: 1\n",
        BASE.replace("mlops.seldon.io/v1", "x" * 5000),
        BASE + "  memory: " + "z" * 5000 + "\n",
    ):
        with pytest.raises(ManifestError) as caught:
            parse_model_manifest(text)
        assert "\n" not in str(caught.value)
        assert len(str(caught.value)) <= MAX_MESSAGE, str(caught.value)
    with pytest.raises(ManifestError, match=r"not valid YAML at line 2, column 1: while parsing a flow sequence"):
        parse_model_manifest("apiVersion: [unclosed\n")


# ------------------------------------------------------------------------------------- properties


MAX_MESSAGE = 600  # characters: the longest a ManifestError's message may be (the known fields fill most)


def _check(text: str) -> pb.Model | None:
    """Parse; a ManifestError must carry a message on one line of bounded length. Anything else raised
    fails the test."""
    try:
        return parse_model_manifest(text)
    except ManifestError as error:
        assert str(error)
        assert "\n" not in str(error)
        assert len(str(error)) <= MAX_MESSAGE, str(error)
        return None


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_model_or_a_manifest_error(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdeimnprsty:-[]{}&*!|>'\" \n\t#0123456789.,", max_size=200))
def test_yaml_punctuation_is_a_model_or_a_manifest_error(text: str) -> None:
    _check("apiVersion: mlops.seldon.io/v1\nkind: Model\n" + text)


TAGS = ["!!timestamp", "!!float", "!!int", "!!binary", "!!bool", "!!null", "!!str", "!!set", "!!omap", "!!pairs",
        "!!map", "!!seq", "!!python/tuple", "!custom", ""]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    field=st.sampled_from(["apiVersion", "kind", "metadata", "spec", "x"]),
    tag=st.sampled_from(TAGS),
    value=st.text(alphabet="0123456789-:.TZ abcefxyn+[]{},'\"", max_size=30),
)
def test_tagged_and_typed_values_are_a_model_or_a_manifest_error(field: str, tag: str, value: str) -> None:
    _check(f"{field}: {tag} {value}\n" + BASE)
    _check(BASE + f"  server: {tag} {value}\n")


# Values YAML can hold. Integers stay within int64 and strings have no surrogates: beyond those lie the
# known bugs above.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
SPEC_FIELDS = [
    "storageUri",
    "artifactVersion",
    "requirements",
    "memory",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "server",
    "secretName",
    "parameters",
    "explainer",
    "llm",
]
# Plausible values per field, so that many generated documents are valid and the mapping is exercised.
plausible: dict[str, st.SearchStrategy[Any]] = {
    "storageUri": st.text(min_size=1, max_size=30),
    "artifactVersion": st.integers(min_value=-5, max_value=1005),
    "requirements": st.lists(st.text(max_size=10), max_size=4),
    "memory": st.one_of(
        st.integers(min_value=0, max_value=2**52),
        st.from_regex(r"\A[0-9]{1,6}(\.[0-9]{1,3})?\s?(Ki|Mi|Gi|K|M|G|B)?\Z"),
    ),
    "replicas": st.integers(min_value=-5, max_value=1005),
    "minReplicas": st.integers(min_value=-5, max_value=1005),
    "maxReplicas": st.integers(min_value=-5, max_value=1005),
    "server": st.text(max_size=10),
    "secretName": st.text(max_size=10),
    "parameters": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8), "value": scalars}), max_size=3),
    "explainer": values,
    "llm": values,
}
specs = st.dictionaries(
    st.sampled_from(SPEC_FIELDS) | st.text(max_size=8),
    values,
    max_size=4,
).flatmap(
    lambda noise: st.fixed_dictionaries(
        {"storageUri": plausible["storageUri"]},
        optional={field: plausible[field] | values for field in SPEC_FIELDS if field != "storageUri"},
    ).map(lambda good: {**good, **noise} if noise and len(noise) % 2 else good)
)
documents = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["mlops.seldon.io/v1alpha1", "mlops.seldon.io/v1"]) | values,
        "kind": st.just("Model") | values,
        "metadata": st.fixed_dictionaries(
            {"name": st.text(min_size=1, max_size=20) | values},
            optional={
                "namespace": st.text(max_size=10) | values,
                "generation": st.integers(min_value=-(2**63), max_value=2**63 - 1) | values,
            },
        )
        | values,
        "spec": specs | values,
    },
    optional={"status": values},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_is_a_model_or_a_manifest_error(document: dict[str, Any]) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    model = _check(text)
    if model is None:
        return
    # Whatever was accepted maps faithfully (compared with the YAML as read back: keys such as "<<" merge).
    loaded = yaml.safe_load(text)
    assert model.meta.name == loaded["metadata"]["name"]
    spec = loaded["spec"]
    assert model.modelSpec.uri == spec["storageUri"]
    assert list(model.modelSpec.requirements) == (spec.get("requirements") or [])
    assert model.deploymentSpec.replicas == (1 if spec.get("replicas") is None else spec["replicas"])
    for field in ("replicas", "minReplicas", "maxReplicas", "artifactVersion"):
        if spec.get(field) is not None:
            assert 0 <= spec[field] <= 1000
    if spec.get("server") is not None:
        assert model.modelSpec.server == spec["server"]
    if spec.get("secretName") is not None:
        assert model.modelSpec.storageConfig.storageSecretName == spec["secretName"]
    assert [p.name for p in model.modelSpec.parameters] == [p["name"] for p in spec.get("parameters") or []]

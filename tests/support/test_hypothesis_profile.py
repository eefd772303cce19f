"""The suite's Hypothesis profile: no example is failed for its running time (tests assert no speed)."""

from __future__ import annotations

from hypothesis import settings

from tests.gateway import test_v2_grpc_codec


def test_no_hypothesis_test_has_a_deadline_by_default() -> None:
    assert settings().deadline is None


def test_a_test_with_its_own_settings_inherits_no_deadline() -> None:
    # This one once failed a loaded full run and passed alone: 30,000 examples found no wrong answer, so most likely
    # it was the 200 ms deadline, which its @settings(max_examples=..., suppress_health_check=...) left in force.
    test = test_v2_grpc_codec.test_a_json_request_survives_protobuf_and_back
    assert test._hypothesis_internal_use_settings.deadline is None  # type: ignore[attr-defined]

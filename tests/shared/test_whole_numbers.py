"""Whole numbers read from text that came from outside (issue 10's rule: a clear error, never a crash).

``str.isdigit`` accepts superscripts and other scripts' digits (U+00B9, U+0661), and ``int`` refuses some of them: every
place that checked with ``isdigit`` and then called ``int`` let a ValueError through for such text (found by the
gateway's Hypothesis test: a gRPC ModelInfer with model_version U+00B9 answered INTERNAL). Each place is checked here
with such text; modelplane/whole_numbers.py is the one check they all use.
"""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.inference_proxy import ModelNotHere
from agent.inference_proxy import parse_version as agent_version
from controller.servers.agent_container import port_of
from controller.servers.errors import ServerSpecError
from gateway.inference_router import parse_version as gateway_version
from gateway.inference_types import InferenceError
from modelplane.flag_types import bounded_int
from modelplane.whole_numbers import parse_whole_number
from trainer.launchers.fork_server import thread_counts

# Superscripts, Arabic-Indic digits, a mathematical digit, a fraction, a circled digit.
NOT_ASCII_DIGITS = ["\u00b9", "\u00b23", "\u0661\u0662", "\u0663", "\U0001d7d9", "\u00bd", "\u2466", "12\u00b3"]


@given(st.text(max_size=30))
def test_only_ascii_digits_are_a_whole_number(text: str) -> None:
    number = parse_whole_number(text)
    if text and len(text) <= 18 and all("0" <= character <= "9" for character in text):
        assert number == int(text)
    else:
        assert number is None


@pytest.mark.parametrize("text", NOT_ASCII_DIGITS)
def test_every_reader_of_a_whole_number_refuses_other_digits_clearly(text: str) -> None:
    with pytest.raises(InferenceError) as gateway:
        gateway_version(text)
    assert gateway.value.status == 400
    with pytest.raises(ModelNotHere):
        agent_version(text)
    with pytest.raises(ServerSpecError):
        port_of(f"0.0.0.0:{text}", 9500, "--listen")
    with pytest.raises(argparse.ArgumentTypeError):
        bounded_int(1, 100)(text)
    assert thread_counts({"OMP_NUM_THREADS": text}) == {}

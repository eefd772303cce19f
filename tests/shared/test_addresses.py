from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelplane.addresses import Address, AddressError, parse_address


@pytest.mark.parametrize(
    ("text", "expected", "loopback"),
    [
        ("127.0.0.1:9004", Address("127.0.0.1", 9004), True),
        ("localhost:1", Address("localhost", 1), True),
        ("[::1]:9005", Address("::1", 9005), True),
        ("0.0.0.0:80", Address("0.0.0.0", 80), False),
        ("scheduler.mlops.svc.cluster.local:9004", Address("scheduler.mlops.svc.cluster.local", 9004), False),
        ("10.1.2.3:65535", Address("10.1.2.3", 65535), False),
    ],
)
def test_valid_addresses(text: str, expected: Address, loopback: bool) -> None:
    address = parse_address(text)
    assert address == expected
    assert address.is_loopback is loopback
    assert str(address) == text


def test_port_zero_only_when_allowed() -> None:
    with pytest.raises(AddressError, match="out of range"):
        parse_address("127.0.0.1:0")
    assert parse_address("127.0.0.1:0", allow_port_zero=True).port == 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 127.0.0.1:1",
        "127.0.0.1",
        ":9004",
        "127.0.0.1:",
        "127.0.0.1:-1",
        "127.0.0.1:+1",
        "[::1]9004",
        "::1:80",
        "a..b:1",
        "-a:1",
        "host_name:1",
        "[zz]:1",
        "127.0.0.1:99999999999999999999",
        "h:\u00b2",
        "h:\u0661",
        "scheduler\n:9004",  # a host name is checked whole: not up to a final newline
        "a.b\n:1",
    ],
)
def test_invalid_addresses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


@given(st.text(max_size=300))
def test_any_text_parses_or_fails_with_address_error(text: str) -> None:
    try:
        address = parse_address(text, allow_port_zero=True)
    except AddressError as error:
        assert str(error)
    else:
        assert 0 <= address.port <= 65535
        assert parse_address(str(address), allow_port_zero=True) == address


@given(st.from_regex(r"\A[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,3}:[0-9]{1,5}\Z"))
def test_host_port_round_trip(text: str) -> None:
    try:
        address = parse_address(text, allow_port_zero=True)
    except AddressError as error:
        assert "out of range" in str(error)
    else:
        assert str(address) == f"{address.host}:{address.port}"

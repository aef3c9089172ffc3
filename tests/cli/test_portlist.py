"""kubectl_mesh.portlist: the one port-list format of the config, the annotations, the proxy and init."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubectl_mesh.portlist import PortList


def test_parse_and_canonical_text() -> None:
    ports = PortList.parse(" 8000 - 8002, 22,,22 ")
    assert str(ports) == "22,8000-8002"
    assert tuple(ports) == (22, 8000, 8001, 8002)
    assert ports.ranges == ((22, 22), (8000, 8002))
    assert len(ports) == 4 and bool(ports)
    assert 8001 in ports and 8003 not in ports and 21 not in ports and "22" not in ports
    assert PortList.parse("") == PortList() and not PortList() and str(PortList()) == ""
    assert repr(ports) == "PortList('22,8000-8002')"


def test_ranges_are_kept_as_written_but_ports_counted_once() -> None:
    """The canonical text sorts and de-duplicates items and does not merge them, as the injector
    always wrote it (`4190,4191`); `in`, iteration and `spans` see each port once."""
    ports = PortList.parse("4191,4190,80-90,85-95,96")
    assert str(ports) == "80-90,85-95,96,4190,4191"
    assert ports.spans == ((80, 96), (4190, 4191))
    assert list(ports) == [*range(80, 97), 4190, 4191]
    assert len(ports) == 19


def test_union_and_of() -> None:
    assert str(PortList.of([4191, 4190]) | PortList.parse("22,4190")) == "22,4190,4191"
    assert PortList.of([(8000, 8010), 22]) == PortList.parse("8000-8010,22")
    with pytest.raises(ValueError):
        PortList.of([0])
    with pytest.raises(ValueError):
        PortList(((10, 5),))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "'x' is not a port or a port range"),
        ("80,http", "'http' is not a port or a port range"),
        ("80-", "'80-' is not a port or a port range"),
        ("-80", "'-80' is not a port or a port range"),
        ("1-2-3", "'1-2-3' is not a port or a port range"),
        ("+80", "'+80' is not a port or a port range"),
        ("0", "'0' is not within 1-65535"),
        ("70000", "'70000' is not within 1-65535"),
        ("1-65536", "'1-65536' is not within 1-65535"),
        ("9" * 5000, "is not within 1-65535"),
        ("5-3", "'5-3' is not a port range: 5 is above 3"),
        ("٨٠", "'٨٠' is not a port or a port range"),  # int("٨٠") == 80: ASCII digits only
        ("²", "'²' is not a port or a port range"),  # "²".isdigit()
        ("８０", "'８０' is not a port or a port range"),  # fullwidth digits
    ],
)
def test_errors_name_the_item(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        PortList.parse(text)
    assert message in str(info.value)


ranges = st.lists(
    st.tuples(st.integers(1, 65535), st.integers(0, 50)).map(lambda t: (t[0], min(65535, t[0] + t[1]))),
    max_size=12,
)


@given(ranges)
def test_text_round_trips_and_membership_matches_the_ranges(items: list[tuple[int, int]]) -> None:
    ports = PortList(tuple(items))
    assert PortList.parse(str(ports)) == ports
    assert PortList.parse(str(ports).replace(",", " , ")) == ports
    expected = sorted({p for low, high in items for p in range(low, high + 1)})
    assert list(ports) == expected and len(ports) == len(expected)
    for low, high in items:
        assert low in ports and high in ports
    for probe in (1, 65535, *(low - 1 for low, _ in items), *(high + 1 for _, high in items)):
        assert (probe in ports) == (probe in set(expected))

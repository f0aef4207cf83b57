import pytest
from hypothesis import given, strategies as st

from kerzoo.registry import NameClashError, Registry, UnknownNameError


def make(*names):
    r = Registry("kernels")
    for n in names:
        r.register(n, object(), plugin=f"plugin-of-{n}")
    return r


def test_unknown_name_is_a_keyerror_naming_registry_and_close_matches():
    r = make("legendre1", "legendre3", "legendre5")
    with pytest.raises(KeyError) as info:
        r["legendre4"]
    err = info.value
    assert isinstance(err, UnknownNameError)
    assert "kernel" in str(err) and "'legendre4'" in str(err)
    assert err.suggestions and set(err.suggestions) <= {"legendre1", "legendre3", "legendre5"}
    assert "did you mean" in str(err)


def test_unknown_name_without_close_match_lists_known_names():
    r = make("alpha", "beta")
    with pytest.raises(UnknownNameError) as info:
        r["zzzzzz"]
    assert info.value.suggestions == []
    assert "alpha, beta" in str(info.value)


def test_name_clash_names_both_plugins():
    r = make("dup")
    with pytest.raises(NameClashError) as info:
        r.register("dup", object(), plugin="second-plugin")
    assert "plugin-of-dup" in str(info.value) and "second-plugin" in str(info.value)
    assert r.entry("dup").plugin == "plugin-of-dup"  # the first registration is kept


@given(st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=20))
def test_registry_is_a_sorted_mapping_of_what_was_registered(names):
    r = make(*names)
    assert list(r) == sorted(names)
    assert len(r) == len(names)
    for n in names:
        assert n in r and r.entry(n).plugin == f"plugin-of-{n}"


def test_empty_name_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        make("")

"""Strict YAML loading: positions, YAML 1.2 core scalars, and every construct SPEC §1 rejects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haios.config.yamlload import MAX_BYTES, load_yaml
from haios.errors import YamlRejected


def _reject(data: bytes) -> str:
    with pytest.raises(YamlRejected) as info:
        load_yaml(data, "f.yaml")
    return str(info.value)


def test_load_scalars_follow_yaml_core_schema() -> None:
    doc = load_yaml(b"a: 1\nb: 2.5\nc: true\nd: null\ne: '3'\nf: yes\ng: 2026-01-01\nh: 0x1f\ni: ~\n", "f.yaml")
    assert doc.value == {
        "a": 1,
        "b": 2.5,
        "c": True,
        "d": None,
        "e": "3",
        "f": "yes",
        "g": "2026-01-01",
        "h": 31,
        "i": None,
    }


def test_load_block_scalars_read_as_yaml_says() -> None:
    doc = load_yaml(b"a: >\n  folded\n  lines\n\n  kept\nb: |\n  literal\n  lines\n# c\nc: x # d\n", "f.yaml")
    assert doc.value == {"a": "folded lines\nkept\n", "b": "literal\nlines\n", "c": "x"}


def test_load_positions_of_keys_and_values_are_one_based() -> None:
    doc = load_yaml(b"# comment\nnodes:\n  - name: n1\n    port: 22\n", "f.yaml")
    assert doc.key_pos[("nodes",)] == (2, 1)
    assert doc.key_pos[("nodes", 0, "port")] == (4, 5)
    assert doc.value_pos[("nodes", 0, "port")] == (4, 11)
    assert doc.position(("nodes", 0, "missing")) == (3, 5)


def test_load_duplicate_key() -> None:
    assert (
        _reject(b"a: 1\nb:\n  c: 1\n  c: 2\n")
        == "f.yaml:4:3: b.c: duplicate key 'c' (first defined at line 3, column 3)"
    )


def test_load_python_tag() -> None:
    assert (
        _reject(b"a: !!python/object:os.system x\n")
        == "f.yaml:1:4: a: YAML tags are not allowed (found !!python/object:os.system)"
    )


def test_load_local_tag_on_mapping() -> None:
    assert _reject(b"a: !thing {b: 1}\n") == "f.yaml:1:4: a: YAML tags are not allowed (found !thing)"


def test_load_anchor() -> None:
    assert _reject(b"a: &x 1\nb: 2\n") == "f.yaml:1:4: a: anchors and aliases are not allowed (found anchor &x)"


def test_load_alias() -> None:
    assert _reject(b"a: [1]\nb: *x\n") == "f.yaml:2:4: b: anchors and aliases are not allowed (found alias *x)"


def test_load_merge_key_alias() -> None:
    msg = _reject(b"base: &b {x: 1}\nother:\n  <<: *b\n")
    assert msg == "f.yaml:1:7: base: anchors and aliases are not allowed (found anchor &b)"


def test_load_invalid_utf8_names_line_and_offset() -> None:
    assert _reject(b"a: 1\nb: caf\xe9\n") == "f.yaml:2:7: (root): not valid UTF-8 (byte 0xe9 at offset 11)"


def test_load_two_documents() -> None:
    assert _reject(b"a: 1\n---\nb: 2\n") == "f.yaml:2:1: (root): only one YAML document per file is allowed"


def test_load_empty_file() -> None:
    assert _reject(b"") == "f.yaml:1:1: (root): file is empty"


def test_load_complex_key() -> None:
    assert _reject(b"? [a, b]\n: 1\n") == "f.yaml:1:3: (root): mapping keys must be plain strings"


def test_load_nan_is_refused() -> None:
    assert _reject(b"k: .nan\n") == "f.yaml:1:4: k: non-finite numbers are not allowed (found .nan)"


def test_load_too_large() -> None:
    assert (
        _reject(b"#" * (MAX_BYTES + 1))
        == f"f.yaml:1:1: (root): file is {MAX_BYTES + 1} bytes; the limit is {MAX_BYTES} bytes"
    )


def test_load_syntax_error_has_position() -> None:
    assert _reject(b"a: [1, 2\nb: 3\n").startswith("f.yaml:2:")


@given(st.binary(max_size=2048))
def test_property_any_bytes_load_or_reject(data: bytes) -> None:
    try:
        load_yaml(data, "fuzz.yaml")
    except YamlRejected as exc:
        assert str(exc).startswith("fuzz.yaml:")


_PRINTABLE = st.characters(exclude_categories=("Cs", "Cc", "Co", "Cn"), exclude_characters="\ufeff\u2028\u2029\x85")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(_PRINTABLE, max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(_PRINTABLE, max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_property_json_documents_load_as_themselves(value: object) -> None:
    import json

    # JSON is YAML: any JSON document (no floats: repr round trips differ) loads to the same value.
    assert load_yaml(json.dumps({"v": value}, ensure_ascii=False).encode(), "j.yaml").value == {"v": value}

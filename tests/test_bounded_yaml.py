"""YAML is read with bounded expansion: aliases, recursion and depth (ptycho_torch.config.bounded_yaml)."""

from __future__ import annotations

import time
import tracemalloc

import pytest
import yaml
from test_bad_inputs import ALIAS_BOMB

from ptycho_torch.config.bounded_yaml import BoundExceeded, expanded_size, load_bounded
from ptycho_torch.errors import clipped


def test_ordinary_documents_load_as_safe_load_does():
    text = "base: &b {N: 32, lr: 1.0e-3}\nruns: [*b, *b, {N: 64}]\nflags: [true, null, '5']\n"
    assert load_bounded(text) == yaml.safe_load(text)
    assert load_bounded("") is None and load_bounded("# only a comment\n") is None
    with pytest.raises(yaml.YAMLError):
        load_bounded("a: !!python/object/apply:os.system ['true']\n")  # still the safe constructor


def test_alias_expansion_is_counted_without_expanding_and_refused():
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(BoundExceeded, match=r"expand to 5.45e\+07 values, more than the 100000 allowed"):
        load_bounded(ALIAS_BOMB)
    seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 2 and peak < 5 << 20, (seconds, peak)  # was 351 MB of message and a 2.1 GB peak
    node = yaml.compose("- &a [1, 2]\n- [*a, *a, *a]\n")
    assert expanded_size(node) == 1 + 3 + (1 + 3 * 3)  # outer list, [1, 2], [*a, *a, *a] with a expanded
    # mapping, keys a and b, [1, 2] (3), [*a, *a] (1 + 3 + 3)
    assert load_bounded("a: &a [1, 2]\nb: [*a, *a]\n", max_values=13) == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    with pytest.raises(BoundExceeded):
        load_bounded("a: &a [1, 2]\nb: [*a, *a]\n", max_values=12)


def test_recursive_and_deep_documents_are_refused():
    with pytest.raises(BoundExceeded, match="recursive"):
        load_bounded("a: &a [1, *a]\n")
    with pytest.raises(BoundExceeded, match="nested more than 100 levels"):
        load_bounded("[" * 101 + "]" * 101)
    with pytest.raises(BoundExceeded, match="nested more than 100 levels"):
        load_bounded("[" * 100_000 + "]" * 100_000)  # beyond Python's recursion limit
    assert load_bounded("[" * 99 + "]" * 99) is not None


def test_long_messages_keep_their_head_and_tail():
    text = "model.N: got '" + "x" * 100_000 + "'; use --N 32, 64 or 128"
    short = clipped(text)
    assert len(short) < 850 and short.startswith("model.N: got 'xxx") and short.endswith("use --N 32, 64 or 128")
    assert "characters left out" in short and clipped("a\nb  c") == "a b c"

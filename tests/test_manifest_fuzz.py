"""The manifest reader against mutated manifests (hypothesis): whatever the JSON says, `read_manifest`
returns records a host can use, or raises `ArtifactError` — never another exception. A manifest it
accepts must also generate (the reader's promises are what the hosts rely on)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_model import WaveNetConfig, save_checkpoint
from tests.conftest import random_model
from wn_export.contract.manifest import read_manifest
from wn_export.errors import ArtifactError
from wn_export.export.pipeline import export_directory

CONFIG = dict(quantization_channels=16, residual_channels=4, gate_channels=8, skip_channels=4, kernel_size=2,
              layers=4, stacks=2, initial_filter_width=2)  # two ring states: the layers' and the front end's
SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

HOSTILE_STRINGS = ["", "../../../../etc/passwd", "/etc/passwd", "step.onnx", "scoring.onnx", "link/../step.onnx",
                   "batch", "time-1", "ring", "replace", "float16", "fp16", "step", "x" * 300, "\0", "ñ"]
SCALARS = (st.none() | st.booleans() | st.sampled_from([0, 1, -1, 2, 3, 4, 6, 7, 16, 2**31, 2**63 - 1, 2**64, -2**63])
           | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(HOSTILE_STRINGS) | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(["file", "shape", "rings", "offset", "length", "name",
                                                         "role", "dtype", "input", "output", "x"]), inner,
                                        max_size=4), max_leaves=8)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    save_checkpoint(random_model(WaveNetConfig(**CONFIG), seed=2), root / "m.safetensors")
    export_directory(root / "exp", root / "m.safetensors", fp16=True)
    return root / "exp", json.loads((root / "exp" / "manifest.json").read_text())


def _slots(node, out):
    """Every (container, key) of a JSON value, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((node, key))
        _slots(value, out)
    return out


@st.composite
def mutations(draw, base: dict) -> dict:
    """One to three edits of the manifest: replace a value, delete an entry, nudge a number, reuse a
    value from elsewhere in the manifest."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(data, [])
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "delete", "nudge", "reuse"]))
        value = container[key]
        if action == "delete":
            del container[key]
        elif action == "nudge" and isinstance(value, int) and not isinstance(value, bool):
            container[key] = value + draw(st.sampled_from([-1, 1, -value, 2**31, 2**63]))
        elif action == "reuse":
            other, other_key = draw(st.sampled_from(slots))
            container[key] = copy.deepcopy(other[other_key]) if other_key in other or isinstance(other, list) \
                and other_key < len(other) else None
        else:
            container[key] = draw(VALUES)
    return data


def _read_or_refuse(directory, text: str):
    (directory / "manifest.json").write_text(text)
    try:
        return read_manifest(directory)
    except ArtifactError:
        return None


@given(data=st.data())
@SETTINGS
def test_mutated_manifests_are_read_or_refused(export, data):
    directory, base = export
    mutated = data.draw(mutations(base))
    try:
        manifest = _read_or_refuse(directory, json.dumps(mutated))
        if manifest is not None:  # accepted: every graph inside the directory, and it still generates
            from wn_export.generation import open_generator

            for graph in manifest.graphs.values():
                assert graph.path.resolve().is_relative_to(directory.resolve())
            if "step" not in manifest.graphs:  # a manifest without a step graph (a scoring-only export) is valid;
                with pytest.raises(ArtifactError, match="has no 'step' graph"):  # generating from it is refused
                    open_generator(directory)
                return
            with open_generator(directory) as gen:
                assert gen.generate(3, 2, seed=1).shape == (2, 3)
    finally:
        (directory / "manifest.json").write_text(json.dumps(base))


@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4))
@SETTINGS
def test_damaged_manifest_text_is_refused(export, cut, flips):
    """Truncated or byte-flipped text: refused with an `ArtifactError` (or read, when the damage is harmless)."""
    directory, base = export
    raw = bytearray(json.dumps(base).encode())
    for at, byte in flips:
        raw[at % len(raw)] = byte
    raw = raw[:max(1, cut % (len(raw) + 1))] if cut % 3 else raw
    try:
        (directory / "manifest.json").write_bytes(bytes(raw))
        try:
            read_manifest(directory)
        except ArtifactError:
            pass
    finally:
        (directory / "manifest.json").write_text(json.dumps(base))


def test_the_unmutated_manifest_generates(export):
    """The base case of the properties above: the export reads and generates."""
    from wn_export.generation import open_generator

    directory, _ = export
    assert set(read_manifest(directory).graphs) == {"scoring", "step", "scoring.fp16", "step.fp16"}
    with open_generator(directory) as gen:
        assert np.asarray(gen.generate(3, 2, seed=1)).shape == (2, 3)

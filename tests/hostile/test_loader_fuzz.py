"""Property-based fuzz of every loader (issue 25): whatever the file holds, a loader returns or
raises a one-line :class:`NasfcosError`; never another exception (a traceback), a hang or a
crash.  Each loader starts from a valid document and has random values put at random places
(types, NaN, huge sizes, deep nesting), so the checks behind the first one are reached too.
Examples are few and derandomised: the whole file runs in seconds.  (Genotype JSON has its own,
larger fuzz in tests/genotypes/test_fuzz.py.)"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasfcos.errors import NasfcosError

#: Examples per loader: few by default (seconds); NASFCOS_FUZZ_EXAMPLES=500 for a deeper run.
EXAMPLES = int(os.environ.get("NASFCOS_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.sampled_from([10**30, -1, 0])
           | st.floats() | st.text(max_size=12) | st.sampled_from(["abc", "", "1e300", "nan"]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                      max_leaves=12)
tensors = st.builds(
    lambda shape, fill, dtype: torch.full(shape, fill, dtype=torch.float64).to(dtype) if dtype.is_floating_point
    else torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=3).map(tuple), st.sampled_from([0.5, float("nan"), float("inf"), 1e300]),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, seed: Any, leaf: st.SearchStrategy[Any] = values) -> Any:
    """``seed`` with 1-3 places replaced by a random value (or a key deleted)."""
    doc = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return draw(leaf)
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and draw(st.booleans()) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(leaf)
    return doc


def holds(loader: Callable[[], Any]) -> None:
    """``loader()`` returns, or raises a one-line NasfcosError; anything else fails the test."""
    try:
        loader()
    except NasfcosError as exc:
        assert "\n" not in str(exc).strip(), str(exc)


def _write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, allow_nan=True))
    return path


# -- weights files (train's final.pt, --weights, --backbone-weights) ----------------------------

WEIGHTS = {"model": {"w": torch.ones(2, 2)}, "num_classes": 2, "cat_ids": [1, 2], "class_names": ["a", "b"],
           "min_size": 64, "max_size": 64, "eval_batch": 2, "model_kwargs": {}, "model_sha256": "0" * 64}


@FUZZ
@given(doc=mutated({k: v for k, v in WEIGHTS.items() if k != "model"}), state=st.dictionaries(
    st.text(max_size=5), tensors | values, max_size=3))
def test_weights_file(doc: dict[str, Any], state: dict[str, Any], tmp_path: Path) -> None:
    from nasfcos.weights import load_weights_file

    torch.save({**doc, "model": state} if isinstance(doc, dict) else doc, tmp_path / "w.pt")
    holds(lambda: load_weights_file(tmp_path / "w.pt"))


# -- COCO annotation files -----------------------------------------------------------------------

COCO = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10], "area": 100,
                         "iscrowd": 0}],
        "categories": [{"id": 3, "name": "x"}]}


@FUZZ
@given(doc=mutated(COCO))
def test_coco_file(doc: Any, tmp_path: Path) -> None:
    from nasfcos.fcos.data import load_coco

    holds(lambda: load_coco(_write_json(tmp_path / "a.json", doc)))


# -- export manifests ----------------------------------------------------------------------------

@FUZZ
@given(doc=mutated({"format": "nasfcos-export/1", "export": {"size": [64, 64], "batch": 1, "dynamic": False},
                    "source": {"kind": "detector", "model": "model.py"}, "widths": {"num_classes": 2}}))
def test_export_manifest(doc: Any, tmp_path: Path) -> None:
    from nasfcos.runtime.export import MANIFEST_FORMAT, load_manifest

    if isinstance(doc, dict) and doc.get("format") == "nasfcos-export/1":
        doc["format"] = MANIFEST_FORMAT
    _write_json(tmp_path / "m.onnx.json", doc)
    holds(lambda: load_manifest(tmp_path / "m.onnx"))


# -- search: settings, checkpoints, archive, latency tables -----------------------------------

@FUZZ
@given(data=st.data())
def test_search_settings(data: st.DataObject, tmp_path: Path) -> None:
    from nasfcos.search.loop import SearchConfig

    doc = data.draw(mutated(SearchConfig(preset="toy", trials=4).to_dict()))
    holds(lambda: SearchConfig.read(_write_json(tmp_path / "search.json", doc)))


@FUZZ
@given(doc=mutated({"step": 1, "wall_s": 1.0, "config": "{}", "ppo": {"x": 1}}, leaf=values | tensors))
def test_search_checkpoint(doc: Any, tmp_path: Path) -> None:
    from nasfcos.search.archive import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "c.pt", doc)
    holds(lambda: load_checkpoint(tmp_path / "c.pt"))


@FUZZ
@given(rows=st.lists(mutated({"format": 1, "step": 0, "index": 0, "hash": "ab", "status": "ok",
                              "reward": 0.5}), max_size=3))
def test_search_archive(rows: list[Any], tmp_path: Path) -> None:
    from nasfcos.search.archive import read_rows

    (tmp_path / "archive.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    holds(lambda: read_rows(tmp_path / "archive.jsonl"))


@FUZZ
@given(doc=mutated({"format": "nasfcos-latency/1", "backend": "onnxruntime", "size": [64, 64],
                    "fpn_channels": 32, "head_channels": 32, "num_classes": 2, "backbone": "resnet50",
                    "threads": 1, "entries": {"a": 0.1}, "overhead_ms": 0.0}))
def test_latency_table(doc: Any, tmp_path: Path) -> None:
    from nasfcos.search.latency import FORMAT, load_table

    if isinstance(doc, dict) and doc.get("format") == "nasfcos-latency/1":
        doc["format"] = FORMAT
    holds(lambda: load_table(_write_json(tmp_path / "t.json", doc)))


# -- release configs and checkpoints ---------------------------------------------------------

@FUZZ
@given(doc=mutated({"MODEL": {"META_ARCHITECTURE": "GeneralizedRCNN", "FCOS_ON": True},
                    "SEARCH": {"NAS_DECODER_ON": True, "DECODER": {"CONFIG": [[1, 2, 3, 4]], "AGG_SIZE": 256}}}))
def test_release_config_yaml(doc: Any, tmp_path: Path) -> None:
    import yaml

    from nasfcos.genotypes import read_release_config

    path = tmp_path / "c.yaml"
    try:
        path.write_text(yaml.safe_dump(doc))
    except yaml.YAMLError:
        return
    holds(lambda: read_release_config(path))


@settings(max_examples=max(8, EXAMPLES // 3), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.dictionaries(st.sampled_from(["module.backbone.body.conv1.weight",
                                              "module.decoder.fpn.top_blocks.p6.weight", "x", ""]),
                             tensors | values, max_size=3), wrap=st.booleans())
def test_release_checkpoint(state: dict[str, Any], wrap: bool, tmp_path: Path) -> None:
    from nasfcos.compiler.release import _load_checkpoint, convert_release

    torch.save({"model": state, "iteration": 1} if wrap else state, tmp_path / "c.pth")
    holds(lambda: convert_release(_load_checkpoint(tmp_path / "c.pth"), "Mobile_NAS_head", "c.pth"))


# -- VOC XML ---------------------------------------------------------------------------------

@FUZZ
@given(text=st.sampled_from(["<annotation><size><width>{a}</width><height>{b}</height></size><object><name>{c}"
                             "</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{a}</ymax>"
                             "</bndbox></object></annotation>", "<a>{a}{b}{c}", "{a}"]),
       a=st.text(max_size=6), b=st.sampled_from(["1", "nan", "-5", "1e309", "<x/>", ""]), c=st.text(max_size=4))
def test_voc_xml(text: str, a: str, b: str, c: str, tmp_path: Path) -> None:
    from xml.sax.saxutils import escape

    from nasfcos.fcos.voc import parse_voc_xml

    (tmp_path / "a.xml").write_text(text.format(a=escape(a), b=b, c=escape(c)))
    holds(lambda: parse_voc_xml(tmp_path / "a.xml"))


def test_deep_nesting_everywhere(tmp_path: Path) -> None:
    """100,000-deep JSON (5,000-deep YAML) in every text loader: one line, not RecursionError."""
    from nasfcos.fcos.data import load_coco
    from nasfcos.genotypes import read_release_config
    from nasfcos.runtime.export import load_manifest
    from nasfcos.search.latency import load_table
    from nasfcos.search.loop import SearchConfig

    for name, load in [("a.json", load_coco), ("m.onnx.json", load_manifest), ("t.json", load_table),
                       ("c.yaml", read_release_config), ("search.json", SearchConfig.read)]:
        depth = 5_000 if name.endswith(".yaml") else 100_000
        (tmp_path / name).write_text("[" * depth + "]" * depth)
        holds(lambda load=load, name=name: load(tmp_path / name))

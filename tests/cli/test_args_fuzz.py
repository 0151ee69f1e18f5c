"""Fuzz of the CLI's numeric flags across verbs (parse-only: a bad value stops every verb
before any model work), and the validation layer's type functions themselves."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nasfcos.cli import args as A
from nasfcos.cli.main import main
from nasfcos.compiler.options import MAX_CHANNELS, MAX_CLASSES

#: kind -> (predicate a valid value satisfies, type function)
KINDS = {
    "positive_int": (lambda v: isinstance(v, int) and v >= 1, A.positive_int),
    "non_negative_int": (lambda v: isinstance(v, int) and v >= 0, A.non_negative_int),
    "positive_float": (lambda v: math.isfinite(v) and v > 0, A.positive_float),
    "non_negative_float": (lambda v: math.isfinite(v) and v >= 0, A.non_negative_float),
    "unit_float": (lambda v: math.isfinite(v) and 0 <= v <= 1, A.float_range(0.0, 1.0)),
    "lr": (lambda v: math.isfinite(v) and 0 < v <= 10, A.float_range(0.0, 10.0, lo_open=True)),
    "seed": (lambda v: isinstance(v, int) and 0 <= v < 2**32, A.seed),
    "width": (lambda v: isinstance(v, int) and 2 <= v <= MAX_CHANNELS and v % 2 == 0, A.width),
    "side": (lambda v: isinstance(v, int) and 32 <= v <= A.MAX_SIDE, A.int_range(32, A.MAX_SIDE)),
    "class_count": (lambda v: isinstance(v, int) and 1 <= v <= MAX_CLASSES, A.num_classes),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Harmless inputs for the positional arguments (never read: parsing fails first)."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "model.py").write_text("raise SystemExit('must never run')\n")
    (d / "model.onnx").write_bytes(b"not onnx")
    return {"d": str(d), "py": str(d / "model.py"), "onnx": str(d / "model.onnx")}


def _flags(f: dict[str, str]) -> list[tuple[list[str], str, str]]:
    """(argv before the flag, flag, kind) for every numeric flag of every verb."""
    out = f["d"] + "/out"
    export, check, bench = ["export", f["py"]], ["check", f["onnx"]], ["bench", f["py"]]
    train = ["train", f["py"], "-o", out]
    ev = ["eval", f["py"]]
    synth = ["data", "synth", "-o", out]
    search = ["search", "-o", out]
    predict = ["predict", f["py"], f["py"], "-o", out]
    latency = ["search", "latency-table", "-o", out]
    proxy_eval = ["search", "eval", "nas_fcos_fpn", "--cache", f["d"]]
    proxy_cache = ["search", "cache", "--out", out]
    return [
        (predict, "--score-thresh", "unit_float"), (predict, "--min-size", "side"),
        (export, "--batch", "positive_int"), (export, "--seed", "seed"),
        (export, "--workspace", "positive_float"),
        (check, "--batch", "positive_int"), (check, "--seed", "seed"),
        (check, "--atol", "non_negative_float"), (check, "--rtol", "non_negative_float"),
        (check, "--threads", "positive_int"),
        (bench, "--batch", "positive_int"), (bench, "--runs", "positive_int"),
        (bench, "--warmup", "non_negative_int"), (bench, "--max-seconds", "positive_float"),
        (bench, "--threads", "positive_int"), (bench, "--seed", "seed"),
        (["compile", "nas_fcos_fpn_head"], "--fpn-channels", "width"),
        (["compile", "nas_fcos_fpn_head"], "--head-channels", "width"),
        (["compile", "nas_fcos_fpn_head"], "--num-classes", "class_count"),
        (["profile", "fpn-fcos"], "--fpn-channels", "width"),
        (["profile", "fpn-fcos"], "--num-classes", "class_count"),
        (["demo"], "--runs", "positive_int"), (["demo"], "--warmup", "non_negative_int"),
        (["demo"], "--threads", "positive_int"), (["demo"], "--fpn-channels", "width"),
        (train, "--iters", "positive_int"), (train, "--batch", "positive_int"),
        (train, "--lr", "lr"), (train, "--clip-grad", "non_negative_float"),
        (train, "--workers", "non_negative_int"), (train, "--log-every", "positive_int"),
        (train, "--min-size", "side"), (train, "--fpn-channels", "width"),
        (train, "--hflip", "unit_float"), (train, "--seed", "seed"),
        (ev, "--batch", "positive_int"), (ev, "--max-images", "positive_int"),
        (ev, "--min-size", "side"), (ev, "--num-classes", "class_count"),
        (synth, "--images", "positive_int"), (synth, "--size", "side"),
        (synth, "--val-fraction", "unit_float"),
        (search, "--trials", "positive_int"), (search, "--batch-size", "positive_int"),
        (search, "--workers", "non_negative_int"), (search, "--top-k", "positive_int"),
        (search, "--toy-noise", "non_negative_float"), (search, "--seed", "seed"),
        (latency, "--head-channels", "width"), (latency, "--num-classes", "class_count"),
        (latency, "--runs", "positive_int"), (latency, "--warmup", "non_negative_int"),
        (export, "--calib-images", "positive_int"), (bench, "--calib-images", "positive_int"),
        (proxy_eval, "--steps", "positive_int"), (proxy_eval, "--seed", "seed"),
        (proxy_eval, "--threads", "positive_int"), (proxy_cache, "--images", "positive_int"),
        (proxy_cache, "--crop", "side"), (proxy_cache, "--short-side", "side"),
    ]


def _number_text(v: float | int) -> str:
    return repr(v) if isinstance(v, float) else str(v)


values = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from(["", "nan", "-nan", "inf", "-inf", "1e999", "0x10", "1_0", "abc", "7.5",
                     " ", "1,2", "١٢"]),  # ("--" is argparse's end of options)
)


@settings(max_examples=150, deadline=None, database=None, phases=(Phase.explicit, Phase.reuse, Phase.generate), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0, max_value=10_000), value=values)
def test_numeric_flags_accept_valid_and_reject_the_rest_before_any_work(
        files: dict[str, str], capsys: pytest.CaptureFixture[str], index: int, value: object) -> None:
    flags = _flags(files)
    before, flag, kind = flags[index % len(flags)]
    valid, parse = KINDS[kind]
    text = value if isinstance(value, str) else _number_text(value)  # type: ignore[arg-type]
    try:
        parsed = parse(text)
    except argparse.ArgumentTypeError:
        parsed = None
    if parsed is not None:
        assert valid(parsed), (kind, text, parsed)
        return  # a valid value would start real work: the type function is the parse
    if isinstance(value, int):  # an integer the predicate accepts must have parsed
        assert not valid(value), (kind, text)
    rc = main([*before, f"{flag}={text}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, (before, flag, text)
    assert err.startswith(f"nasfcos {before[0]}") and "\n" not in err, err
    assert flag in err, err
    assert not Path(files["d"], "out").exists()  # nothing was written


@given(h=st.integers(min_value=0, max_value=10**6), w=st.integers(min_value=0, max_value=10**6),
       square=st.booleans())
@settings(max_examples=100, deadline=None)
def test_sizes_are_height_by_width_and_a_single_number_is_square(h: int, w: int,
                                                                 square: bool) -> None:
    text = str(h) if square else f"{h}x{w}"
    want = (h, h) if square else (h, w)
    ok = all(A.MIN_SIDE <= v <= A.MAX_SIDE for v in want)
    if ok:
        assert A.size_hw(text) == want
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            A.size_hw(text)


@pytest.mark.parametrize("text", ["5-1", "", "a-b", "-1", "0-5000", "1,,x"])
def test_bad_seed_lists(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        A.seed_range(text)


def test_seed_lists() -> None:
    assert A.seed_range("0-4") == [0, 1, 2, 3, 4]
    assert A.seed_range("3,1,2") == [3, 1, 2]


def test_devices() -> None:
    import torch

    assert A.device("cpu") == "cpu"
    for bad in ("bogus", "cpu:0", "cuda:x", "gpu", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown device"):
            A.device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="no CUDA GPU"):
            A.device("cuda")


def test_opsets() -> None:
    assert A.opset("19") == 19
    for bad in ("18", "99", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            A.opset(bad)

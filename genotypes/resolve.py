"""One way to turn a genotype argument into a :class:`Genotype`, for every command.

:func:`resolve_genotype` accepts, in this order of precedence:

1. an existing file:

   * ``*.yaml`` / ``*.yml``: a release config (``configs/search/*.yaml`` of the authors'
     release), read with ``yaml.safe_load``; the genotype is ``SEARCH.DECODER.CONFIG`` (its
     head entries only when ``SEARCH.NAS_HEAD_ON``), see :func:`read_release_config`;
   * anything else: JSON, either a genotype document (Contract 1) or the release's numeric
     list form (a top-level list, :func:`~nasfcos.genotypes.paper.from_paper_list`);

2. otherwise the name of a shipped genotype (``nas_fcos_fpn``, ``nas_fcos_fpn_head``, with or
   without ``.json``).

Everything else is a one-line :class:`~nasfcos.errors.GenotypeError`.  A file always wins
over a shipped name of the same spelling.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nasfcos.errors import GenotypeError
from nasfcos.genotypes.genotype import (
    DEFAULT_NAME,
    NAME_RE,
    Genotype,
    decode_json,
    load_genotype,
    parse_at,
    parse_genotype,
    read_limited,
)
from nasfcos.genotypes.paper import from_paper_list

#: Genotype files shipped with the package.
PAPER_GENOTYPES: tuple[str, ...] = ("nas_fcos_fpn", "nas_fcos_fpn_head")
DEFAULT_GENOTYPE = "nas_fcos_fpn_head"
#: File suffixes read as release config files.
YAML_SUFFIXES = (".yaml", ".yml")


def paper_genotype_path(name: str = DEFAULT_GENOTYPE) -> Path:
    """Path of a shipped genotype file (``nas_fcos_fpn`` or ``nas_fcos_fpn_head``)."""
    stem = name.removesuffix(".json")
    if stem not in PAPER_GENOTYPES:
        raise GenotypeError(f"unknown shipped genotype {name!r} (have: {', '.join(PAPER_GENOTYPES)})")
    return Path(str(resources.files("nasfcos.genotypes").joinpath(f"{stem}.json")))


def load_paper_genotype(name: str = DEFAULT_GENOTYPE) -> Genotype:
    """Load a shipped genotype."""
    return load_genotype(paper_genotype_path(name))


@dataclass(frozen=True)
class ReleaseConfig:
    """What a release config file (``configs/search/*.yaml``) says about the model.

    ``genotype``: from ``SEARCH.DECODER.CONFIG``; ``agg_size``: ``SEARCH.DECODER.AGG_SIZE`` (the
    FPN and head width); ``conv_body``: ``MODEL.BACKBONE.CONV_BODY`` (``R-50-NAS``,
    ``R-101-NAS``, ``MobileNetV2``); ``stride_in_1x1``, ``num_groups``, ``width_per_group``:
    ``MODEL.RESNETS.*`` (release defaults True, 1, 64); ``nas_head``: ``SEARCH.NAS_HEAD_ON``;
    ``num_classes``: foreground classes (``MODEL.RETINANET.NUM_CLASSES`` - 1, default 80).
    """

    genotype: Genotype
    agg_size: int
    conv_body: str
    stride_in_1x1: bool
    num_groups: int
    width_per_group: int
    nas_head: bool
    num_classes: int


def _section(doc: dict[str, Any], path: str) -> dict[str, Any]:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise GenotypeError(f"{path}: expected a mapping in the release config")
    return node


def _value(section: dict[str, Any], key: str, default: Any, kind: type, where: str) -> Any:
    value = section.get(key, default)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise GenotypeError(f"{where}.{key}: expected an integer, got {str(value)[:40]!r}")
    if kind is bool and not isinstance(value, bool):
        raise GenotypeError(f"{where}.{key}: expected True or False, got {str(value)[:40]!r}")
    if kind is str and not isinstance(value, str):
        raise GenotypeError(f"{where}.{key}: expected a name, got {str(value)[:40]!r}")
    return value


def _name_from(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", path.stem)[:64].lstrip("._+-")
    return name if NAME_RE.fullmatch(name) else DEFAULT_NAME


def read_release_config(path: str | Path) -> ReleaseConfig:
    """Read a release config file (``yaml.safe_load``; data only). Raises :class:`GenotypeError`."""
    import yaml

    p = Path(path)
    data = read_limited(p)
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise GenotypeError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise GenotypeError(f"{p}: not valid YAML{where}") from None
    except RecursionError:
        raise GenotypeError(f"{p}: YAML nested too deeply") from None
    if not isinstance(doc, dict):
        raise GenotypeError(f"{p}: not a release config (expected a YAML mapping with SEARCH and MODEL)")
    try:
        model = _section(doc, "MODEL")
        search = _section(doc, "SEARCH")
        decoder = _section(doc, "SEARCH.DECODER")
        if model.get("RETINANET_ON") or not search.get("NAS_DECODER_ON", False):
            raise GenotypeError("only NAS-FCOS configs (SEARCH.NAS_DECODER_ON with the FCOS head) are supported")
        if "CONFIG" not in decoder:
            raise GenotypeError("SEARCH.DECODER.CONFIG: missing")
        lst = decoder["CONFIG"]
        nas_head = _value(search, "NAS_HEAD_ON", False, bool, "SEARCH")
        if not isinstance(lst, list):
            raise GenotypeError("SEARCH.DECODER.CONFIG: expected the list form [[[in1, in2, op1, op2, agg]], ...]")
        if nas_head:
            layers = _value(_section(doc, "SEARCH.HEAD"), "NUM_HEAD_LAYERS", 6, int, "SEARCH.HEAD")
            if len(lst) != 9 or layers != 6:
                raise GenotypeError("SEARCH.DECODER.CONFIG: NAS_HEAD_ON needs 7 blocks, [share] and 6 head ops")
        else:
            lst = lst[:7]  # the release builds the FCOS head and ignores any head entries
        try:
            genotype = from_paper_list(lst, name=_name_from(p), meta={"source": f"release config {p.name}"})
        except GenotypeError as exc:
            raise GenotypeError(f"SEARCH.DECODER.CONFIG: {exc}") from None
        resnets = _section(doc, "MODEL.RESNETS")
        retina = _section(doc, "MODEL.RETINANET")
        classes = _value(retina, "NUM_CLASSES", 81, int, "MODEL.RETINANET")
        cfg = ReleaseConfig(
            genotype=genotype,
            agg_size=_value(decoder, "AGG_SIZE", 64, int, "SEARCH.DECODER"),
            conv_body=_value(_section(doc, "MODEL.BACKBONE"), "CONV_BODY", "R-50-C4", str, "MODEL.BACKBONE"),
            stride_in_1x1=_value(resnets, "STRIDE_IN_1X1", True, bool, "MODEL.RESNETS"),
            num_groups=_value(resnets, "NUM_GROUPS", 1, int, "MODEL.RESNETS"),
            width_per_group=_value(resnets, "WIDTH_PER_GROUP", 64, int, "MODEL.RESNETS"),
            nas_head=nas_head,
            num_classes=classes - 1,
        )
    except GenotypeError as exc:
        raise GenotypeError(f"{p}: {exc}") from None
    if cfg.num_classes < 1:
        raise GenotypeError(f"{p}: MODEL.RETINANET.NUM_CLASSES must be at least 2 (background + 1)")
    return cfg


def _load_json_file(p: Path) -> Genotype:
    doc = decode_json(read_limited(p), source=str(p))
    if isinstance(doc, list):
        return parse_at(str(p), lambda d: from_paper_list(d, name=_name_from(p)), doc)
    return parse_at(str(p), parse_genotype, doc)


def resolve_genotype(arg: str | Path) -> Genotype:
    """A genotype from a command-line argument: a file (genotype JSON, list-form JSON, release
    config yaml) or a shipped genotype name, in that order.  Raises :class:`GenotypeError`."""
    text = str(arg)
    if not text:
        raise GenotypeError("empty genotype argument (a genotype file or a shipped name)")
    p = Path(text)
    if p.is_dir():
        raise GenotypeError(f"{p}: is a directory, not a genotype file")
    if p.exists():
        if p.suffix.lower() in YAML_SUFFIXES:
            return read_release_config(p).genotype
        return _load_json_file(p)
    if text.removesuffix(".json") in PAPER_GENOTYPES:
        return load_paper_genotype(text)
    raise GenotypeError(unknown_genotype_message(text))


def unknown_genotype_message(text: str) -> str:
    """One line for a genotype argument that is neither a file nor a shipped name: the
    closest shipped name ("did you mean") and all of them."""
    stem = Path(text).name.removesuffix(".json").replace("-", "_").lower()
    close = difflib.get_close_matches(stem, PAPER_GENOTYPES, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"{text}: no such file, and not a shipped genotype ({hint}shipped: "
            f"{', '.join(PAPER_GENOTYPES)})")

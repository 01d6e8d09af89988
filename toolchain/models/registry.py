"""One registry for every network of the papers, addressed by name.

Names follow the papers: ``<family>-<layers>-<width>x[-v<n>]`` where ``layers = sum(depth) + 2``
(``hps-06-0.5x`` is HPS with depth [1,1,1,1] at width 0.5), plus a few fixed names for networks
without a width multiplier (``squeezenet-v1.0``). A ``-bnfirst`` suffix (``hps-21-1x-v3-bnfirst``)
builds an HPS or Shallow SqueezeNext net with conv -> BN -> activation units instead of the papers'
conv -> activation -> BN: the same layers and parameter count, a departure from the papers for
quantization-friendly training (the BN then normalises every conv output and folds into it). Families register themselves with
`register_model`; any width the user types builds, unknown names fail with the closest matches.

Any depth per stage builds too, for families whose builder takes one (``free_depth_stages``):
``<family>-d<b1>.<b2>.<b3>.<b4>-<width>x[-bnfirst]`` (``hps-d1.2.1.1-0.25x``, what `toolchain sweep`
explores). A depth the papers name resolves to the papers' name (``hps-d1.1.1.1-0.5x`` is ``hps-06-0.5x``).
"""

from __future__ import annotations

import csv
import difflib
import fnmatch
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Callable, Iterable, Mapping

from torch import nn

from toolchain.errors import UnknownModelError

# A builder takes the resolved spec plus the run-time options and returns the network.
Builder = Callable[..., nn.Module]

_NAME_RE = re.compile(
    r"^(?P<family>[a-z][a-z0-9-]*?)-(?P<layers>\d{1,3})-(?P<width>\d+(?:\.\d+)?)x(?:-v(?P<version>\d+))?(?P<bnfirst>-bnfirst)?$"
)
_DEPTH_NAME_RE = re.compile(
    r"^(?P<family>[a-z][a-z0-9-]*?)-d(?P<depth>\d{1,2}(?:\.\d{1,2})+)-(?P<width>\d+(?:\.\d+)?)x(?P<bnfirst>-bnfirst)?$"
)
MAX_WIDTH = 8.0
MAX_BLOCKS_PER_STAGE = 32
BN_FIRST_NOTE = (" -bnfirst: a departure from the papers: conv -> BN -> activation units (same layers and "
                 "parameters), so that BN normalises each conv output in training and folds into the conv; "
                 "the papers' order lets conv outputs drift and is hard to quantize when deep.")


@dataclass(frozen=True)
class PaperResult:
    """One row of the papers' result tables for a model."""

    dataset: str
    accuracy_pct: float
    size_mb: float
    speed_s_per_epoch: float
    table: str
    source: str


@dataclass(frozen=True)
class DepthConfig:
    """Blocks per stage for one (layers, version) of a family."""

    layers: int
    version: int
    depth: tuple[int, ...]
    note: str = ""

    def __post_init__(self) -> None:
        if sum(self.depth) + 2 != self.layers:
            raise ValueError(f"depth {self.depth} does not give {self.layers} layers")


@dataclass(frozen=True)
class Family:
    """A parametric family: depth configurations and a builder; any width."""

    name: str
    builder: Builder
    configs: tuple[DepthConfig, ...]
    description: str
    default_width: float = 1.0
    # (layers -> version) used when the name carries no -v<n>; absent => the version is required
    default_versions: Mapping[int, int] = field(default_factory=dict)
    configurations: tuple[str, ...] = ("cifar",)
    # whether a -bnfirst variant exists (families whose papers put the activation before the BN)
    bn_first_variant: bool = False
    # stages of a builder that takes any depth per stage (``hps-d1.2.1.1-0.5x``); None: only ``configs``
    free_depth_stages: int | None = None

    def versions(self, layers: int) -> list[DepthConfig]:
        return [c for c in self.configs if c.layers == layers]


@dataclass(frozen=True)
class FixedModel:
    """A network without width/depth parameters (SqueezeNet v1.0, Squeezed CNN)."""

    name: str
    builder: Builder
    description: str
    configurations: tuple[str, ...] = ("cifar",)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build and describe one concrete model."""

    name: str
    family: str
    description: str
    builder: Builder
    depth: tuple[int, ...] | None = None
    layers: int | None = None
    width: float | None = None
    version: int | None = None
    configuration: str = "cifar"
    configurations: tuple[str, ...] = ("cifar",)
    bn_first: bool = False  # conv -> BN -> activation units (the -bnfirst variant), not the papers' order

    @property
    def input_size(self) -> int:
        """Input height/width of the configuration (CIFAR 32, ImageNet 224)."""
        return 224 if self.configuration == "imagenet" else 32

    @property
    def paper_results(self) -> tuple[PaperResult, ...]:
        return paper_results(self.name)

    def build(self, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        """Instantiate the network (random weights)."""
        if num_classes < 1:
            raise UnknownModelError(f"num_classes must be >= 1, got {num_classes}",
                                    "pass the dataset's class count")
        if in_channels < 1:
            raise UnknownModelError(f"in_channels must be >= 1, got {in_channels}",
                                    "use 1 for grey images, 3 for RGB")
        return self.builder(self, num_classes=num_classes, in_channels=in_channels)


_FAMILIES: dict[str, Family] = {}
_FIXED: dict[str, FixedModel] = {}


def register_model(entry: Family | FixedModel) -> Family | FixedModel:
    """Add a family or a fixed model to the registry (used once per family module)."""
    if entry.name in _FAMILIES or entry.name in _FIXED:
        raise ValueError(f"model {entry.name!r} registered twice")
    if isinstance(entry, Family):
        _FAMILIES[entry.name] = entry
    else:
        _FIXED[entry.name] = entry
    return entry


def format_width(width: float) -> str:
    """1.0 -> '1x', 0.5 -> '0.5x', 0.575 -> '0.575x' (the papers' spelling)."""
    text = f"{width:.4f}".rstrip("0").rstrip(".")
    return f"{text}x"


def depth_name(family: str, depth: Iterable[int], width: float, bn_first: bool = False) -> str:
    """The name of a model by its depth per stage: ``hps-d1.2.1.1-0.25x`` (`resolve` turns a paper depth into its name)."""
    return (f"{family}-d{'.'.join(str(int(blocks)) for blocks in depth)}-{format_width(width)}"
            + ("-bnfirst" if bn_first else ""))


def _canonical(family: Family, cfg: DepthConfig, width: float) -> str:
    name = f"{family.name}-{cfg.layers:02d}-{format_width(width)}"
    if len(family.versions(cfg.layers)) > 1:
        name += f"-v{cfg.version}"
    return name


def _all_names() -> list[str]:
    names = list(_FIXED)
    for fam in _FAMILIES.values():
        for cfg in fam.configs:
            names.append(_canonical(fam, cfg, fam.default_width))
    names.extend(r for r in _paper_rows() if r not in names)
    return names


def resolve(name: str, configuration: str | None = None) -> ModelSpec:
    """Parse a model name into a `ModelSpec`, or fail with the closest valid names."""
    _ensure_loaded()
    raw = name
    name = name.strip().lower()
    if name in _FIXED:
        fixed = _FIXED[name]
        spec = ModelSpec(name=fixed.name, family=fixed.name, description=fixed.description,
                         builder=fixed.builder, configurations=fixed.configurations)
        return _with_configuration(spec, configuration)
    depth_match = _DEPTH_NAME_RE.match(name)
    match = depth_match or _NAME_RE.match(name)
    if not match or match.group("family") not in _FAMILIES:
        raise _unknown(raw)
    family = _FAMILIES[match.group("family")]
    bn_first = match.group("bnfirst") is not None
    if bn_first and not family.bn_first_variant:
        raise UnknownModelError(f"{family.name} has no -bnfirst variant: its units are conv -> BN -> activation "
                                "already", f"drop the suffix: {raw.strip().lower().removesuffix('-bnfirst')}")
    width = float(match.group("width"))
    if not 0 < width <= MAX_WIDTH:
        raise UnknownModelError(f"width {width} out of range in {raw!r}",
                                f"use a width multiplier in (0, {MAX_WIDTH:g}], e.g. 0.5x or 1x")
    if depth_match:
        return _with_configuration(_free_depth_spec(family, depth_match.group("depth"), width, bn_first, raw),
                                   configuration)
    layers = int(match.group("layers"))
    candidates = family.versions(layers)
    if not candidates:
        valid = sorted({f"{family.name}-{c.layers:02d}" for c in family.configs})
        raise UnknownModelError(
            f"{family.name} has no {layers}-layer configuration",
            f"valid depths: {', '.join(valid)} (layers = sum of blocks per stage + 2)")
    version_text = match.group("version")
    if version_text is None:
        default = family.default_versions.get(layers)
        if default is None and len(candidates) == 1:
            default = candidates[0].version
        if default is None:
            options = ", ".join(_canonical(family, c, width) for c in candidates)
            raise UnknownModelError(f"{raw!r} needs a version", f"one of: {options}")
        version = default
    else:
        version = int(version_text)
    cfg = next((c for c in candidates if c.version == version), None)
    if cfg is None:
        options = ", ".join(_canonical(family, c, width) for c in candidates)
        raise UnknownModelError(f"{raw!r}: no version v{version} for {family.name}-{layers:02d}",
                                f"one of: {options}")
    description = family.description + (BN_FIRST_NOTE if bn_first else "")
    spec = ModelSpec(name=_canonical(family, cfg, width) + ("-bnfirst" if bn_first else ""), family=family.name,
                     description=description, builder=family.builder, depth=cfg.depth,
                     layers=cfg.layers, width=width, version=cfg.version,
                     configurations=family.configurations, bn_first=bn_first)
    return _with_configuration(spec, configuration)


def _free_depth_spec(family: Family, depth_text: str, width: float, bn_first: bool, raw: str) -> ModelSpec:
    """The spec of ``<family>-d<b1>.<b2>...-<width>x``: the papers' name where a paper configuration has that depth."""
    depth = tuple(int(part) for part in depth_text.split("."))
    stages = family.free_depth_stages
    if stages is None:
        raise UnknownModelError(f"{family.name} builds only its papers' depths, not {raw.strip()!r}",
                                f"use one of: {', '.join(sorted({_canonical(family, c, width) for c in family.configs}))}")
    if len(depth) != stages or not all(1 <= blocks <= MAX_BLOCKS_PER_STAGE for blocks in depth):
        raise UnknownModelError(f"{raw.strip()!r}: {family.name} takes {stages} stages of 1 to "
                                f"{MAX_BLOCKS_PER_STAGE} blocks each",
                                f"e.g. {depth_name(family.name, (1,) * stages, width)}")
    same = [cfg for cfg in family.configs if cfg.depth == depth]
    if len(same) == 1:  # a paper configuration: one name, one artifact folder
        cfg = same[0]
        name, layers, version = _canonical(family, cfg, width), cfg.layers, cfg.version
    else:  # no paper names this depth (or several versions share it): the name says the depth
        name, layers, version = depth_name(family.name, depth, width), sum(depth) + 2, None
    description = family.description + (BN_FIRST_NOTE if bn_first else "")
    if version is None:
        description += f" Depth per stage {list(depth)}: a configuration of our own, no paper's."
    return ModelSpec(name=name + ("-bnfirst" if bn_first else ""), family=family.name,
                     description=description, builder=family.builder, depth=depth, layers=layers, width=width,
                     version=version, configurations=family.configurations, bn_first=bn_first)


def _with_configuration(spec: ModelSpec, configuration: str | None) -> ModelSpec:
    if configuration is None or configuration == spec.configuration:
        return spec
    if configuration not in spec.configurations:
        raise UnknownModelError(
            f"{spec.name} has no {configuration!r} configuration",
            f"available: {', '.join(spec.configurations)}")
    return replace(spec, configuration=configuration)


def _unknown(name: str) -> UnknownModelError:
    close = difflib.get_close_matches(name.strip().lower(), _all_names(), n=3, cutoff=0.5)
    families = ", ".join(sorted(_FAMILIES) + sorted(_FIXED))
    hint = f"did you mean {', '.join(close)}?" if close else f"known families: {families}"
    return UnknownModelError(f"unknown model {name!r}", f"{hint} (`toolchain models` lists them)")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3,
                 configuration: str | None = None) -> nn.Module:
    """Build a model by name (random weights)."""
    return resolve(name, configuration).build(num_classes=num_classes, in_channels=in_channels)


def list_models(pattern: str = "*") -> list[ModelSpec]:
    """Every registered variant matching a shell-style pattern; a plain name resolves that model.

    The listed variants are each family's depth configurations at its default width, the fixed
    models, and every model the papers report.
    """
    _ensure_loaded()
    if not any(ch in pattern for ch in "*?["):
        return [resolve(pattern)]
    names = set(_all_names())
    if "bnfirst" in pattern.lower():  # the variants are listed when asked for
        names |= {f"{name}-bnfirst" for name in names if name.split("-")[0] in _FAMILIES
                  and _FAMILIES[name.split("-")[0]].bn_first_variant and _NAME_RE.match(name)}
    specs = [resolve(n) for n in names if fnmatch.fnmatchcase(n, pattern.lower())]
    return sorted(specs, key=lambda s: (s.family, s.layers or 0, s.width or 0, s.version or 0, s.name))


def families() -> dict[str, Family]:
    _ensure_loaded()
    return dict(_FAMILIES)


# --- paper figures ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _paper_table() -> dict[str, tuple[PaperResult, ...]]:
    table: dict[str, list[PaperResult]] = {}
    for filename in ("reported-results.csv", "bluebox2-deployment-results.csv"):
        for row in _read_csv(filename):
            table.setdefault(row["name"], []).append(PaperResult(
                dataset=row["dataset"], accuracy_pct=float(row["accuracy_pct"]),
                size_mb=float(row["size_mb"]), speed_s_per_epoch=float(row["speed_s_per_epoch"]),
                table=row["table"], source=row["source"]))
    return {k: tuple(v) for k, v in table.items()}


def _read_csv(filename: str) -> Iterable[dict[str, str]]:
    text = resources.files("toolchain.models").joinpath("data", filename).read_text()
    return list(csv.DictReader(text.splitlines()))


def _paper_rows() -> list[str]:
    return list(_paper_table())


def reported_results() -> dict[str, tuple[PaperResult, ...]]:
    """Every row of the papers' result tables (Tables 2-5 and 7), by canonical model name, in table order."""
    return dict(_paper_table())


def paper_results(name: str) -> tuple[PaperResult, ...]:
    """The papers' figures for a canonical model name (empty if the papers do not report it)."""
    return _paper_table().get(name, ())


def _ensure_loaded() -> None:
    # The family modules register themselves on import; importing here avoids a cycle.
    from toolchain.models import squeezenet, squeezenext  # noqa: F401

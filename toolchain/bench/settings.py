"""How the agent measures, and the one home of every default: local runs, target profiles, the quick check."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from toolchain.errors import UsageError


@dataclass(frozen=True)
class BenchSettings:
    """How the agent measures (DESIGN.md's protocol); the defaults are those of `toolchain bench --target local`."""

    threads: tuple[int, ...] = (1, 2)
    batch: int = 1
    warmup: int = 20
    runs: int = 200
    min_time_s: float = 0.0

    def validate(self) -> None:
        """Fail with a usage error naming the option if a setting cannot work."""
        if not self.threads or min(self.threads) < 1:
            raise UsageError(f"--threads must be positive integers, got {list(self.threads)}", "e.g. --threads 1,2")
        for option, value in (("--batch", self.batch), ("--runs", self.runs)):
            if value < 1:
                raise UsageError(f"{option} must be at least 1, got {value}", f"pass a positive {option}")
        if self.warmup < 0 or self.min_time_s < 0:
            raise UsageError("--warmup and --min-time must not be negative", "pass 0 or more")

    def with_overrides(self, *, threads: tuple[int, ...] | None = None, batch: int | None = None,
                       warmup: int | None = None, runs: int | None = None,
                       min_time_s: float | None = None) -> "BenchSettings":
        """Plain settings: these, each replaced by the given value where one was given (None keeps it); validated."""
        given = {"threads": tuple(threads) if threads else None, "batch": batch, "warmup": warmup, "runs": runs,
                 "min_time_s": min_time_s}
        base = {item.name: getattr(self, item.name) for item in dataclasses.fields(BenchSettings)}
        settings = BenchSettings(**{**base, **{key: value for key, value in given.items() if value is not None}})
        settings.validate()
        return settings

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["threads"] = list(self.threads)
        return data


@dataclass(frozen=True)
class BenchDefaults(BenchSettings):
    """A target profile's [bench] table: one thread unless it says more, and how long the agent may take there."""

    threads: tuple[int, ...] = (1,)
    timeout: float = 3600.0


LOCAL_DEFAULTS = BenchSettings()
# the pipeline's latency check while exporting, on this machine: one thread, one image a run
QUICK_LATENCY = BenchSettings(threads=(1,), batch=1, warmup=20, runs=200)


def parse_threads(text: str) -> tuple[int, ...]:
    """--threads "1,2" as a tuple of positive integers."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise UsageError(f"--threads must be comma-separated positive integers, got {text!r}", "e.g. --threads 1,2")
    return counts

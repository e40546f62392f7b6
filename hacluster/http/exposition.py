"""The Prometheus text exposition format (version 0.0.4), written by hand.

Why not ``prometheus_client``: its registry is process-global and its collectors are
called on the scraping thread; here every value comes from one snapshot taken on the
daemon's loop, and writing the format is a few lines. The unit tests parse the output
back with ``prometheus_client.parser``.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


class Exposition:
    """Families in the order declared; each family's samples follow its HELP/TYPE.
    A family with no sample is left out (nothing to say, and no empty TYPE line)."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> None:
        if kind not in TYPES:
            raise ValueError(f"unknown metric type {kind!r}")
        if name in self._families:
            raise ValueError(f"metric family {name} declared twice")
        self._families[name] = (kind, help_text, [])

    def sample(self, family: str, value: float, labels: Mapping[str, str] | None = None,
               suffix: str = "") -> None:
        """One sample of ``family`` (declared before); ``suffix`` for a histogram's
        ``_bucket``/``_count``/``_sum`` or a counter's ``_total`` is part of the name."""
        self._families[family][2].append(
            f"{family}{suffix}{_labels(labels or {})} {format_value(value)}")

    def histogram(self, family: str, bounds: Iterable[float], cumulative: Iterable[int],
                  count: int, total: float, labels: Mapping[str, str] | None = None) -> None:
        base = dict(labels or {})
        for bound, n in zip(bounds, cumulative, strict=True):
            self.sample(family, n, {**base, "le": format_value(float(bound))}, "_bucket")
        self.sample(family, count, {**base, "le": "+Inf"}, "_bucket")
        self.sample(family, count, base, "_count")
        self.sample(family, total, base, "_sum")

    def render(self) -> str:
        out = []
        for name, (kind, help_text, samples) in self._families.items():
            if not samples:
                continue
            out.append(f"# HELP {name} {_escape_help(help_text)}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n" if out else ""

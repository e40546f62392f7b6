"""Reports of a chaos run, from its history (plain data, as in history.json).

- ``history.json``: the run as recorded (faults, every client acknowledgement, the
  sampled states of each node, one record per episode with its violations);
- ``summary.md``: per nemesis: episodes, violations, failover and recovery p50/p99,
  then every violation with the episode's seed;
- ``timeline.png``: one band per node coloured by its state, the fault spans shaded
  over all rows, the client's acknowledgements (green) and outages (red). Written with
  zlib alone (a PNG is a few chunks), with a 3x5 pixel font for the labels.

Pure functions over the history, plus ``write_report`` which writes the three files.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLIENT_GAP_S = 0.3   # no acknowledgement for this long while writing counts as an outage


# ---- history ------------------------------------------------------------------------------

def write_history(history: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(history, indent=None, separators=(",", ":")) + "\n")


def load_history(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not a chaos history ({exc})") from None


# ---- summary ------------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank); None for no values."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summarize(history: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per nemesis (per workload: a pg episode's row is "NAME [pg]"), in the
    order of the run."""
    rows = []

    def label(e: dict[str, Any]) -> str:
        w = e.get("workload", "kv")
        return e["nemesis"] if w == "kv" else f"{e['nemesis']} [{w}]"
    for name in dict.fromkeys(label(e) for e in history["episodes"]):
        eps = [e for e in history["episodes"] if label(e) == name]
        failover = [e["failover_s"] for e in eps if e["failover_s"] is not None]
        recovery = [e["recovery_s"] for e in eps if e["recovery_s"] is not None]
        gaps = [e["max_gap_s"] for e in eps if e.get("max_gap_s") is not None]
        rows.append({
            "nemesis": name, "episodes": len(eps),
            "violations": sum(len(e["violations"]) for e in eps),
            "failovers": len(failover),
            "failover_p50_s": percentile(failover, 50), "failover_p99_s": percentile(failover, 99),
            "recovery_p50_s": percentile(recovery, 50), "recovery_p99_s": percentile(recovery, 99),
            "outage_p50_s": percentile(gaps, 50), "outage_max_s": max(gaps) if gaps else None,
            "acked": sum(e["acked"] for e in eps),
            "lab_shape": eps[0].get("lab_shape", "standard"),
        })
    return rows


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_summary(history: dict[str, Any], title: str = "chaos run") -> str:
    rows = summarize(history)
    total = sum(r["violations"] for r in rows)
    lines = [
        f"# {title}", "",
        f"seed {history['seed']}, {history['episodes_per_nemesis']} episode(s) per nemesis, "
        f"hold {history['hold_range_s'][0]:g}-{history['hold_range_s'][1]:g} s, "
        f"recovery bound {history['recovery_bound_s']:g} s, started {history['started']}; "
        f"**{total} violation(s)** in {len(history['episodes'])} episodes, "
        f"{len(history['client'])} acknowledged writes.", "",
        "Failover: from the fault to the first write acknowledged at a newer epoch (only "
        "episodes where the primary changed). Recovery: from the heal to PRIM+SECOND in "
        "sync. Outage: the longest time without an acknowledgement from the fault to "
        "recovery.", "",
        "| nemesis | episodes | violations | failovers | failover p50 s | failover p99 s "
        "| recovery p50 s | recovery p99 s | outage p50 s | outage max s | acked | lab |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['nemesis']} | {r['episodes']} | {r['violations']} | {r['failovers']} "
                     f"| {_s(r['failover_p50_s'])} | {_s(r['failover_p99_s'])} "
                     f"| {_s(r['recovery_p50_s'])} | {_s(r['recovery_p99_s'])} "
                     f"| {_s(r['outage_p50_s'])} | {_s(r['outage_max_s'])} | {r['acked']} "
                     f"| {r['lab_shape']} |")
    bad = [e for e in history["episodes"] if e["violations"]]
    lines += ["", "## Violations", ""]
    if not bad:
        lines.append("None.")
    for e in bad:
        lines.append(f"- episode {e['index']} `{e['nemesis']}` (seed `{e['seed']}`, primary "
                     f"{e['primary_before']}, targets {json.dumps(e['targets'])}):")
        lines += [f"  - {v}" for v in e["violations"]]
    for key, title, intro in (
            ("repaired", "Repairs", "The lab was not healthy at the start of these episodes "
             "(the one before did not recover) and was repaired first:"),
            ("lab_broken", "Labs rebuilt", "These episodes left their lab in a state heal "
             "could not undo; the episodes after them ran on a new lab of the same shape:")):
        listed = [e for e in history["episodes"] if e.get(key)]
        if listed:
            lines += ["", f"## {title}", "", intro, ""]
            lines += [f"- episode {e['index']} `{e['nemesis']}`: {e[key]}" for e in listed]
    lines += ["", "## Episodes", "",
              "| # | nemesis | targets | hold s | primary | epoch | failover s | recovery s "
              "| acked | violations |", "|---:|---|---|---:|---|---|---:|---:|---:|---:|"]
    for e in history["episodes"]:
        prim = f"{e['primary_before']} → {e['primary_after'] or '?'}"
        epoch = f"{e['epoch_before']} → {e['epoch_after'] if e['epoch_after'] is not None else '?'}"
        lines.append(f"| {e['index']} | {e['nemesis']} | {json.dumps(e['targets'])} "
                     f"| {e['hold_s']:.2f} | {prim} | {epoch} | {_s(e['failover_s'])} "
                     f"| {_s(e['recovery_s'])} | {e['acked']} | {len(e['violations'])} |")
    return "\n".join(lines) + "\n"


# ---- PNG ----------------------------------------------------------------------------------

def encode_png(width: int, height: int, rgb: bytes | bytearray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (rows top to bottom, 3 bytes per pixel)."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"pixel buffer is {len(rgb)} bytes, expected {width}x{height}x3")
    stride = width * 3
    raw = b"".join(b"\x00" + bytes(rgb[y * stride:(y + 1) * stride]) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, rgb) of a PNG written by ``encode_png`` (filter 0 only)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * 3 + 1
    if any(raw[y * stride] != 0 for y in range(height)):
        raise ValueError("PNG uses a row filter other than 0")
    return width, height, b"".join(raw[y * stride + 1:(y + 1) * stride] for y in range(height))


# 3x5 glyphs, rows top to bottom, "1" = ink.
_FONT = {
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011",
    "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111",
    "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010",
    "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111",
    "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", "0": "111101101101111",
    "1": "010110010010111", "2": "110001010100111", "3": "110001010001110",
    "4": "101101111001001", "5": "111100110001110", "6": "011100111101111",
    "7": "111001010010010", "8": "111101111101111", "9": "111101111001110",
    "-": "000000111000000", ".": "000000000000010", ":": "000010000010000",
    "/": "001001010100100", "_": "000000000000111", "+": "000010111010000",
    "=": "000111000111000", "(": "010100100100010", ")": "010001001001010",
    " ": "000000000000000",
}

STATE_COLOURS = {
    "PRIM": (40, 170, 60), "ALONE": (240, 150, 30), "SECOND": (50, 110, 220),
    "WAIT": (225, 205, 50), "STOP": (150, 150, 150), "DOWN": (30, 30, 30),
    "UP": (60, 170, 170),
}
UNKNOWN = (255, 255, 255)
FAULT = (220, 40, 40)
OK_TICK = (30, 150, 50)
FAIL_TICK = (210, 30, 30)
WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (225, 225, 225)


class Canvas:
    def __init__(self, width: int, height: int, bg: tuple[int, int, int] = WHITE) -> None:
        self.width, self.height = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int],
             alpha: float = 1.0) -> None:
        """Fill [x0, x1) x [y0, y1), blended over what is there by ``alpha``."""
        x0, x1 = max(0, x0), min(self.width, x1)
        y0, y1 = max(0, y0), min(self.height, y1)
        if x0 >= x1:
            return
        if alpha >= 1.0:
            row = bytes(colour) * (x1 - x0)
            for y in range(y0, y1):
                i = (y * self.width + x0) * 3
                self.px[i:i + len(row)] = row
            return
        for y in range(y0, y1):
            for x in range(x0, x1):
                i = (y * self.width + x) * 3
                for k in range(3):
                    self.px[i + k] = round(self.px[i + k] * (1 - alpha) + colour[k] * alpha)

    def text(self, x: int, y: int, s: str, colour: tuple[int, int, int] = BLACK,
             scale: int = 2) -> int:
        """Draw ``s`` (upper-cased; unknown characters as blanks); returns the end x."""
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for k, bit in enumerate(glyph):
                if bit == "1":
                    gx, gy = x + (k % 3) * scale, y + (k // 3) * scale
                    self.rect(gx, gy, gx + scale, gy + scale, colour)
            x += 4 * scale
        return x

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * self.width + x) * 3
        return tuple(self.px[i:i + 3])

    def png(self) -> bytes:
        return encode_png(self.width, self.height, self.px)


def _state_colour(state: str, ready: str) -> tuple[int, int, int]:
    c = STATE_COLOURS.get(state, UNKNOWN)
    if ready == "Transient":       # lighter: on its way to that state
        c = tuple(round(v * 0.5 + 255 * 0.5) for v in c)
    return c


def client_outages(history: dict[str, Any], gap_s: float = CLIENT_GAP_S) -> list[tuple[float, float]]:
    """Spans longer than ``gap_s`` without an acknowledgement, inside each episode's
    writing period (between episodes no one writes)."""
    by_episode: dict[str, list[float]] = {}
    for key, _v, _n, _e, _ts, t_acked in history["client"]:
        by_episode.setdefault(key.split("-", 1)[0], []).append(t_acked)
    spans = []
    for times in by_episode.values():
        times.sort()
        spans += [(a, b) for a, b in zip(times, times[1:]) if b - a > gap_s]
    return sorted(spans)


LEFT, ROW_H, ROW_GAP, TOP = 60, 22, 6, 34


def render_timeline(history: dict[str, Any], px_per_s: float = 10.0,
                    max_width: int = 4000) -> Canvas:
    """The run as a picture: rows for each node's state, the client, fault spans."""
    t0, t_end = history["t0"], history["t_end"]
    duration = max(1.0, t_end - t0)
    plot_w = max(1000, min(max_width - LEFT - 10, int(duration * px_per_s)))
    scale = plot_w / duration
    nodes = list(history.get("sampled") or dict.fromkeys(c["node"] for c in history["states"]))
    rows = [*nodes, "client"]
    height = TOP + len(rows) * (ROW_H + ROW_GAP) + 70
    cv = Canvas(LEFT + plot_w + 10, height)

    def x(t: float) -> int:
        return LEFT + int((t - t0) * scale)

    def row_y(i: int) -> int:
        return TOP + i * (ROW_H + ROW_GAP)

    # time axis: a grid line and a label at least 50 px apart
    step = next((s for s in (5, 10, 30, 60, 120, 300, 600) if s * scale >= 50), 1800)
    bottom = row_y(len(rows))
    for s in range(0, int(duration) + 1, step):
        cv.rect(x(t0 + s), TOP - 4, x(t0 + s) + 1, bottom, GRID)
        cv.text(x(t0 + s) + 2, bottom + 2, f"{s}S", scale=1)
    # states: each change lasts until the node's next change
    for i, node in enumerate(nodes):
        cv.text(4, row_y(i) + 6, node)
        changes = [c for c in history["states"] if c["node"] == node]
        for c, nxt in zip(changes, [*changes[1:], None]):
            end = nxt["t"] if nxt else t_end
            cv.rect(x(c["t"]), row_y(i), max(x(end), x(c["t"]) + 1), row_y(i) + ROW_H,
                    _state_colour(c["state"], c["ready"]))
    # the client: red outages, green ticks where writes were acknowledged
    ci = len(nodes)
    cv.text(4, row_y(ci) + 6, "C")
    for a, b in client_outages(history):
        cv.rect(x(a), row_y(ci), max(x(b), x(a) + 1), row_y(ci) + ROW_H, FAIL_TICK)
    acked_cols = {x(rec[5]) for rec in history["client"]}
    for col in acked_cols:
        cv.rect(col, row_y(ci) + 4, col + 1, row_y(ci) + ROW_H - 4, OK_TICK)
    # faults: shaded from the fault to the heal, named above the rows
    for e in history["episodes"]:
        if e["t_fault"] is None:
            continue
        a, b = x(e["t_fault"]), max(x(e["t_heal"] or t_end), x(e["t_fault"]) + 2)
        cv.rect(a, TOP - 4, b, bottom, FAULT, alpha=0.25)
        label = f"{e['index']} {e['nemesis']}" + (" !" if e["violations"] else "")
        cv.text(a, 4 + (e["index"] % 2) * 12, label, FAULT if e["violations"] else BLACK, scale=1)
    # legend
    lx, ly = LEFT, bottom + 16
    for name, colour in [*STATE_COLOURS.items(), ("ACK", OK_TICK), ("OUTAGE", FAIL_TICK)]:
        cv.rect(lx, ly, lx + 12, ly + 12, colour)
        lx = cv.text(lx + 16, ly + 1, name) + 12
    cv.rect(lx, ly, lx + 12, ly + 12, FAULT, alpha=0.25)
    cv.text(lx + 16, ly + 1, "FAULT")
    cv.text(LEFT, ly + 22, f"SEED {history['seed']}  LIGHTER = TRANSIENT", scale=1)
    return cv


def write_report(history: dict[str, Any], out_dir: Path, title: str = "chaos run") -> dict[str, Path]:
    """history.json, summary.md, summary.json (the table as data, for
    bench/results/chaos.json) and timeline.png in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"history": out_dir / "history.json", "summary": out_dir / "summary.md",
             "summary_json": out_dir / "summary.json", "timeline": out_dir / "timeline.png"}
    write_history(history, paths["history"])
    rows = summarize(history)
    paths["summary_json"].write_text(json.dumps({
        "seed": history["seed"], "episodes_per_nemesis": history["episodes_per_nemesis"],
        "episodes": len(history["episodes"]), "violations": sum(r["violations"] for r in rows),
        "measured": history["started"], "nemeses": rows}, indent=2) + "\n")
    paths["summary"].write_text(render_summary(history, title))
    paths["timeline"].write_bytes(render_timeline(history).png())
    return paths


# How much of each log an episode with violations keeps (the end: where it went wrong).
LOG_TAIL_BYTES = 4 << 20


def keep_logs(workdir: Path, dest: Path, tail_bytes: int = LOG_TAIL_BYTES) -> int:
    """Copy the last ``tail_bytes`` of every ``*.log`` under ``workdir`` (daemons,
    modules, mounts, receivers, scripts, writers) to ``dest``, same relative
    paths; returns how many. Best effort: a file that vanished is skipped."""
    n = 0
    for path in sorted(workdir.rglob("*.log")):
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - tail_bytes))
                data = f.read()
        except OSError:
            continue
        target = dest / path.relative_to(workdir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        n += 1
    return n

"""Client side of the kvapp: a writer that records every acknowledged write and every
answer, read-back helpers, a health poller, and the failover-gap arithmetic.

Times are ``time.monotonic()``; CLOCK_MONOTONIC is machine-wide, so times printed by a
poller inside a lab namespace compare directly with the caller's.

``python -m chaos.kv_workload poll --url URL`` prints one JSON line per successful
``/health`` answer: ``{"t": ..., "node": ..., "epoch": ...}``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Sequence
from urllib.parse import quote, urlsplit

log = logging.getLogger("chaos.kv_workload")


@dataclass(frozen=True)
class Ack:
    key: str
    value: str
    node: str
    epoch: int
    t_sent: float
    t_acked: float


@dataclass(frozen=True)
class Failure:
    key: str
    t: float
    error: str


Answer = tuple[float, str, int]  # (t, node, epoch)


class RequestError(Exception):
    """A request got no usable 200 answer (connection error, timeout, HTTP error)."""


def _split(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"base_url must be http://HOST[:PORT], got {base_url!r}")
    return parts.hostname, parts.port or 80


def request_json(base_url: str, method: str, path: str, body: bytes | None = None,
                 timeout: float = 1.0, connect_timeout: float | None = None) -> tuple[int, dict]:
    """One request on a fresh connection (a kept-alive one would stick to a dead primary).
    Returns (status, JSON body); raises RequestError on transport or decoding errors."""
    host, port = _split(base_url)
    conn = http.client.HTTPConnection(host, port, timeout=connect_timeout or timeout)
    try:
        conn.connect()
        conn.sock.settimeout(timeout)
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            raise RequestError(f"{method} {path}: HTTP {resp.status}, body is not JSON") from None
    except (OSError, http.client.HTTPException) as exc:
        raise RequestError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def _kv_path(key: str) -> str:
    return "/kv/" + quote(key, safe="")


class KvWriter:
    """Writes ``<prefix>-000001``, ``<prefix>-000002``, ... one after the other; a failed
    write is retried with the same key and value (PUT is idempotent), so a record that
    was maybe written is resent until it is acknowledged."""

    def __init__(self, base_url: str, prefix: str = "rec", timeout: float = 1.0,
                 retry_delay_s: float = 0.01,
                 on_ack: Callable[[Ack], None] | None = None) -> None:
        """``on_ack``: called with every acknowledged write, in order (from the
        writer's thread), e.g. to stream the history out of a lab host."""
        _split(base_url)
        self.on_ack = on_ack
        self.base_url = base_url
        self.prefix = prefix
        self.timeout = timeout
        self.retry_delay_s = retry_delay_s
        self._acks: list[Ack] = []
        self._failures: list[Failure] = []
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def acks(self) -> list[Ack]:
        with self._lock:
            return list(self._acks)

    @property
    def failures(self) -> list[Failure]:
        with self._lock:
            return list(self._failures)

    @property
    def answers(self) -> list[Answer]:
        with self._lock:
            return list(self._answers)

    def start(self) -> KvWriter:
        if self._thread is not None:
            raise RuntimeError("KvWriter already started")
        self._thread = threading.Thread(target=self._run, name=f"kv-writer-{self.prefix}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout * 2 + 5)

    def write_one(self, key: str, value: str) -> Ack | None:
        """One PUT attempt, recorded as an Ack (returned) or a Failure (None returned)."""
        t_sent = time.monotonic()
        try:
            status, body = request_json(self.base_url, "PUT", _kv_path(key),
                                        value.encode(), timeout=self.timeout)
            if status != 200 or body.get("ok") is not True:
                raise RequestError(f"PUT {key}: HTTP {status}: {body.get('error', body)}")
            ack = Ack(key, value, str(body["node"]), int(body["epoch"]), t_sent,
                      time.monotonic())
        except (RequestError, KeyError, TypeError, ValueError) as exc:
            with self._lock:
                self._failures.append(Failure(key, time.monotonic(), str(exc)))
                if not self._down:  # log outages, not every retry
                    self._down = True
                    log.info("event=kv_write_failing url=%s key=%s error=%r",
                             self.base_url, key, str(exc))
            return None
        with self._lock:
            self._acks.append(ack)
            self._answers.append((ack.t_acked, ack.node, ack.epoch))
            if self._down:
                self._down = False
                log.info("event=kv_write_recovered url=%s key=%s node=%s epoch=%d",
                         self.base_url, key, ack.node, ack.epoch)
        if self.on_ack is not None:
            self.on_ack(ack)
        return ack

    def _run(self) -> None:
        n = 1
        while not self._stop.is_set():
            key = f"{self.prefix}-{n:06d}"
            value = f"v{n}-{secrets.token_hex(4)}"
            while self.write_one(key, value) is None:
                if self._stop.wait(self.retry_delay_s):
                    return
            n += 1


def read_all(base_url: str, keys: Iterable[str], timeout: float = 1.0, attempts: int = 3,
             answers: list[Answer] | None = None) -> dict[str, str | None]:
    """GET every key: its value, or None when the server says 404. A key that cannot be
    read at all raises RequestError (unreadable is not the same as lost).
    ``answers``, if given, receives (t, node, epoch) of every successful answer."""
    result: dict[str, str | None] = {}
    for key in keys:
        for attempt in range(attempts):
            try:
                status, body = request_json(base_url, "GET", _kv_path(key), timeout=timeout)
                if status not in (200, 404):
                    raise RequestError(f"GET {key}: HTTP {status}: {body.get('error', body)}")
                break
            except RequestError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05)
        if answers is not None and "node" in body:
            answers.append((time.monotonic(), str(body["node"]), int(body["epoch"])))
        result[key] = body.get("value") if status == 200 else None
    return result


def wait_answer(base_url: str, timeout: float = 10.0, interval_s: float = 0.05) -> dict:
    """The first /health answer (a dict with node, epoch, records); TimeoutError naming
    the URL and the last error if none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        try:
            status, body = request_json(base_url, "GET", "/health",
                                        timeout=min(1.0, max(0.05, timeout)))
            if status == 200:
                return body
            last = f"HTTP {status}"
        except RequestError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from {base_url}/health within {timeout} s ({last})")
        time.sleep(interval_s)


def failover_gap(answers: Sequence[Answer], t_fault: float) -> float | None:
    """Seconds from t_fault to the first answer with an epoch above the highest epoch
    answered before t_fault; None if there was no answer before or none after."""
    before = [epoch for t, _node, epoch in answers if t <= t_fault]
    if not before:
        return None
    old = max(before)
    after = sorted(t for t, _node, epoch in answers if t > t_fault and epoch > old)
    return after[0] - t_fault if after else None


def poll(base_url: str, interval_s: float, timeout: float, connect_timeout: float,
         out: IO[str], stop: threading.Event | None = None) -> None:
    """Probe /health every interval_s; one JSON line per successful answer, flushed."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            status, body = request_json(base_url, "GET", "/health", timeout=timeout,
                                        connect_timeout=connect_timeout)
            if status == 200:
                out.write(json.dumps({"t": time.monotonic(), "node": body.get("node"),
                                      "epoch": body.get("epoch")}) + "\n")
                out.flush()
        except RequestError:
            pass
        stop.wait(interval_s)


def parse_poll_output(text: str) -> list[Answer]:
    """Answers from a poller's output, skipping lines that are not its JSON."""
    answers = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
            answers.append((float(rec["t"]), str(rec["node"]), int(rec["epoch"])))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
    return answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.kv_workload")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("poll", help="print one JSON line per /health answer")
    pp.add_argument("--url", required=True, help="http://HOST:PORT")
    pp.add_argument("--interval", type=float, default=0.02)
    pp.add_argument("--timeout", type=float, default=1.0, help="read timeout, seconds")
    pp.add_argument("--connect-timeout", type=float, default=0.1)
    args = p.parse_args(argv)
    try:
        _split(args.url)
    except ValueError as exc:
        p.error(str(exc))
    try:
        poll(args.url, args.interval, args.timeout, args.connect_timeout, sys.stdout)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

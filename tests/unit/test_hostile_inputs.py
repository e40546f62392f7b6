"""Hostile input to the parsers (issue 17, item 5): every one gets the project's
own one-line error naming what and where, never an uncaught exception.

The hypothesis tests are bounded (max_examples) so they stay in `make test`."""
import io
import struct
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkers.failover_rules import MAX_DEPTH, FailoverRulesError, RuleEngine, fired, parse_rules
from hacluster.modules.package import MAX_MEMBERS, ModulePackageError, check
from hacluster.modules.userconfig import UserConfigError, parse_userconfig
from tests.unit.test_module_package import good_members, zip_of
from tests.unit.test_userconfig import SAFEKIT_MIRROR, mirror

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line(error: Exception) -> str:
    text = str(error)
    assert text and "\n" not in text and len(text) < 600, text
    return text


# ---- userconfig.xml -----------------------------------------------------------------------
@pytest.mark.parametrize("data, expected", [
    (b'<?xml version="1.0" encoding="x-no-such-codec"?>\n<safe/>',
     "f.xml:1: xml: unknown encoding: x-no-such-codec (use UTF-8)"),
    (b'<?xml version="1.0" encoding="utf-32"?>\n<safe/>',
     "f.xml:1: xml: multi-byte encodings are not supported (use UTF-8)"),
    (mirror(body='<rfs reintegration_bandwidth="' + "9" * 400 + 'G"><replicated dir="/d"/></rfs>'),
     "f.xml:5: rfs@reintegration_bandwidth: "),
    (mirror(body='<heart pulse="' + "9" * 400 + '"/>'), "f.xml:5: heart@pulse: "),
    (mirror('loop_interval="' + "9" * 30 + 'h"'), "f.xml:3: service@loop_interval: "),
])
def test_encodings_and_huge_numbers_get_a_one_line_error(data, expected):
    with pytest.raises(UserConfigError) as e:
        parse_userconfig(data, "f.xml", "m")
    assert one_line(e.value).startswith(expected)


_VALUES = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-10**40, max_value=10**400).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e999", "inf", "nan", "-0", "9" * 5000, "0x10", "1_000", "١٢", "1.5.5",
                     "10.0.0.1", "::1", "on", "off", "prim", "both", "restart", "tcp.t == down"]),
)


@FUZZ
@given(st.data())
def test_fuzzed_userconfig_gets_only_the_projects_error(data):
    text = SAFEKIT_MIRROR
    # Replace some attribute values, then maybe cut or splice bytes.
    quoted = [i for i, b in enumerate(text) if b == ord('"')]
    for _ in range(data.draw(st.integers(0, 4))):
        k = data.draw(st.integers(0, len(quoted) // 2 - 1))
        start, end = quoted[2 * k], quoted[2 * k + 1]
        value = data.draw(_VALUES).replace('"', "").replace("&", "").replace("<", "")
        text = text[:start + 1] + value.encode("utf-8", "surrogatepass") + text[end:]
        quoted = [i for i, b in enumerate(text) if b == ord('"')]
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(0, len(text)))
        text = text[:pos] + data.draw(st.binary(max_size=20)) + text[pos + data.draw(st.integers(0, 5)):]
    if data.draw(st.booleans()):
        text = (b'<?xml version="1.0" encoding="' + data.draw(st.sampled_from(
            [b"utf-8", b"latin-1", b"x-bogus", b"utf-32", b"", b"rot13", b"utf-7"])) + b'"?>\n' + text)
    try:
        parse_userconfig(text, "f.xml", "m")
    except UserConfigError as e:
        assert one_line(e).startswith("f.xml:")


# ---- failover rules -------------------------------------------------------------------------
def test_a_long_chain_is_refused_at_parse_time_and_what_parses_evaluates():
    # The old parser took a 2000-term chain and evaluation then hit RecursionError:
    # the rule parsed, passed the package check, and never fired.
    chain = " || ".join(["tcp.t == down"] * 2000)
    with pytest.raises(FailoverRulesError, match=f"nested more than {MAX_DEPTH}"):
        parse_rules(f"if ({chain}) then wait();")
    longest = " || ".join(["tcp.t == down"] * MAX_DEPTH)
    assert fired(parse_rules(f"x: if ({longest}) then wait();"), {"tcp.t": "down"}) == [("x", "wait")]


@pytest.mark.parametrize("text", [
    "if (" + "!" * 5000 + "tcp.t == down) then wait();",
    "if (" + "(" * 5000 + "tcp.t == down" + ")" * 5000 + ") then wait();",
    "if (" + "!(" * 3000 + "tcp.t == down" + ")" * 3000 + ") then wait();",
])
def test_deep_nesting_is_a_rule_error_not_a_recursion_error(text):
    with pytest.raises(FailoverRulesError) as e:
        parse_rules(text)
    assert one_line(e.value).startswith("<failover> line 1: condition nested more than")


def test_deep_rules_in_a_userconfig_get_its_error():
    chain = " || ".join(["tcp.t == down"] * 500)
    body = (f'<check><tcp ident="t"><to addr="127.0.0.1" port="80"/></tcp></check>'
            f"<failover>if ({chain}) then wait();</failover>")
    with pytest.raises(UserConfigError) as e:
        parse_userconfig(mirror(body=body), "f.xml", "m")
    assert one_line(e.value).startswith("f.xml:5: failover: condition nested more than")


_RULE_TOKENS = st.sampled_from([
    "if", "(", ")", "then", "wait", "restart", "swap", "()", ";", "!", "&&", "||", "tcp.a",
    "ping.?", "ip.x", "bogus.y", "==", "!=", "down", "up", "init", "success", "lbl", ":", "\n",
    "# c\n", " ", "x", "1", "$", "tcp.", "."])
_VALUE_MAPS = st.dictionaries(st.sampled_from(["tcp.a", "ping.g", "ip.x", "intf.e"]),
                              st.sampled_from(["up", "down", "init"]), max_size=4)


@FUZZ
@given(st.lists(_RULE_TOKENS, max_size=60), st.integers(0, 400), _VALUE_MAPS)
def test_fuzzed_rules_parse_and_evaluate_or_get_a_rule_error(tokens, nesting, values):
    # Random token soup, wrapped in random nesting: either a FailoverRulesError, or
    # rules that evaluate.
    text = "if (" + "(" * nesting + " ".join(tokens) + ")" * nesting + ") then wait();"
    for candidate in (" ".join(tokens), text):
        try:
            rules = parse_rules(candidate)
        except FailoverRulesError as e:
            assert one_line(e).startswith("<failover> line ")
            continue
        fired(rules, values)
        RuleEngine(rules).update(values)


# ---- .safe packages -------------------------------------------------------------------------
def _package() -> bytes:
    return zip_of(good_members() + [("bin/common.sh", b"APP=1\n" * 200)])


def test_corrupt_deflate_data_is_a_package_error():
    data = bytearray(_package())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("bin/common.sh")
    # The member's compressed bytes start after its local header (30 + name + extra).
    name_len, extra_len = struct.unpack_from("<2H", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    data[start:start + 4] = b"\xff\xff\xff\xff"
    with pytest.raises(ModulePackageError) as e:
        check(bytes(data), "p.safe", "webapp")
    assert one_line(e.value).startswith("p.safe: bin/common.sh: unreadable")


def test_patched_data_flag_is_refused_up_front():
    data = bytearray(_package())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("bin/common.sh")
    # General purpose flag bit 5 ("compressed patched data") in the local header and
    # the central directory: zipfile raises NotImplementedError when it opens one.
    struct.pack_into("<H", data, info.header_offset + 6, 0x20)
    for pos in _central_entries(bytes(data)):
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46:pos + 46 + name_len] == b"bin/common.sh":
            struct.pack_into("<H", data, pos + 8, 0x20)
    with pytest.raises(ModulePackageError) as e:
        check(bytes(data), "p.safe", "webapp")
    assert one_line(e.value) == ("p.safe: bin/common.sh: patched or strongly encrypted members "
                                 "are not accepted")


def _central_entries(data: bytes) -> list[int]:
    out, pos = [], data.find(b"PK\x01\x02")
    while pos >= 0:
        out.append(pos)
        pos = data.find(b"PK\x01\x02", pos + 4)
    return out


def _many_entries(n: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(n):
            zf.writestr(f"f{i}", b"")
    return buffer.getvalue()


def test_entry_count_is_checked_before_the_central_directory_is_read(monkeypatch):
    data = _many_entries(MAX_MEMBERS + 1)
    # zipfile must not be asked to build its entries at all.
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents",
                        lambda self: pytest.fail("zipfile read the central directory"))
    with pytest.raises(ModulePackageError, match=f"{MAX_MEMBERS + 1} members is over the limit"):
        check(data, "p.safe", "webapp")


def test_an_entry_count_that_lies_is_caught_by_counting(monkeypatch):
    data = bytearray(_many_entries(MAX_MEMBERS + 1))
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<2H", data, eocd + 8, 1, 1)  # "1 entry" on this disk and in total
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents",
                        lambda self: pytest.fail("zipfile read the central directory"))
    with pytest.raises(ModulePackageError, match=f"over {MAX_MEMBERS} members in the central"):
        check(bytes(data), "p.safe", "webapp")


@FUZZ
@given(st.data())
def test_fuzzed_packages_get_only_the_projects_error(data):
    raw = bytearray(_package() if data.draw(st.booleans()) else
                    zip_of(good_members(), compress=zipfile.ZIP_STORED))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "splice", "word"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[pos:pos + data.draw(st.integers(1, 64))]
        elif op == "splice":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
        elif pos + 4 <= len(raw):
            raw[pos:pos + 4] = struct.pack("<I", data.draw(st.sampled_from(
                [0, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 1, 46, MAX_MEMBERS + 1])))
        if not raw:
            break
    try:
        check(bytes(raw), "p.safe", "webapp")
    except ModulePackageError as e:
        assert one_line(e).startswith("p.safe: ")

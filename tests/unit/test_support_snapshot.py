"""hacluster/node/support_snapshot.py: what a snapshot takes and never takes, how a
credential is kept out of a file, the archive's name, manifest and summary line."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hacluster.node import support_snapshot as plan


@pytest.mark.parametrize("name", ["secret", "raft_secret", "tls.key", "server.pem", "api_token",
                                  "credentials.json", "id_rsa", "Password.txt", "cert.crt"])
def test_a_file_named_like_a_secret_is_never_taken(name):
    taken, why = plan.config_file_decision(name)
    assert not taken and "named like a secret or a key" in why


def test_only_the_cluster_configuration_and_the_hooks_are_taken():
    assert plan.config_file_decision("cluster.json") == (True, plan.CONFIG_FILES["cluster.json"])
    assert plan.config_file_decision("hooks.json")[0]
    taken, why = plan.config_file_decision("notes.txt")
    assert not taken and "not a hacluster configuration file" in why


def test_password_like_user_variables_are_masked_and_the_others_kept():
    xml = ('<user>\n  <var name="PORT" value="8080"/>\n  <var value="hunter2" name="DB_PASSWORD"/>\n'
           "  <var name='API_TOKEN'\n       value='t0k3n'/>\n  <var name=\"MONKEY\" value=\"banana\"/>\n</user>")
    masked, count = plan.mask_userconfig(xml)
    assert count == 3       # DB_PASSWORD, API_TOKEN and MONKEY (a "key": better safe)
    assert "hunter2" not in masked and "t0k3n" not in masked and "banana" not in masked
    assert '<var name="PORT" value="8080"/>' in masked
    assert f'<var value="{plan.MASKED}" name="DB_PASSWORD"/>' in masked


def test_urls_lose_their_user_and_password_and_a_hook_url_its_path():
    text = '{"url": "https://bot:s3cret@hooks.example:8443/services/T0/B1/XYZ?k=v", "x": "ftp://u@h/p"}'
    kept, n = plan.mask_urls(text)
    assert n == 2 and "s3cret" not in kept and "bot" not in kept
    assert f"https://{plan.MASKED}@hooks.example:8443/services/T0/B1/XYZ?k=v" in kept
    hooks, n = plan.mask_urls(text, keep_path=False)
    assert f'"https://{plan.MASKED}@hooks.example:8443/{plan.MASKED}"' in hooks
    assert "XYZ" not in hooks and "k=v" not in hooks


def test_redact_replaces_every_occurrence_longest_secret_first():
    data = b"a=SECRET-LONG b=SECRET c=SECRETSECRET"
    out, n = plan.redact(data, ["SECRET", "SECRET-LONG", ""])
    assert n == 4
    assert b"SECRET" not in out


@settings(max_examples=300, deadline=None)
@given(secrets=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12)
                        | st.sampled_from(["redacted", "(r", "l)", "a cluster"]).map(lambda s: s),
                        min_size=1, max_size=3),
       pieces=st.lists(st.binary(max_size=20), max_size=6), data=st.data())
def test_no_secret_survives_redaction(secrets, pieces, data):
    # secrets in the data, repeated, next to each other, even inside the replacement text
    chunks = [*pieces, *(s.encode() for s in secrets * 2), plan.REDACTED[:5], plan.REDACTED[-5:]]
    blob = b"".join(data.draw(st.permutations(chunks)))
    out, n = plan.redact(blob, secrets)
    assert not any(s.encode() in out for s in secrets)
    assert n >= len(secrets)


@pytest.mark.parametrize("path,ok", [("config/cluster.json", True), ("modules/m-1/logs/a.log", True),
                                     ("../x", False), ("/etc/passwd", False), ("a//b", False),
                                     ("a/./b", False), ("a b", False), ("", False)])
def test_part_paths_are_plain_and_relative(path, ok):
    assert plan.valid_part_path(path) is ok


def test_the_default_name_says_cluster_node_and_utc_time():
    assert plan.default_file_name("prod", "n1", 1765056778.9) == \
        "hacluster-snapshot-prod-n1-20251206T213258Z.tar.gz"
    assert plan.default_file_name("a/b c", "", 0) == "hacluster-snapshot-a_b_c-_-19700101T000000Z.tar.gz"


def test_the_manifest_lists_each_node_s_files_under_its_folder_and_the_unreachable():
    parts = {"n1": {"files": [{"path": "versions.json", "size": 10, "what": "versions"}],
                    "skipped": [{"path": "config/secret", "what": "secret", "reason": "named like a secret"}]},
             "n3": {"files": [], "skipped": [], "built_by": "cli", "note": "no daemon answered"}}
    m = plan.archive_manifest(cluster="c", made_on="n1", created="2026-12-06T21:32:58Z", version="1.0",
                              command=["hacluster", "-H", "all", "snapshot"], parts=parts,
                              missing={"n2": "node at 10.0.0.2:7403: no answer within 3 s"},
                              anonymized=None)
    assert m["files"] == [{"path": "nodes/n1/versions.json", "size": 10, "what": "versions"}]
    assert m["skipped"] == [{"path": "nodes/n1/config/secret", "what": "secret",
                             "reason": "named like a secret"}]
    assert m["unreachable"] == ["n2"]
    assert m["nodes"] == {
        "n1": {"included": True, "files": 1, "bytes": 10, "built_by": "daemon"},
        "n2": {"included": False, "unreachable": True, "reason": "node at 10.0.0.2:7403: no answer within 3 s"},
        "n3": {"included": True, "files": 0, "bytes": 0, "built_by": "cli", "note": "no daemon answered"}}
    assert m["anonymized"] is False and m["command"] == "hacluster -H all snapshot"
    assert plan.summary_line("/tmp/s.tar.gz", 3 << 20, m) == \
        "wrote /tmp/s.tar.gz (3.0 MiB): nodes n1, n3; unreachable n2"


def test_sizes_for_people():
    assert [plan.human_size(n) for n in (0, 1023, 1024, 5 << 20, 3 << 30)] == \
        ["0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 GiB"]

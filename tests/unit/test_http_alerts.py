"""The shipped alert rules (hacluster/http/alerts.yml) load as Prometheus rule groups
and name only metrics that /metrics exports."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

import hacluster.http
from hacluster.http import metrics

RULES = Path(hacluster.http.__file__).parent / "alerts.yml"
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def exported(name: str) -> bool:
    if name in metrics.NAMES:
        return True
    histograms = {n for n, kind, _ in metrics.FAMILIES if kind == "histogram"}
    return any(name == h + suffix for h in histograms for suffix in HISTOGRAM_SUFFIXES)


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_rules_parse_as_rule_groups():
    doc = yaml.safe_load(RULES.read_text())
    assert [g["name"] for g in doc["groups"]] == ["hacluster"]
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for r in rules():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
        assert isinstance(r["expr"], str) and r["expr"].strip()
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]
        if "for" in r:
            assert re.fullmatch(r"\d+[smh]", r["for"])
        assert r["expr"].count("(") == r["expr"].count(")")


def test_the_asked_for_alerts_are_there():
    names = {r["alert"] for r in rules()}
    assert {"HaclusterQuorumLost", "HaclusterModuleAlone", "HaclusterReintegrationStuck",
            "HaclusterLeaseRenewalsSlow"} <= names


def test_every_metric_named_is_exported():
    named = {n for r in rules() for n in re.findall(r"\bhacluster_[a-z_]+", r["expr"])}
    assert named, "no metric named at all"
    assert sorted(n for n in named if not exported(n)) == []


def test_the_check_would_see_a_metric_that_is_not_exported():
    assert not exported("hacluster_module_lag_seconds")
    assert exported("hacluster_raft_lease_renewal_seconds_bucket")

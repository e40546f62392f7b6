"""Failure detectors that report resources up/down; they take no decisions."""

"""Slice: ship a submitted order."""

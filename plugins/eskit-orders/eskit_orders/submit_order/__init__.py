"""Slice: submit a draft order."""

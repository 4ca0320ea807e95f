"""Slice: add a product line to a draft order."""

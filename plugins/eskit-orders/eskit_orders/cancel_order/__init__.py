"""Slice: cancel an order that has not shipped."""

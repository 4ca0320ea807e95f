"""Slice: create an order for a customer."""

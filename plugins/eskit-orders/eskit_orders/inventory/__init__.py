"""Slice: stock per product, restocked by hand and reserved by submitted orders."""

"""Use cases: store, retrieve, delete, change feed, background cleanup. Async; storage via seams."""

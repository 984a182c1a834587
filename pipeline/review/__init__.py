"""Levels of automation and the human review queue (docs/review.md)."""

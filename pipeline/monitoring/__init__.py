"""Monitoring in production: a baseline profile of per-segment features and drift against it."""

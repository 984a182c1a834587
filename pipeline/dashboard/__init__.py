"""The live dashboard's data: figures from ``/metrics``, the deploy state and drift, in one snapshot."""

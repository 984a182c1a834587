"""speechpipe stages: pure, synchronous processing (arrays in, dataclasses out)."""

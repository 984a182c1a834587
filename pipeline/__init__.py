"""speechpipe pipeline: orchestration, I/O, config and CLI."""

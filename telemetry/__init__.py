"""speechpipe telemetry: OpenTelemetry setup, names, features, evaluation."""

"""A minimal in-process OTLP receiver (HTTP and gRPC) that decodes what it gets with opentelemetry-proto.

It accepts exactly what a collector such as Jaeger would receive, keeps the decoded requests in
memory, and answers success. Tests and ``benchmarks/telemetry_overhead.py`` use it to check and to
load the real export path without a collector; it binds to 127.0.0.1 only.

    with OtlpHttpReceiver() as rx:
        ...  # export to rx.endpoint
        spans = rx.spans()
"""

from __future__ import annotations

import gzip
import threading
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

HOST = "127.0.0.1"


def any_value(v: AnyValue) -> Any:
    """The Python value of an OTLP ``AnyValue``."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attributes(kvs) -> dict[str, Any]:
    """OTLP ``KeyValue`` list -> dict."""
    return {kv.key: any_value(kv.value) for kv in kvs}


class OtlpReceiver:
    """Decoded export requests, as received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.content_types: set[str] = set()

    def _add_traces(self, req) -> None:
        with self._lock:
            self.trace_requests.append(req)

    def _add_metrics(self, req) -> None:
        with self._lock:
            self.metric_requests.append(req)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource attributes: ``[(resource attrs, Span proto)]``."""
        out = []
        with self._lock:
            for req in self.trace_requests:
                for rs in req.resource_spans:
                    res = attributes(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        out.extend((res, span) for span in ss.spans)
        return out

    def metrics(self) -> list[tuple[dict[str, Any], Any]]:
        """Every metric received, with its resource attributes: ``[(resource attrs, Metric proto)]``."""
        out = []
        with self._lock:
            for req in self.metric_requests:
                for rm in req.resource_metrics:
                    res = attributes(rm.resource.attributes)
                    for sm in rm.scope_metrics:
                        out.extend((res, m) for m in sm.metrics)
        return out


class OtlpHttpReceiver(OtlpReceiver):
    """OTLP/HTTP receiver: ``POST /v1/traces`` and ``/v1/metrics`` with protobuf bodies (gzip or
    deflate allowed), on 127.0.0.1 and a free port. ``endpoint`` is the base URL to export to.
    With ``metrics=False`` it answers 404 to metrics, as Jaeger does."""

    def __init__(self, port: int = 0, *, metrics: bool = True) -> None:
        super().__init__()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                receiver.content_types.add(self.headers.get("Content-Type", ""))
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    receiver._add_traces(req)
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics" and metrics:
                    req = metrics_service_pb2.ExportMetricsServiceRequest()
                    req.ParseFromString(body)
                    receiver._add_metrics(req)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer((HOST, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-http-receiver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class OtlpGrpcReceiver(OtlpReceiver):
    """OTLP/gRPC receiver implementing the collector's TraceService and MetricsService, on
    127.0.0.1 and a free port. ``endpoint`` is ``http://127.0.0.1:PORT`` (plaintext). With
    ``metrics=False`` only the TraceService exists (metrics get UNIMPLEMENTED, as from Jaeger)."""

    def __init__(self, port: int = 0, *, metrics: bool = True) -> None:
        super().__init__()
        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # gRPC's naming
                receiver._add_traces(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                receiver._add_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        if metrics:
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._server)
        self.port = self._server.add_insecure_port(f"{HOST}:{port}")
        self.endpoint = f"http://{HOST}:{self.port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a receiver until interrupted or until stdin closes, then print what it got."""
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python tests/otlp_receiver.py",
        description="A local OTLP receiver (127.0.0.1) that decodes and counts what it receives.",
    )
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    p.add_argument("--no-metrics", action="store_true", help="refuse metrics, as Jaeger does")
    args = p.parse_args(argv)
    cls = OtlpHttpReceiver if args.protocol == "http" else OtlpGrpcReceiver
    rx = cls(args.port, metrics=not args.no_metrics)
    print(rx.endpoint, flush=True)
    try:
        sys.stdin.read()  # until EOF: the parent closes the pipe, or Ctrl-D
    except KeyboardInterrupt:
        pass
    rx.stop()
    print(
        f"{len(rx.trace_requests)} trace requests, {len(rx.spans())} spans; "
        f"{len(rx.metric_requests)} metric requests, {len(rx.metrics())} metric streams",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Writes dashboards/speechpipe.json, the Grafana dashboard of the panels /dashboard shows, from
the PromQL below (run it after editing; tests/test_prometheus.py checks the two agree and that
every series named exists on a real server's /metrics)."""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "speechpipe-prometheus"}
BY_V = "pipeline_variant, deploy_role"


def mean(metric: str, by: str = BY_V, where: str = "", sign: str = "") -> str:
    sel = f"{{{where}}}" if where else ""
    return f"{sign}(sum by ({by}) (rate({metric}_sum{sel}[5m])) / sum by ({by}) (rate({metric}_count{sel}[5m])))"


def quantile(q: float, metric: str, by: str = "pipeline_variant", where: str = "") -> str:
    sel = f"{{{where}}}" if where else ""
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{sel}[5m])))"


# (section, [(title, unit, [(legend, expr)], kind)])
SECTIONS = [
    (
        "Service",
        [
            (
                "Streams open",
                "short",
                [("{{pipeline_variant}} {{deploy_role}}", f"sum by ({BY_V}) (speechpipe_streams_active)")],
                "timeseries",
            ),
            (
                "Streams accepted / refused per minute",
                "short",
                [
                    ("accepted", "60 * sum(rate(speechpipe_input_streams_total[5m]))"),
                    (
                        "refused {{stream_reject_reason}}",
                        "60 * sum by (stream_reject_reason) (rate(speechpipe_streams_rejected_total[5m]))",
                    ),
                ],
                "timeseries",
            ),
            (
                "Final latency p50 / p95",
                "s",
                [
                    ("p50 {{pipeline_variant}}", quantile(0.5, "speechpipe_final_latency_seconds")),
                    ("p95 {{pipeline_variant}}", quantile(0.95, "speechpipe_final_latency_seconds")),
                ],
                "timeseries",
            ),
            (
                "Finals lost (15 min)",
                "short",
                [("{{segment_lost}}", "sum by (segment_lost) (increase(speechpipe_finals_lost_total[15m]))")],
                "timeseries",
            ),
            ("ASR queue", "short", [("{{asr_kind}}", "sum by (asr_kind) (speechpipe_asr_queue_depth)")], "timeseries"),
            (
                "ASR real-time factor p50",
                "short",
                [("{{pipeline_variant}}", quantile(0.5, "speechpipe_asr_rtf", where='asr_kind="final"'))],
                "timeseries",
            ),
            ("CPU", "percentunit", [("cpu", "max(process_cpu_utilization)")], "timeseries"),
            ("Memory (RSS)", "bytes", [("rss", "max(process_memory_usage_bytes)")], "timeseries"),
        ],
    ),
    (
        "Input",
        [
            (
                "Segment level (dBFS)",
                "dB",
                [
                    (
                        "{{pipeline_variant}}",
                        mean("speechpipe_input_rms_headroom_dB", where='audio_scope="segment"', sign="-"),
                    )
                ],
                "timeseries",
            ),
            (
                "Speech ratio",
                "percentunit",
                [("{{pipeline_variant}}", mean("speechpipe_vad_speech_ratio"))],
                "timeseries",
            ),
            (
                "Sample rates (1 h)",
                "short",
                [
                    (
                        "{{audio_sample_rate}} Hz",
                        "sum by (audio_sample_rate) (increase(speechpipe_input_streams_total[1h]))",
                    )
                ],
                "timeseries",
            ),
        ],
    ),
    (
        "Output",
        [
            (
                "Empty-final rate",
                "percentunit",
                [
                    (
                        "{{pipeline_variant}} {{deploy_role}}",
                        f'sum by ({BY_V}) (rate(speechpipe_output_segments_total{{asr_empty="true"}}[5m])) / sum by ({BY_V}) (rate(speechpipe_output_segments_total[5m]))',
                    )
                ],
                "timeseries",
            ),
            (
                "Mean avg_logprob",
                "short",
                [("{{pipeline_variant}} {{deploy_role}}", mean("speechpipe_output_neg_avg_logprob", sign="-"))],
                "timeseries",
            ),
            (
                "Guard drops per minute",
                "short",
                [
                    (
                        "{{pipeline_variant}}",
                        f"60 * sum by ({BY_V}) (rate(speechpipe_output_hallucination_drops_total[5m]))",
                    )
                ],
                "timeseries",
            ),
            (
                "WER on human feedback (15 min)",
                "percentunit",
                [
                    (
                        "{{pipeline_variant}}",
                        "sum by (pipeline_variant) (increase(speechpipe_feedback_errors_total[15m])) / sum by (pipeline_variant) (increase(speechpipe_feedback_words_total[15m]))",
                    )
                ],
                "timeseries",
            ),
        ],
    ),
    (
        "Deployment",
        [
            (
                "Traffic weight",
                "percentunit",
                [("{{pipeline_variant}}", "sum by (pipeline_variant) (speechpipe_deploy_weight)")],
                "timeseries",
            ),
            (
                "Deploy changes and rollbacks (1 h)",
                "short",
                [
                    ("{{deploy_action}}", "sum by (deploy_action) (increase(speechpipe_deploy_changes_total[1h]))"),
                    (
                        "rollback by {{deploy_gate}}",
                        "sum by (deploy_gate) (increase(speechpipe_deploy_rollbacks_total[1h]))",
                    ),
                ],
                "timeseries",
            ),
            (
                "Shadow agreement",
                "percentunit",
                [("{{pipeline_variant}}", mean("speechpipe_shadow_agreement", by="pipeline_variant"))],
                "timeseries",
            ),
        ],
    ),
    (
        "Drift",
        [
            (
                "Drift score by feature",
                "short",
                [("{{variant}} {{stage}}.{{feature}}", "speechpipe_drift_score")],
                "timeseries",
            ),
            (
                "Features in alert",
                "short",
                [("{{variant}} {{stage}}.{{feature}}", "speechpipe_drift_alert == 1")],
                "table",
            ),
        ],
    ),
]


def panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], kind: str, x: int, y: int) -> dict:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(65 + i),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                **({"instant": True, "format": "table"} if kind == "table" else {}),
            }
            for i, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for section, items in SECTIONS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": section,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y = pid + 1, y + 1
        for k, (title, unit, targets, kind) in enumerate(items):
            panels.append(panel(pid, title, unit, targets, kind, 8 * (k % 3), y + 8 * (k // 3)))
            pid += 1
        y += 8 * ((len(items) + 2) // 3)
    return {
        "uid": "speechpipe",
        "title": "speechpipe",
        "tags": ["speechpipe"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).parent / "dashboards" / "speechpipe.json"
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")

"""A baseline profile: per variant and stage, the distribution of every per-segment feature, and
the drift thresholds learned from it (see :mod:`speechpipe.pipeline.monitoring.drift`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from speechpipe.pipeline.monitoring.drift import kind_of, learn_threshold
from speechpipe.pipeline.monitoring.quality import Sample, calibrate
from speechpipe.stages.features import INPUT_FEATURES, OUTPUT_FEATURES, SCALES

#: 2: ``snr_db`` measures the noise under the speech, ``pause_dbfs`` the room between sentences
#: (stages/features.py); a profile of version 1 holds the old ``snr_db`` and is built again
PROFILE_VERSION = 2


def stage_of(feature: str) -> str:
    return "input" if feature in INPUT_FEATURES else "output" if feature in OUTPUT_FEATURES else "stream"


def build_profile(
    segments: Mapping[str, Sequence[Mapping[str, float]]],
    window_segments: int = 100,
    min_segments: int = 30,
    groups: Mapping[str, Sequence[str]] | None = None,
    wer: Mapping[str, Sequence[Sequence[int]]] | None = None,
    quality: Mapping[str, Sequence[Sample]] | None = None,
    confidence: float | None = 0.95,
) -> dict:
    """The profile of ``segments`` (per variant, each segment's features), with thresholds learned
    for windows of ``min_segments`` up to ``window_segments`` segments; ``groups`` gives the stream
    of each segment, per variant (see :func:`~speechpipe.pipeline.monitoring.drift.learn_threshold`);
    ``wer`` the ``[errors, reference words]`` of each file scored against a reference, per variant
    (the baseline of concept drift); ``quality`` each such file's segments and truth, per variant:
    the calibration of the estimated WER (:mod:`~speechpipe.pipeline.monitoring.quality`), kept
    with its samples so that a server can recalibrate with reviews added."""
    sizes = window_sizes(window_segments, min_segments)
    variants = {}
    for variant, segs in segments.items():
        features = {}
        names = sorted({k for seg in segs for k in seg})
        seg_groups = (groups or {}).get(variant)
        for name in names:
            values = np.array([seg[name] for seg in segs if name in seg], dtype=float)
            these = [g for g, seg in zip(seg_groups, segs) if name in seg] if seg_groups else None
            kind, scale = kind_of(name), SCALES.get(name, 0.0)
            features[name] = {
                "stage": stage_of(name),
                "kind": kind,
                "scale": scale,
                "values": values.tolist(),
                "thresholds": {
                    str(n): learn_threshold(kind, values, n, these, scale=scale, confidence=confidence) for n in sizes
                },
            }
        variants[variant] = {"segments": len(segs), "features": features}
        if seg_groups:
            # the stream of each segment, so that a server watching windows of another size
            # learns their thresholds the same way (whole streams against the others)
            variants[variant]["groups"] = list(seg_groups)
        files = [[int(e), int(w)] for e, w in (wer or {}).get(variant, ())]
        if files and sum(w for _, w in files):
            variants[variant]["wer"] = {
                "errors": sum(e for e, _ in files),
                "words": sum(w for _, w in files),
                "files": files,
            }
        samples = list((quality or {}).get(variant, ()))
        calibration = calibrate(samples, "baseline")
        if calibration is not None:
            variants[variant]["quality"] = {
                "samples": [s.to_dict() for s in samples],
                "calibration": calibration.to_dict(),
            }
    return {
        "version": PROFILE_VERSION,
        "window_segments": window_segments,
        "confidence": confidence,
        "variants": variants,
    }


def window_sizes(window_segments: int, min_segments: int) -> list[int]:
    """The window sizes thresholds are learned for: the least judged, the middle and the whole."""
    return sorted({min_segments, (min_segments + window_segments) // 2, window_segments})


def with_thresholds(profile: dict, sizes: Sequence[int]) -> dict:
    """``profile`` with thresholds for windows of every size in ``sizes``: those it lacks (a
    server watching other windows than the build's) are learned from its values as the build
    learns them, per stream where it recorded the streams."""
    for base in profile["variants"].values():
        groups = base.get("groups")
        for spec in base["features"].values():
            missing = [n for n in sizes if str(n) not in spec["thresholds"]]
            if not missing:
                continue
            values = np.array(spec["values"], dtype=float)
            these = groups if groups is not None and len(groups) == values.size else None
            for n in missing:
                spec["thresholds"][str(n)] = learn_threshold(
                    spec["kind"], values, n, these, scale=spec.get("scale", 0.0), confidence=profile.get("confidence")
                )
    return profile


def save_profile(profile: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(profile))


def load_profile(path: str | Path) -> dict:
    """A profile written by :func:`save_profile`; ValueError naming the file when it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a baseline profile: {exc}") from None
    if isinstance(doc, dict) and doc.get("version") == 1 and "variants" in doc:
        raise ValueError(
            f"{path}: a baseline profile of version 1, whose snr_db measured something else: "
            "build it again with `speechpipe baseline build`"
        )
    if not isinstance(doc, dict) or doc.get("version") != PROFILE_VERSION or "variants" not in doc:
        raise ValueError(f"{path}: not a baseline profile of version {PROFILE_VERSION}")
    return doc

"""A ``speechpipe review export`` folder loaded back with Hugging Face ``datasets``, as people who
train on it will: ``load_dataset("audiofolder", data_dir=DIR)``.

    /tmp/hfvenv/bin/python benchmarks/load_export.py DIR [--json] [--cache-dir D]

Run it with a python that has ``datasets``, ``soundfile`` and ``librosa``, not the project's
(``datasets`` is no dependency of speechpipe; this script imports nothing of it)::

    python3.11 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install 'datasets<4' soundfile librosa

(``datasets`` 3 decodes audio with soundfile and wants librosa importable; 4 uses torchcodec.)
It prints the DatasetDict (its splits, their sizes and features) and the first example of the
first split: its text, its duration in the manifest, the sampling rate and length of the decoded
audio. ``--json``: the same
as one JSON object (tests/test_review_export.py reads it).
"""

from __future__ import annotations

import argparse
import json
import tempfile

from datasets import load_dataset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="the export's folder (DIR/train, DIR/dev, DIR/test)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--cache-dir", help="datasets' cache (default: a new temporary folder, so nothing stale is read)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset("audiofolder", data_dir=args.dir, cache_dir=args.cache_dir or tmp)
        split = next(iter(ds))
        first = ds[split][0]
        audio = first["audio"]
        found = {
            "splits": {name: ds[name].num_rows for name in ds},
            "features": {name: str(f) for name, f in ds[split].features.items()},
            "first": {
                "split": split,
                "text": first["text"],
                "duration": first["duration"],
                "sampling_rate": audio["sampling_rate"],
                "samples": len(audio["array"]),
                "file_name": audio["path"].rsplit("/", 1)[-1],
            },
        }
        if args.json:
            print(json.dumps(found))
            return 0
        print(ds)
        f = found["first"]
        print(
            f"first example of {split}: {f['text']!r}, duration {f['duration']} s in the manifest, "
            f"audio decoded at {f['sampling_rate']} Hz, {f['samples']} samples ({f['samples'] / f['sampling_rate']} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

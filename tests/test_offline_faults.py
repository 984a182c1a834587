"""A folder run onto a file system that refuses its outputs (issue 23, finding 3).

The file systems are real: a small tmpfs mounted for the test (filled up to leave a measured
number of pages, or remounted read-only: chmod does not stop root, a read-only mount does). Mounting
needs root and a sandbox that allows it; where it is not allowed those tests skip and say so, and
:func:`test_a_refused_write_leaves_none_of_the_set` still checks the one-unit write with a fake
write that raises ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PAGE, SPEECH, fill

from speechpipe.pipeline.cli.main import main
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.offline import outputs
from speechpipe.pipeline.offline import runner as offline

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

SHORT = ["ljspeech_LJ001-0002.wav", "librispeech-dev-clean_1272-128104-0000.wav"]


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    """Two real utterances, the short one first (inputs run in name order)."""
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(SPEECH / SHORT[0], root / f"a_{SHORT[0]}")
    shutil.copy(SPEECH / SHORT[1], root / f"b_{SHORT[1]}")
    return root


def pages(paths) -> int:
    return sum(math.ceil(p.stat().st_size / PAGE) for p in paths)


def leftovers(out: Path) -> list[str]:
    """What a failed write may not leave: temporaries."""
    return sorted(p.name for p in out.rglob(".*.tmp"))


def test_full_disk_fails_each_file_and_ends_with_one_line(inputs, tmpfs, capsys) -> None:
    """No room at all: every file is attempted and reported on one line each, the run ends with
    one ``speechpipe: error:`` line naming the cause (summary.json cannot be written either), exit
    1, no traceback, nothing half written. With space freed the rerun does them all."""
    filler = fill(tmpfs, 0)
    out = tmpfs / "out"
    out.mkdir()
    code = main(["transcribe", str(inputs), "-o", str(out), "--no-progress", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    failed = [line for line in lines if "cannot write" in line and "No space left on device (ENOSPC)" in line]
    assert len(failed) == 3  # both files, then summary.json
    assert all(line.startswith("speechpipe: error: ") for line in failed)
    assert lines[-1] == f"speechpipe: error: cannot write {out / 'summary.json'}: No space left on device (ENOSPC)"
    assert "2 file(s): 0 transcribed, 0 already done, 2 failed" in err
    assert sorted(p.name for p in out.rglob("*")) == []

    filler.unlink()
    code = main(["transcribe", str(inputs), "-o", str(out), "--no-progress", "-q"])
    assert code == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["transcribed"] == 2 and doc["failed"] == []


def test_a_file_that_does_not_fit_is_failed_and_the_run_goes_on(inputs, tmp_path, tmpfs, engine) -> None:
    """Room for the first file's outputs and a summary, not for the second's: the first lands
    whole, the second is reported failed with none of its files (no ``.txt`` without its JSON, no
    temporaries), and ``summary.json`` says so."""
    config = Config(asr=engine.config)
    roomy = tmp_path / "roomy"
    offline.run([inputs], roomy, config, engine=engine, progress=False)
    first = sorted(roomy.glob("a_*"))
    second = sorted(roomy.glob("b_*"))
    assert len(first) == 4 and len(second) == 4
    summary_pages = pages([roomy / "summary.json"])
    assert pages(second) > summary_pages + 1  # the second set cannot fit in what is left

    out = tmpfs / "out"
    out.mkdir()
    fill(tmpfs, pages(first) + summary_pages + 1)
    summary = offline.run([inputs], out, config, engine=engine, progress=False)
    assert summary.transcribed == 1 and len(summary.failed) == 1
    failure = summary.failed[0]
    assert failure.file.endswith(f"b_{SHORT[1]}")
    assert "No space left on device (ENOSPC)" in failure.error
    assert sorted(p.name for p in out.glob("a_*")) == sorted(p.name for p in first)
    assert outputs.is_complete(out / f"a_{SHORT[0]}.json")
    assert list(out.glob("b_*")) == []
    assert leftovers(out) == []
    doc = json.loads((out / "summary.json").read_text())
    assert doc["transcribed"] == 1 and [f["file"] for f in doc["failed"]] == [failure.file]


def test_read_only_output(inputs, tmpfs, capsys) -> None:
    """A read-only file system: each file is reported, the run ends with one line naming the
    cause, exit 1; an output folder that cannot be created is that one line alone."""
    out = tmpfs / "out"
    out.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    code = main(["transcribe", str(inputs), "-o", str(out), "--no-progress", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.count("Read-only file system (EROFS)") == 3
    assert err.strip().splitlines()[-1].startswith(f"speechpipe: error: cannot write {out / 'summary.json'}: ")

    code = main(["transcribe", str(inputs), "-o", str(tmpfs / "new"), "--no-progress", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        f"speechpipe: error: cannot create the output folder {tmpfs / 'new'}: Read-only file system (EROFS)"
    ]


def test_a_refused_write_leaves_none_of_the_set(tmp_path: Path, monkeypatch) -> None:
    """A fake file system (a write that raises ``OSError(ENOSPC)`` at the third file), run on any
    machine, also where a tmpfs cannot be mounted: the temporaries written before it are removed
    too, none of the new set lands, and the files already there are untouched."""
    files = [(tmp_path / f"x.{ext}", ext * 100) for ext in ("txt", "srt", "vtt", "json")]
    outputs.write_together(files)
    real = outputs._temp_copy
    calls = []

    def full_at_third(path: Path, text: str) -> Path:
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, text)

    monkeypatch.setattr(outputs, "_temp_copy", full_at_third)
    with pytest.raises(OSError) as caught:
        outputs.write_together([(tmp_path / f"y.{ext}", "new") for ext in ("txt", "srt", "vtt", "json")])
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.srt", "x.txt", "x.vtt"]
    assert offline.describe_os_error(caught.value) == "No space left on device (ENOSPC)"

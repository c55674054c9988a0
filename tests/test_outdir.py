import json
import os
import socket
import subprocess
import sys

import pytest

from sae_fast.errors import OutputDirError
from sae_fast.outdir import LOCK_FILE, acquire_lock, check_writable, claim


def test_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        check_writable(f)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_read_only_is_refused(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    with pytest.raises(OutputDirError, match="not writable"):
        check_writable(d)


def test_unwritable_parent_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputDirError, match="not writable"):
        check_writable(f / "sub")


def test_finished_result_needs_overwrite_and_is_cleared(tmp_path):
    (tmp_path / "report.html").write_text("old")
    (tmp_path / "fig.png").write_text("old")
    with pytest.raises(OutputDirError, match="--overwrite"), claim(tmp_path, kind="a study", finished=["report.html"]):
        pass
    with claim(tmp_path, kind="a study", finished=["report.html"], remove=["*"], overwrite=True) as d:
        assert sorted(p.name for p in d.iterdir()) == [LOCK_FILE]
    assert not (tmp_path / LOCK_FILE).exists()


def test_second_run_is_refused_naming_the_process(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(),
                                                      "command": "sae-fast stability"}))
        with pytest.raises(OutputDirError, match=f"process {child.pid}"), claim(tmp_path, kind="x"):
            pass
    finally:
        child.kill()
        child.wait()
    # the holder is gone (kill -9): its stale lock is taken over
    lock = acquire_lock(tmp_path, "again")
    assert json.loads(lock.read_text())["pid"] == os.getpid()

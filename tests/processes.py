"""Process plumbing shared by the suite: running a command, polling, stopping a server.

It imports nothing else from ``tests`` so that the lowest layers (``tests.dovecot``) can
use it too.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_ok(
    command: list[str], *, cwd: Path, env: dict[str, str], timeout: float, what: str
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end; unless it exits 0, fail naming ``what`` with its output.

    Only the tail of the output is shown: a failed training run logs thousands of lines.
    """
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
    assert result.returncode == 0, f"{what}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every 50 ms; seconds it took, or fail naming ``what``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_process(process: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM, then SIGKILL if it has not gone within ``timeout``; its exit status.

    A clean shutdown is what the tests check, but a process that hangs on SIGTERM must
    not outlive the test that started it.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)

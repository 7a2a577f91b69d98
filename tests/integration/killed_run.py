"""A `cmdb-connector run` in a process of its own, killed with SIGKILL part-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def kill_9_run_when(server, password: str, tmp_path: Path, inventory: Path, until: Callable[[], bool],
                    extra_config: str = "", servicenow_config: str = "") -> None:
    """Run against the stand-in ``server`` (4 workers) from ``inventory``; SIGKILL it as soon as ``until()`` holds."""
    config = tmp_path / "config.toml"
    config.write_text(f'[aws]\nexternal_id = "not-used-here"\n\n[servicenow]\ninstance_url = "{server.url}"\n'
                      f'username = "svc"\nworkers = 4\n{servicenow_config}\n[report]\noutput_dir = "reports"\n{extra_config}')
    env = {**os.environ, "CMDB_SERVICENOW__PASSWORD": password}
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "--config", str(config), "run", "--inventory", str(inventory)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not until() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

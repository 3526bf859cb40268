"""The three front doors exist, install as commands, and answer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import main as titra_main
from cluster.limits import STORE_LIMITS

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", ["titra", "titra-node", "titra-chaos"])
def test_command_is_installed_and_prints_help(command: str) -> None:
    out = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert command in out.stdout


def test_titra_limits_json_reports_the_limits_in_force(capsys: pytest.CaptureFixture[str]) -> None:
    assert titra_main(["limits", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["store_limits"]["key_bytes_max"] == STORE_LIMITS.key_bytes_max
    assert got["store_defaults"]["async_flush_interval_ms"] > 0

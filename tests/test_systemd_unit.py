"""The shipped units stay hardened: systemd-analyze's exposure score is asserted where it is available."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"


@pytest.mark.parametrize("unit", ["cloverwoo.service", "cloverwoo@.service"])
def test_unit_declares_notify_watchdog_and_restart(unit: str) -> None:
    text = (UNITS / unit).read_text()
    for line in ("Type=notify", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    assert "LoadCredential=" in text
    assert "StateDirectory=" in text and "RuntimeDirectory=" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["cloverwoo.service", "cloverwoo@.service"])
def test_exposure_score_at_most_2(unit: str, tmp_path: Path) -> None:
    target = tmp_path / unit.replace("@", "@demo") if "@" in unit else tmp_path / unit
    target.write_text((UNITS / unit).read_text())
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(target)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0

"""How the CLI shows jobs: the running one, the last of each kind, and what a job did."""

from __future__ import annotations

import time

import msgspec
import pytest

from cloverwoo_daemon.actors.jobs import JobStatus
from cloverwoo_daemon.cli import _jobs_text, _print_job


def job(**kw: object) -> dict[str, object]:
    base = JobStatus(id="j1", kind="import", truth="clover", started_at=time.time() - 3, finished_at=time.time(),
                     state="done", total=9)
    return msgspec.to_builtins(msgspec.structs.replace(base, **kw))  # type: ignore[no-any-return]


def test_the_running_job_is_shown_with_its_progress() -> None:
    text = _jobs_text({"current": job(kind="reconcile", state="applying", done=46, total=46, finished_at=None),
                       "last": {}, "last_dry_run": {}})
    assert text.startswith("running: reconcile (applying 46/46) since ")


def test_the_last_real_job_and_the_last_dry_run_are_kept_apart() -> None:
    text = _jobs_text({"current": None,
                       "last": {"import": job(changed=7), "reconcile": job(kind="reconcile", writes_planned=2)},
                       "last_dry_run": {"reconcile": job(kind="reconcile", dry_run=True, writes_planned=5)}})
    lines = text.splitlines()
    assert lines[0] == "no job running"
    assert any(line.startswith("last import: done") and line.endswith("9 bindings, 7 changed") for line in lines)
    assert any(line.startswith("last reconcile: done") and line.endswith("2 to correct") for line in lines)
    assert any(line.startswith("last dry run of reconcile: done") and line.endswith("5 to correct") for line in lines)


def test_a_job_says_what_it_changed_and_what_failed(capsys: pytest.CaptureFixture[str]) -> None:
    _print_job(job(state="failed", changed=6, unchanged=1, skipped=1, failed=1,
                   failures=[{"binding_id": "woo:9:0", "sku": "", "name": "Blue Mug", "reason": "refused: 400"}],
                   error="1 binding(s) failed (Blue Mug); they are retried on their own"))
    out = capsys.readouterr().out
    assert "import failed in" in out
    assert "6 changed, 1 unchanged, 1 skipped, 1 failed" in out
    assert "failed Blue Mug: refused: 400" in out
    assert "error: 1 binding(s) failed (Blue Mug)" in out


def test_a_dry_run_names_a_product_without_a_sku(capsys: pytest.CaptureFixture[str]) -> None:
    _print_job(job(dry_run=True, writes_planned=1, diff=[{"sku": "", "name": "Blue Mug", "binding_id": "woo:9:0",
                                                          "woo": [8, 5], "clover": {}}]))
    out = capsys.readouterr().out
    assert "1 binding(s) would change" in out and "Blue Mug" in out and "woo 8 -> 5" in out
    assert "0 changed" not in out  # a dry run changes nothing: no counts of what it did

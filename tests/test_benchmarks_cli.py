"""Issue 20, item 15: ``python -m benchmarks --help`` speaks to its user, and ports can be
chosen."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from benchmarks import feature_budget, procs
from benchmarks.lab import REPO
from benchmarks.run import _parser


def test_help_speaks_of_the_benchmarks_not_of_issues(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "issue" not in out.lower()
    assert "--ports FIRST-LAST" in out
    assert _parser().parse_args(["--ports", "20000-20099"]).ports == (20000, 20099)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--ports", "99-1"])


def test_chosen_ports_are_used_and_busy_ones_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "_chosen_ports", None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        procs.use_ports(port, port)
        with pytest.raises(RuntimeError, match="no free port left in the range of --ports"):
            procs.free_port()  # the only one is busy
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    procs.use_ports(free, free)
    assert procs.free_port() == free


def test_the_feature_budget_cuts_still_apply(tmp_path: Path) -> None:
    # Each cut patches the proxy's own code; one that no longer applies must be noticed
    # when that code changes, not when someone next measures.
    if not (REPO / ".git").exists():
        pytest.skip("needs the repository's history (git archive)")
    copies = feature_budget.build("HEAD", tmp_path)
    assert set(copies) == set(feature_budget.CUTS)
    all_off = (copies["all-off"] / "proxy" / "server" / "serve.py").read_text(encoding="utf-8")
    assert "web.AppRunner(app, access_log=None" in all_off

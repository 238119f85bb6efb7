"""Every command of REPRODUCTION.md works: its options parse (fast), and with `--quick` it
runs to the end (slow). The full-size runs are the report's numbers and take hours."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_COMMAND = re.compile(r"`((?:python|pytest|convexnn) [^`]*)`")


def _commands() -> list[str]:
    out: list[str] = []
    for line in (ROOT / "REPRODUCTION.md").read_text().splitlines():
        if line.startswith("|"):
            out += [c for c in _COMMAND.findall(line) if c not in out]
    return out


COMMANDS = _commands()
PYTHON = [c for c in COMMANDS if c.startswith("python ")]


class _Parsed(Exception):
    pass


def test_report_lists_commands():
    assert len(PYTHON) >= 15 and any(c.startswith("pytest ") for c in COMMANDS)
    for c in COMMANDS:
        assert "[" not in c, f"{c!r}: write optional arguments as separate commands"


@pytest.mark.parametrize("command", PYTHON)
def test_command_options_parse(command, monkeypatch):
    """The script exists and its parser accepts exactly these options (nothing runs)."""
    argv = shlex.split(command)[1:]
    script = ROOT / argv[0]
    assert script.is_file(), f"{command!r}: no {argv[0]}"
    spec = importlib.util.spec_from_file_location(f"_repro_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(script.parent))   # as when run as a script
    spec.loader.exec_module(mod)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)       # argparse exits (SystemExit 2) on a bad option
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        mod.main(argv[1:])


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("pytest ")])
def test_pytest_commands_select_tests(command):
    argv = shlex.split(command)[1:]
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:cacheprovider", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert re.search(r"^\d+ tests? (selected|collected)|^\d+/\d+ tests collected",
                     res.stdout, re.M), res.stdout[-2000:]


def test_cli_commands_parse():
    from convexnn.cli import build_parser

    for c in COMMANDS:
        if c.startswith("convexnn "):
            build_parser().parse_args(shlex.split(c)[1:])


@pytest.mark.slow
@pytest.mark.parametrize("command", PYTHON)
def test_command_runs_quick(command, tmp_path):
    """The same command with `--quick --quiet --out TMP` runs to the end and writes JSON."""
    argv = shlex.split(command)
    res = subprocess.run([sys.executable, *argv[1:], "--quick", "--quiet", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert list(tmp_path.glob("*.json")), f"{command!r} wrote no JSON"

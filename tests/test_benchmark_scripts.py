"""Every benchmark script parses its command line: ``--help`` prints usage and exits 0.

The scripts are plain files run by hand, so nothing else would notice a broken ``argparse`` help
string (a bare ``%`` in a help text raises only when the help is formatted).
"""

import contextlib
import io
import pathlib
import runpy
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
# the scripts with a command line (motion_common.py and machine.py are helper modules)
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if "ArgumentParser(" in p.read_text(encoding="utf-8"))
OPTIONAL = {"cv2", "dapper", "scoringrules", "matplotlib"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_help_prints_usage(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    monkeypatch.syspath_prepend(str(BENCH))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
            runpy.run_path(str(script), run_name="__main__")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{script.name} needs the optional package {e.name}")
        raise
    assert stop.value.code == 0
    assert out.getvalue().startswith("usage:"), out.getvalue()[:200]

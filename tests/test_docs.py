"""The documentation site builds with warnings as errors: ``mkdocs build --strict``.

Skipped unless the docs dependencies are installed (``pip install ".[docs]"``). The build
runs the examples through ``docs/gen_figures.py`` (cached between builds, see that file),
so a cold build takes a minute or two.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

for _mod in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
    pytest.importorskip(_mod, reason="the docs dependencies are not installed (pip install '.[docs]')")


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    for page in ("index.html", "getting_started/index.html", "lqg/index.html", "compare/index.html",
                 "examples/index.html", "api/design/index.html", "api/estimators/index.html"):
        assert (site / page).is_file(), page
    # the API reference is generated from the numpydoc docstrings
    design = (site / "api/design/index.html").read_text(encoding="utf-8")
    assert 'id="lqgt.lqg_cost"' in design and "Observer gain" in design
    assert ":func:" not in design  # Sphinx roles became links or code
    # the examples page shows the figures and output the examples produced in this build
    examples = (site / "examples/index.html").read_text(encoding="utf-8")
    for fig in ("quickstart/p1.png", "quickstart/cost.png", "compare/trajectories.png", "compare/cost.png",
                "transformer_filter/certificate_two_mass.png"):
        assert (site / "generated" / fig).stat().st_size > 1000, fig
        assert f"generated/{fig}" in examples, fig
    assert "LQG optimum J*" in examples and "slow observer" in examples

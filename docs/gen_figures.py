"""Run the examples and put their figures and printed output into the documentation.

This file is an mkdocs hook (``hooks:`` in ``mkdocs.yml``) and a script.

As a hook, when the site is built it runs every example in :data:`EXAMPLES` (each in its
own process, from a fresh output folder, with the Agg backend), then

* adds the files the example wrote (PNG figures, ``table.md``, ...) and its standard
  output (``output.txt``) to the site as ``generated/<example>/<file>``, so a page links a
  figure as ``![...](generated/quickstart/p1.png)``;
* puts the folder that holds ``generated/`` on the search path of ``pymdownx.snippets``,
  so a page includes a text output with ``--8<-- "generated/quickstart/output.txt"``
  (and an example's source with ``--8<-- "examples/quickstart.py"``, from the repository).

Results are cached by a hash of the example's command and sources and of the ``lqgt``
package sources, in ``$LQGT_DOCS_CACHE`` (default: ``<tempdir>/lqgt-docs-cache``), so
only the first build after a change runs the examples. A failing example fails the build.

As a script, ``python docs/gen_figures.py [NAME ...]`` runs the examples (all by default)
into the cache and prints where their files are.

To add an example: add an entry to :data:`EXAMPLES` and a section to ``docs/examples.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Progress lines ("running example ...", "done in ... s") go to the mkdocs log (shown at INFO).
_log = logging.getLogger("mkdocs.hooks.gen_figures")

#: name -> (command line, files it reads besides the lqgt package). ``{out}`` is the
#: folder the example runs in (its working directory) and writes to; paths are relative
#: to the repository root. Keep the sizes small: these run on every docs change.
EXAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "quickstart": (["{python}", "examples/quickstart.py"], ["examples/quickstart.py"]),
    "compare": (["{python}", "-m", "lqgt.cli", "compare", "examples/compare.toml", "--out", "{out}", "--no-progress"],
                ["examples/compare.toml"]),
    "transformer_filter": (["{python}", "examples/transformer_filter.py", "--plants", "two_mass", "--batch", "200",
                            "--horizon", "400", "--out", "{out}"], ["examples/transformer_filter.py"]),
    "doyle_margins": (["{python}", "examples/doyle_margins.py", "--out", "{out}"], ["examples/doyle_margins.py"]),
    "frequency_response": (["{python}", "examples/frequency_response.py", "--out", "{out}"],
                           ["examples/frequency_response.py"]),
    "ml_noise_fit": (["{python}", "examples/ml_noise_fit.py"], ["examples/ml_noise_fit.py"]),
    "nonlinear_koopman": (["{python}", "examples/nonlinear_koopman.py", "--out", "{out}"],
                          ["examples/nonlinear_koopman.py"]),
}

#: How a generated folder is shown in the captured output instead of its temporary path.
SHOWN_AS = {"compare": "compare-out", "transformer_filter": "tf-example", "doyle_margins": "doyle-example",
            "frequency_response": "fr-example"}


def cache_root() -> Path:
    """The cache folder (``$LQGT_DOCS_CACHE`` or ``<tempdir>/lqgt-docs-cache``)."""
    return Path(os.environ.get("LQGT_DOCS_CACHE") or Path(tempfile.gettempdir()) / "lqgt-docs-cache")


def _digest(name: str) -> str:
    cmd, inputs = EXAMPLES[name]
    h = hashlib.sha256(repr((name, cmd, sys.version_info[:2])).encode())
    for path in sorted({*inputs, *(str(p.relative_to(ROOT)) for p in (ROOT / "lqgt").rglob("*.py"))}):
        h.update(path.encode())
        h.update((ROOT / path).read_bytes())
    return h.hexdigest()[:16]


def run_example(name: str) -> Path:
    """Run example ``name`` unless its cached output is current; return ``<cache>/<name>-<digest>/generated/<name>``.

    Raises
    ------
    RuntimeError
        The example exited with a non-zero status (its output is in the message).
    """
    base = cache_root() / f"{name}-{_digest(name)}"
    if base.is_dir():
        _log.info("docs: example %r: cached output (%s)", name, base)
        return base / "generated" / name
    _log.info("docs: running example %r (first build after a change; output cached in %s) ...", name, base.parent)
    t0 = time.perf_counter()
    # run in a private folder, then rename it into place: concurrent builds never see half an output
    base.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{base.name}.", dir=base.parent))
    out = work / "generated" / name
    out.mkdir(parents=True)
    cmd = [c.format(python=sys.executable, out=out) for c in EXAMPLES[name][0]]
    cmd = [str(ROOT / c) if c.startswith("examples/") else c for c in cmd]
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=pythonpath)
    try:
        proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"example {name!r} failed (exit status {proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        shown = SHOWN_AS.get(name, ".")
        (out / "output.txt").write_text(proc.stdout.replace(f"{out}{os.sep}", f"{shown}/").replace(str(out), shown))
        try:
            work.rename(base)
        except OSError:  # another build finished first
            if not base.is_dir():
                raise
        for old in base.parent.glob(f"{name}-*"):  # outputs of earlier sources
            if old != base and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        _log.info("docs: example %r done in %.1f s", name, time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return base / "generated" / name


def run_all(names=None) -> dict[str, Path]:
    """Run the examples (all by default) in parallel; return ``{name: folder of its files}``."""
    names = list(EXAMPLES) if not names else list(names)
    _log.info("docs: %d examples (%s); uncached ones run now, which takes a while on a first build",
              len(names), ", ".join(names))
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
        return dict(zip(names, pool.map(run_example, names)))


# --------------------------------------------------------------------------- mkdocs hook
_outputs: dict[str, Path] = {}


def _types_as_written() -> None:
    """Show numpydoc types with commas as written, not as Python tuples or sets.

    griffe parses a docstring type as a Python expression, so ``array_like, shape (n, n)``,
    ``ShapeError, ConfigError`` (Raises) or ``{"cpu", "cuda"}`` became the tuples and sets
    ``(array_like, shape(n, n))`` on the site. A tuple or set display is kept as the text of
    the docstring; simple names and other expressions (cross-references) are unchanged.
    Uses griffe's internal hook point; if it moves, types render as before.
    """
    try:
        from griffe._internal.docstrings import numpy as numpy_docstrings
        from griffe._internal.expressions import ExprSet, ExprTuple
    except ImportError:  # pragma: no cover - another griffe layout
        return
    original = numpy_docstrings.parse_docstring_annotation
    if getattr(original, "_lqgt_types_as_written", False):
        return

    def parse(annotation, docstring, *args, **kwargs):
        out = original(annotation, docstring, *args, **kwargs)
        return annotation if isinstance(out, (ExprTuple, ExprSet)) else out

    parse._lqgt_types_as_written = True
    numpy_docstrings.parse_docstring_annotation = parse


_types_as_written()


def on_config(config, **kwargs):
    """Run the examples; let ``pymdownx.snippets`` read their outputs."""
    from mkdocs.exceptions import PluginError

    try:
        _outputs.update(run_all())
    except RuntimeError as exc:
        raise PluginError(str(exc)) from None
    snip = config["mdx_configs"].setdefault("pymdownx.snippets", {})
    paths = snip.get("base_path", ["."])
    # relative paths are the repository's (where mkdocs.yml is), wherever mkdocs is run from
    here = Path(config["config_file_path"]).resolve().parent
    paths = [str(here / p) for p in ([paths] if isinstance(paths, str) else paths)]
    for out in _outputs.values():
        root = str(out.parents[1])  # the folder holding generated/<name>
        if root not in paths:
            paths.append(root)
    snip["base_path"] = paths
    return config


def on_files(files, config, **kwargs):
    """Add every file the examples wrote to the site, as ``generated/<example>/<file>``."""
    from mkdocs.structure.files import File

    for name, out in _outputs.items():
        for path in sorted(out.iterdir()):
            if path.is_file() and path.suffix != ".md":  # Markdown outputs are included, not pages
                files.append(File.generated(config, f"generated/{name}/{path.name}", abs_src_path=str(path)))
    return files


_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):<code>(~?)([\w.]+)(\(\))?</code>")


def _role_to_autoref(m: re.Match) -> str:
    tilde, ident, parens = m.group(1), m.group(2), m.group(3) or ""
    title = ident.rsplit(".", 1)[-1] if tilde else ident
    return f'<autoref identifier="{ident}" optional><code>{title}{parens}</code></autoref>'


def on_page_content(html, page, config, files, **kwargs):
    """Turn the Sphinx roles of the docstrings (:func:`lqgt.lqg_cost`) into cross-references.

    The docstrings are numpydoc with Sphinx roles (also read by ``help()``); here
    ``:func:`~lqgt.x.y` `` becomes a link to ``lqgt.x.y`` titled ``y`` where that object is
    documented, and plain code otherwise (mkdocs-autorefs resolves the links).
    """
    return _ROLE.sub(_role_to_autoref, html)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, out in run_all(sys.argv[1:]).items():
        print(f"{name}: {out}")

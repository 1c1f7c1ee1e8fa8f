"""Every public name of lqgt has a numpydoc docstring documenting every parameter.

Public = reachable from ``lqgt.__all__``: functions, classes (their constructor parameters
and public methods, properties included) and, recursively, the ``__all__`` of modules listed
there (``lqgt.errors``, ``lqgt.plants``, ...), so new modules are covered once exported.
Only objects defined inside lqgt are checked (not re-exported numpy/torch objects, not
methods inherited from builtins such as ``tuple.count``).

The numpydoc parser is deliberately small: a section is a title line followed by a line of
dashes; in ``Parameters`` / ``Attributes`` / ``Other Parameters`` an entry is a line at the
section's indentation of the form ``name : type`` or ``name`` (``a, b : type`` documents
several names; ``*args`` / ``**kwargs`` are accepted with or without the stars).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types

import pytest

import lqgt

_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_]\w*(?:\s*,\s*\*{0,2}[A-Za-z_]\w*)*)\s*(?::.*)?$")
_PARAM_SECTIONS = ("Parameters", "Other Parameters")
_ATTR_SECTIONS = ("Attributes",)


def parse_sections(doc: str) -> dict[str, list[str]]:
    """Map numpydoc section title -> list of its lines (indentation normalised)."""
    lines = inspect.cleandoc(doc).splitlines()
    sections: dict[str, list[str]] = {"": []}
    current = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"\s*-{3,}\s*", nxt) and len(nxt.strip()) >= len(line.strip()) - 1:
            current = line.strip()
            sections[current] = []
            i += 2
            continue
        sections.setdefault(current, []).append(line)
        i += 1
    return sections


def documented_names(doc: str, titles: tuple[str, ...]) -> set[str]:
    """Names documented in the given sections of a numpydoc docstring."""
    names: set[str] = set()
    secs = parse_sections(doc)
    for title in titles:
        body = secs.get(title, [])
        indents = [len(l) - len(l.lstrip()) for l in body if l.strip()]
        if not indents:
            continue
        base = min(indents)
        for line in body:
            if not line.strip() or len(line) - len(line.lstrip()) != base:
                continue
            m = _ENTRY.match(line.strip())
            if m:
                for name in m.group(1).split(","):
                    names.add(name.strip().lstrip("*"))
    return names


def _signature_params(func) -> list[str]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values() if p.name not in ("self", "cls")]


def _is_lqgt(obj) -> bool:
    mod = getattr(obj, "__module__", None) or ""
    return mod == "lqgt" or mod.startswith("lqgt.")


def _constructor_owner(cls):
    """The lqgt class in the MRO whose own code defines the constructor, or None when the
    constructor comes from outside lqgt (exceptions, typing.Protocol's placeholder __init__).
    Generated constructors (dataclass __init__, named-tuple __new__) count as the class's."""
    generated = dataclasses.is_dataclass(cls) or (issubclass(cls, tuple) and hasattr(cls, "_fields"))
    for klass in cls.__mro__:
        for attr in ("__init__", "__new__"):
            func = vars(klass).get(attr)
            if func is None:
                continue
            if isinstance(func, staticmethod):
                func = func.__func__
            if not _is_lqgt(klass):
                return None
            if generated or _is_lqgt(func):
                return klass
            return None
    return None


def collect_public():
    """List of (qualified name, kind, object, owner class or None)."""
    out = []
    seen: set[int] = set()

    def visit_module(mod, prefix):
        names = getattr(mod, "__all__", None)
        if names is None:
            names = [n for n in vars(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name)
            visit(obj, f"{prefix}.{name}")

    def visit(obj, qual):
        if isinstance(obj, types.ModuleType):
            if id(obj) in seen or not obj.__name__.startswith("lqgt"):
                return
            seen.add(id(obj))
            out.append((qual, "module", obj, None))
            visit_module(obj, qual)
            return
        if not _is_lqgt(obj) or id(obj) in seen:
            return  # constants, re-exported foreign objects, already-seen objects
        if inspect.isclass(obj):
            seen.add(id(obj))
            out.append((qual, "class", obj, None))
            for name, member in vars(obj).items():
                if name.startswith("_"):
                    continue
                if isinstance(member, property):
                    out.append((f"{qual}.{name}", "property", member, obj))
                elif isinstance(member, (staticmethod, classmethod)):
                    out.append((f"{qual}.{name}", "method", member.__func__, obj))
                elif inspect.isfunction(member):
                    out.append((f"{qual}.{name}", "method", member, obj))
            return
        if inspect.isfunction(obj) or inspect.isbuiltin(obj):
            seen.add(id(obj))
            out.append((qual, "function", obj, None))

    for name in lqgt.__all__:
        visit(getattr(lqgt, name), f"lqgt.{name}")
    return out


PUBLIC = collect_public()


def test_collection_finds_the_api():
    quals = {q for q, *_ in PUBLIC}
    for must in ("lqgt.Plant", "lqgt.dare", "lqgt.dlqr", "lqgt.dlqe", "lqgt.lqg", "lqgt.lqg_cost",
                 "lqgt.LQGDesign", "lqgt.Plant.from_continuous", "lqgt.Plant.from_statespace",
                 "lqgt.Plant.to_statespace", "lqgt.errors.ShapeError", "lqgt.plants"):
        assert must in quals, must
    assert any(q.startswith("lqgt.plants.") for q in quals)
    assert len(PUBLIC) > 30


def test_parser_on_a_sample():
    doc = """Summary.

    Parameters
    ----------
    a : int
        Thing.
    b, c : float, optional
        Two things.
        d : not an entry (indented)
    *args
        More.

    Returns
    -------
    e : int
    """
    assert documented_names(doc, _PARAM_SECTIONS) == {"a", "b", "c", "args"}
    assert documented_names(doc, _ATTR_SECTIONS) == set()
    assert "Returns" in parse_sections(doc)


@pytest.mark.parametrize("qual,kind,obj,owner", PUBLIC, ids=[p[0] for p in PUBLIC])
def test_has_docstring(qual, kind, obj, owner):
    doc = inspect.getdoc(obj) if kind != "property" else obj.__doc__
    assert doc and doc.strip(), f"{qual} has no docstring"
    summary = inspect.cleandoc(doc).splitlines()[0].strip()
    assert summary, f"{qual}: the docstring must start with a one-line summary"


@pytest.mark.parametrize(
    "qual,kind,obj,owner",
    [p for p in PUBLIC if p[1] in ("function", "method")],
    ids=[p[0] for p in PUBLIC if p[1] in ("function", "method")],
)
def test_parameters_documented(qual, kind, obj, owner):
    params = _signature_params(obj)
    if not params:
        return
    doc = inspect.getdoc(obj) or ""
    assert any(t in parse_sections(doc) for t in _PARAM_SECTIONS), (
        f"{qual}{inspect.signature(obj)} has parameters {params} but no 'Parameters' section "
        "(numpydoc: 'Parameters' underlined with dashes, then 'name : type' lines)"
    )
    documented = documented_names(doc, _PARAM_SECTIONS)
    missing = [p for p in params if p not in documented]
    assert not missing, f"{qual}: parameters {missing} are not documented (documented: {sorted(documented)})"
    stale = sorted(documented - set(params))
    has_var = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in inspect.signature(obj).parameters.values())
    assert has_var or not stale, f"{qual}: documents {stale}, which are not parameters"


@pytest.mark.parametrize(
    "qual,kind,obj,owner",
    [p for p in PUBLIC if p[1] == "class"],
    ids=[p[0] for p in PUBLIC if p[1] == "class"],
)
def test_constructor_parameters_documented(qual, kind, obj, owner):
    """Constructor parameters are documented in the class docstring ('Parameters', or
    'Attributes' for dataclasses / named tuples whose __init__ is generated) or in __init__'s."""
    ctor_owner = _constructor_owner(obj)
    if ctor_owner is None:
        return  # constructor inherited from outside lqgt (exceptions, Protocols)
    try:
        params = [p for p in _signature_params(obj)]
    except (TypeError, ValueError):
        return
    if not params:
        return
    doc = inspect.getdoc(obj) or ""
    documented = documented_names(doc, _PARAM_SECTIONS)
    init = vars(ctor_owner).get("__init__")
    if init is not None and inspect.isfunction(init) and init.__doc__:
        documented |= documented_names(init.__doc__, _PARAM_SECTIONS)
    generated = dataclasses.is_dataclass(obj) or (issubclass(obj, tuple) and hasattr(obj, "_fields"))
    if generated:
        documented |= documented_names(doc, _ATTR_SECTIONS)
    missing = [p for p in params if p not in documented]
    assert not missing, (
        f"{qual}: constructor parameters {missing} are not documented in the class docstring "
        f"{'(Parameters or Attributes)' if generated else '(Parameters)'} or in __init__"
    )

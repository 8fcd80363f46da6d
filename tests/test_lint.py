"""The linters and the type checker pass on the repository: ruff (Python), cython-lint (.pyx/.pxd), mypy (the
package).  Their settings are in pyproject.toml ([tool.ruff], [tool.cython-lint], [tool.mypy]); each runs as a
subprocess from the repository root, as a developer or pre-commit runs it.  A tool that is not installed (they
come with the ``test`` extra) skips its test, and so does a tree without the sources (an installed package).

mypy keeps its cache in .mypy_cache at the root: a cold run (a fresh checkout) takes about half a minute on two
busy cores, a warm one about a second.
"""
import importlib.util
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "pyproject.toml").is_file() and (ROOT / "fastnn" / "_core").is_dir()


def _run(tool, module, args, timeout=600):
    """Run `module` (the tool's Python module) with `args` from the repository root; fail with its output."""
    if not SOURCES:
        pytest.skip("not a source checkout (no pyproject.toml / fastnn/_core next to tests/)")
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[test]')")
    code = f"import sys, {module} as m; sys.argv[0] = {tool!r}; sys.exit(m.main())" if tool == "cython-lint" \
        else None
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", module, *args]
    env = dict(os.environ, NO_COLOR="1")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{tool} {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"


def test_ruff():
    _run("ruff", "ruff", ["check", "--no-cache", "."])


def test_cython_lint():
    _run("cython-lint", "cython_lint.cython_lint", ["fastnn/_core"])


def test_mypy():
    _run("mypy", "mypy", [])      # files, flags and overrides: [tool.mypy] in pyproject.toml


def test_every_noqa_names_its_rules_and_a_reason():
    """A ``# noqa`` comment silences named rules only (ruff's PGH004 checks that) and says why (this test): some
    words of explanation after the codes, e.g. ``# noqa: E402  (after pytest.importorskip)``."""
    if not SOURCES:
        pytest.skip("not a source checkout")
    bad = []
    for path in sorted(ROOT.glob("**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("build", "dist") or rel.parts[0].startswith("."):
            continue
        with open(path, "rb") as f:
            comments = [t for t in tokenize.tokenize(f.readline) if t.type == tokenize.COMMENT]
        for tok in comments:
            m = re.search(r"#\s*noqa\b(?P<rest>.*)$", tok.string, re.IGNORECASE)
            if m is None:
                continue
            codes = re.match(r":\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*", m.group("rest"))
            if codes is None or not re.search(r"[A-Za-z]{3}", m.group("rest")[codes.end():]):
                bad.append(f"{rel}:{tok.start[0]}: {tok.line.strip()}")
    assert not bad, "a # noqa without rule codes or a reason:\n" + "\n".join(bad)


# The modules whose public functions, methods and constructors carry complete annotations (py.typed promises it);
# fastnn.onnx's public functions are export and to_proto.
ANNOTATED = ["model", "callbacks", "losses", "io", "metrics", "optim", "graph", "schedules", "initializers",
             "constraints", "diagnostics", "prune", "sklearn", "distributed", "errors", "params", "datasets/__init__",
             "training/trainer", "layers/*"]


def _unannotated(path):
    """Public functions of one file (module level and in public classes) missing an argument or return annotation."""
    import ast
    tree = ast.parse(path.read_text())
    missing = []

    def visit(body, owner):
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, node.name + ".")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name.startswith("_") and node.name not in ("__init__", "__call__"):
                    continue
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                args = [a for a in args if a.arg not in ("self", "cls")]
                args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
                if any(a.annotation is None for a in args) or (node.returns is None and node.name != "__init__"):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner}{node.name}")

    visit(tree.body, "")
    return missing


def test_the_public_api_is_annotated():
    if not SOURCES:
        pytest.skip("not a source checkout")
    files = [p for pattern in ANNOTATED for p in sorted((ROOT / "fastnn").glob(pattern + ".py"))]
    assert len(files) > len(ANNOTATED)
    missing = [m for p in files for m in _unannotated(p)]
    missing += [m for m in _unannotated(ROOT / "fastnn" / "onnx.py") if m.split()[-1] in ("export", "to_proto")]
    assert not missing, "public functions without complete annotations:\n" + "\n".join(missing)

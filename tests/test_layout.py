"""The layout a reader relies on: the FoPE path on top, scripts above libraries. Sizes are judged by reading,
not capped here: a cap on lines per file pushes code sideways into wide lines and side files."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train", "eval_length", "sample"}  # what a library module never imports
LIBRARY_FOLDERS = ("", "data", "fope_ext", "util")  # the top level, data/, fope_ext/, util/: libraries and their scripts


def python_files():
    return [p for p in ROOT.rglob("*.py")
            if not {".venv", "tests", "_build", "__pycache__"} & set(p.relative_to(ROOT).parts)]


def imported_modules(path):
    """The top-level names of every module a file imports (`import a.b` and `from a.b import c` -> a)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_top_level_holds_the_core_files():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert {"fope.py", "rope_scaling.py", "baselines.py", "model.py", "train.py", "sample.py", "eval_length.py",
            "passkey.py", "configurator.py", "checkpoint.py"} <= set(top)


def test_libraries_never_import_scripts_and_only_experiments_import_experiments():
    for path in python_files():
        folder = path.relative_to(ROOT).parts[0] if len(path.relative_to(ROOT).parts) > 1 else ""
        imports = imported_modules(path)
        if folder in LIBRARY_FOLDERS:
            assert not imports & SCRIPTS, f"{path.relative_to(ROOT)} imports {imports & SCRIPTS}"
        if folder != "experiments":
            assert "experiments" not in imports, f"{path.relative_to(ROOT)} imports experiments/"


def test_the_readme_stays_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme  # nothing outside the repository
    for link in ("results/demo.md", "results/extend.md", "results/ablate.md", "results/lens/lens.md", "results/bench.md"):
        assert link in readme and (ROOT / link).is_file(), link

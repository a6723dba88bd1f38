"""House rules a researcher relies on: detect.py loads only what it uses, and no function is too long to read."""
import ast
import json
import subprocess
import sys

from PIL import Image

from wildcapture.paths import REPO_ROOT

MAX_DETECT_MODULES = 25
MAX_FUNCTION_LINES = 60
# Run detect.py's main as `python detect.py ...` would, then list the package's modules it loaded.
_COUNT = """
import json, runpy, sys
sys.argv = ["detect.py", *sys.argv[1:]]
runpy.run_path("detect.py", run_name="__main__")
print(json.dumps(sorted(m for m in sys.modules if m == "wildcapture" or m.startswith("wildcapture."))))
"""


def test_detect_on_one_image_imports_at_most_25_of_the_package_modules(tiny_cae, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), (120, 90, 60)).save(folder / "one.jpg")
    out = tmp_path / "out" / "d.csv"
    done = subprocess.run([sys.executable, "-c", _COUNT, str(folder), "--cae", str(tiny_cae / "cae" / "best.pth"),
                           "--out", str(out), "--device", "cpu", "--workers", "0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.splitlines()[-1])
    assert out.is_file() and out.with_suffix(".html").is_file()  # the default run: CSV, JSON and review page
    assert "wildcapture.detection.engine" in modules and "wildcapture.ood.baselines" not in modules
    assert len(modules) <= MAX_DETECT_MODULES, modules


def _functions(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_of_the_project_is_over_60_lines():
    sources = [*REPO_ROOT.joinpath("wildcapture").rglob("*.py"), *REPO_ROOT.joinpath("benchmarks").glob("*.py"),
               *REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("*/*.py")]
    long = [f"{path.relative_to(REPO_ROOT)}:{line} {name} ({n} lines)" for path in sources
            for name, line, n in _functions(path) if n > MAX_FUNCTION_LINES]
    assert len(sources) > 60 and not long, long

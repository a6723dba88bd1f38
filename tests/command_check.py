"""Checking the commands of markdown files: every `python SCRIPT ...` line of a ```bash block is run with `--check`
(the entry points that have it) or has its options checked against the script's argparse (the other scripts)."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

CHECKED = ("Train_Vit_Classifier/train.py", "Test_Classifier/test_classifier.py", "AutoEncoder/train.py",
           "AutoEncoder/test_autoencoder.py", "reproduce.py", "detect.py", "benchmarks/seeds.py")
_FENCE = re.compile(r"^```(\w*)\s*$")
_MISSING = re.compile(r"not found|not there|no such file|missing", re.IGNORECASE)
_PATH = re.compile(r"(?<![\w:])(/?[\w.~-]+(?:/[\w.<>-]+)+/?)")


def commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, argv from the script on) of every command of ```bash blocks that runs a Python script:
    `python SCRIPT ...`, or `torchrun [options] SCRIPT ...`; continuation lines joined, comments dropped, a
    line of several commands (`&&`, `;`) cut into them."""
    found, language, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line.strip())
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language not in ("bash", "sh", "shell"):
            continue
        start = start if pending else number
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        tokens, pending = shlex.split(pending, comments=True), ""
        for part in _split(tokens):
            script = next((i for i, t in enumerate(part) if t.endswith(".py")), None)
            if script is not None and part[0] in ("python", "python3", "torchrun"):
                found.append((start, part[script:]))
    return found


def _split(tokens: list[str]) -> list[list[str]]:
    """The commands of a shell line's tokens, cut at `&&`, `||`, `;` and `|`."""
    parts: list[list[str]] = [[]]
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def _absent_here(error: str, repo: Path) -> bool:
    """True when `error` stops at something this machine lacks: a file it says is missing and names (data or
    weights to download), or a CUDA device."""
    paths = [p for p in _PATH.findall(error) if "://" not in p and "<" not in p]
    missing_file = bool(_MISSING.search(error)) and any(not (repo / p).exists() for p in paths)
    return missing_file or "CUDA is not available" in error


# Runs each command given as a JSON list of argvs in this one process (torch imported once), as
# `python SCRIPT ARGS --check` would; prints a JSON list of [exit status, last line of stderr].
_RUNNER = """
import contextlib, io, json, runpy, sys
results = []
for argv in json.loads(sys.argv[1]):
    err, code = io.StringIO(), 0
    sys.argv = [*argv, "--check"]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception as exc:
            code, _ = 1, print(f"{type(exc).__name__}: {exc}", file=err)
    lines = err.getvalue().strip().splitlines()
    results.append([code, lines[-1] if lines else ""])
print(json.dumps(results))
"""


def check_entry_points(commands_: list[list[str]], repo: Path) -> list[str | None]:
    """For each command (argv, script first) of an entry point, None when its `--check` passes in `repo`: exit 0,
    or 2 with an error about what this machine lacks (a missing file it names, or CUDA); else why not."""
    done = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(commands_)], cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the command runner failed: {done.stderr[-2000:]}")
    return [None if code == 0 or (code == 2 and _absent_here(error, repo)) else f"--check exited {code}: {error}"
            for code, error in json.loads(done.stdout.splitlines()[-1])]


def check_options(argv: list[str], repo: Path) -> str | None:
    """None when the script `argv[0]` (in `repo`) declares every `--option` that `argv` gives it (its argparse
    `add_argument` calls, read from the source, or its `--help` where it builds option names); else which it
    lacks."""
    tree = ast.parse((repo / argv[0]).read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "attr", "") ==
             "add_argument"]
    declared = {arg.value for node in calls for arg in node.args if isinstance(arg, ast.Constant)}
    if any(not isinstance(arg, ast.Constant) for node in calls for arg in node.args):  # names built at run time
        declared = set(subprocess.run([sys.executable, argv[0], "--help"], cwd=repo, capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300).stdout.split())
    unknown = [t for t in argv[1:] if t.startswith("--") and t.split("=")[0] not in declared | {"--help"}]
    return f"unknown option(s) {', '.join(unknown)}" if unknown else None


def failures(markdown: dict[str, str], repo: Path, substitutions: dict[str, str]) -> list[str]:
    """"file:line: command: reason" for every command of the markdown texts ({name: text}) that does not pass, in
    file and line order; `substitutions` replace placeholder arguments (e.g. an input folder) first."""
    todo = [(name, line, [substitutions.get(t, t) for t in argv]) for name, text in markdown.items()
            for line, argv in commands(text)]
    entry = [argv for _, _, argv in todo if argv[0] in CHECKED]
    checked = iter(check_entry_points(entry, repo) if entry else [])
    reasons = [next(checked) if argv[0] in CHECKED else check_options(argv, repo) for _, _, argv in todo]
    return [f"{name}:{line}: {shlex.join(argv)}: {reason}" for (name, line, argv), reason in zip(todo, reasons)
            if reason]

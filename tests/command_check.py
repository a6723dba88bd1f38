"""Checking the commands of markdown files: every `python SCRIPT ...` line of a ```bash block is run with `--check`
(the entry points that have it) or has its options checked against `--help` (the other scripts)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def check_command(argv: list[str], repo: Path, substitutions: dict[str, str]) -> str | None:
    """None when the command `argv` (script first, run in `repo`) passes; else why not. An entry point's
    `--check` must exit 0, or 2 with an error about what this machine lacks (a missing file it names, or CUDA);
    another script must
    accept every option the command gives it."""
    argv = [substitutions.get(token, token) for token in argv]
    script, env = argv[0], {**os.environ, "PYTHONPATH": str(repo)}
    if script in CHECKED:
        done = subprocess.run([sys.executable, *argv, "--check"], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=300)
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        if done.returncode == 0 or (done.returncode == 2 and _absent_here(error, repo)):
            return None
        return f"--check exited {done.returncode}: {error or done.stdout[-500:]}"
    done = subprocess.run([sys.executable, script, "--help"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        return f"--help exited {done.returncode}: {done.stderr[-500:]}"
    unknown = [t for t in argv[1:] if t.startswith("--") and t.split("=")[0] not in done.stdout]
    return f"unknown option(s) {', '.join(unknown)}" if unknown else None


def failures(markdown: dict[str, str], repo: Path, substitutions: dict[str, str]) -> list[str]:
    """"file:line: command: reason" for every command of the markdown texts ({name: text}) that does not pass,
    in file and line order (two commands are checked at a time)."""
    todo = [(name, line, argv) for name, text in markdown.items() for line, argv in commands(text)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        reasons = list(pool.map(lambda job: check_command(job[2], repo, substitutions), todo))
    return [f"{name}:{line}: {shlex.join(argv)}: {reason}" for (name, line, argv), reason in zip(todo, reasons)
            if reason]

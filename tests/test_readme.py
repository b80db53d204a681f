"""README.md's examples run as written, and its command lines parse.

Python: every fenced ``python`` block of README.md runs in one child process, in README order,
in one shared namespace, as a reader pasting them one after another into one session would
(later blocks use the ``pipe`` and ``ds`` of earlier ones). The child runs in a temporary
folder (files the examples write land there), offline (``HF_HUB_OFFLINE=1``), on the
embedded model, and imports the installed ``dit_sparse``. Only sizes and step numbers are
rewritten, by :data:`CI_SIZES`, so that the whole file runs in seconds on one thread; every
entry of that table must match somewhere in the blocks, so the table cannot go stale
silently when the README changes. Every pipeline call in the blocks must pass its size
(``num_frames``, ``height``, ``width``, ``num_inference_steps``): without one a Wan pipeline
makes 81 frames at 480x832 in 50 steps.

Shell: every line of a fenced ``bash`` block that starts with ``dit-sparse`` (backslash
continuations joined, ``#`` comments dropped) must parse with the CLI's own parser
(``dit_sparse.cli.build_parser``); ``pip``, ``pytest``, ``python`` and ``bash`` lines are
not checked. That catches README drift against the CLI's options.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

#: (README text, CI text): the only rewrites of the README's Python before it runs. Sizes and
#: step numbers only. 128x128 -> 32x32 pixels and 9 -> 5 frames give the embedded model a
#: 3 x 8 x 8 token grid; 20 -> 4 steps keeps a phase start (10 -> 2) inside the schedule;
#: the op example's 16 x 30 x 52 token grid (24,960 tokens) becomes 8 x 12 x 16 (1,536).
CI_SIZES = [
    ("height=128", "height=32"),
    ("width=128", "width=32"),
    ("num_frames=9", "num_frames=5"),
    ("num_inference_steps=20", "num_inference_steps=4"),
    ("phases=[(10, 0.25)]", "phases=[(2, 0.25)]"),
    ("grid=(16, 30, 52)", "grid=(8, 12, 16)"),
]

#: Keyword arguments every pipeline call of the README must pass.
SIZE_KEYWORDS = ("num_frames=", "height=", "width=", "num_inference_steps=")

#: Runs in the child: the blocks from a JSON file, each compiled under a name that says which
#: README block (and line) a traceback points into.
RUNNER = textwrap.dedent("""\
    import json, sys
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__"}
    for block in blocks:
        print(f"--- {block['name']}", flush=True)
        exec(compile(block["code"], block["name"], "exec"), namespace)
    print("--- all blocks ran", flush=True)
""")


def fenced_blocks(text: str, language: str):
    """``(first line number, code)`` of every fenced block of ``language``, in order."""
    blocks = []
    for match in re.finditer(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S):
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((line, match.group(1)))
    return blocks


def call_arguments(code: str, callee: str):
    """The argument text of every call ``callee(...)`` in ``code`` (parentheses balanced)."""
    calls = []
    for match in re.finditer(rf"\b{re.escape(callee)}\(", code):
        depth, start = 1, match.end()
        i = start
        while depth and i < len(code):
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        calls.append(code[start:i - 1])
    return calls


def command_lines(text: str):
    """``(line number, command)`` of every ``dit-sparse ...`` line of the bash blocks."""
    commands = []
    for first, block in fenced_blocks(text, "bash"):
        joined, start = "", None
        for offset, line in enumerate(block.splitlines()):
            if start is None:
                start = first + offset
            stripped = line.rstrip()
            if stripped.endswith("\\"):
                joined += stripped[:-1] + " "
                continue
            joined += stripped
            if joined.strip().startswith("dit-sparse"):
                commands.append((start, joined.strip()))
            joined, start = "", None
    return commands


@pytest.fixture(scope="module")
def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def test_every_python_block_runs(readme_text, tmp_path):
    blocks = fenced_blocks(readme_text, "python")
    assert len(blocks) >= 3, f"expected the README's Python examples, found {len(blocks)} python blocks"

    for line, code in blocks:
        for args in call_arguments(code, "pipe"):
            missing = [kw for kw in SIZE_KEYWORDS if kw not in args]
            assert not missing, f"README.md line {line}ff: pipe({args.strip()[:60]}...) does not pass {missing}"

    matched = {old: 0 for old, _ in CI_SIZES}
    ci_blocks = []
    for i, (line, code) in enumerate(blocks, 1):
        for old, new in CI_SIZES:
            matched[old] += code.count(old)
            code = code.replace(old, new)
        ci_blocks.append({"name": f"README.md python block {i} (line {line})", "code": code})
    stale = [old for old, count in matched.items() if count == 0]
    assert not stale, f"CI_SIZES entries that match nothing in README.md's python blocks: {stale}"

    (tmp_path / "blocks.json").write_text(json.dumps(ci_blocks))
    (tmp_path / "run_readme.py").write_text(RUNNER)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)  # set by conftest for the kernel tests; a reader has none
    proc = subprocess.run([sys.executable, "run_readme.py", "blocks.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README examples failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "--- all blocks ran" in proc.stdout


def test_every_command_line_parses(readme_text):
    from dit_sparse.cli import build_parser

    commands = command_lines(readme_text)
    assert len(commands) >= 5, f"expected the README's dit-sparse command lines, found {commands}"
    failures = []
    for line, command in commands:
        argv = shlex.split(command, comments=True)[1:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:  # --help exits 0; a usage error exits 2
            if exc.code not in (0, None):
                failures.append(f"README.md line {line}: {command}")
    assert not failures, "command lines the CLI does not accept (its error is above):\n" + "\n".join(failures)


def test_command_lines_are_found(readme_text):
    """The extraction itself: continuations joined, comments kept out of the arguments."""
    text = "```bash\ndit-sparse generate \"a b\" -o x.gif \\\n    --dense   # dense\npip install .\n```\n"
    (line, command), = command_lines(text)
    assert line == 2
    assert shlex.split(command, comments=True) == ["dit-sparse", "generate", "a b", "-o", "x.gif", "--dense"]

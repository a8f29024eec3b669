"""What the plugin contract costs in code: Python lines and untyped seams at given revisions (issue 26's bar).

    python benchmarks/contract_size.py 5c0ef2b^ 5c0ef2b HEAD .

For each revision (a git revision, or ``.`` for the working tree) prints one JSON line with:

- ``lines``: Python lines under ``ssl_domains/``, ``plugins/``, ``tests/`` and ``examples/plugin-template/``;
- ``any``: lines that use ``Any`` in those folders (``dict[str, Any]`` included);
- ``untyped_seams``: parameters named ``cfg``, ``model`` or ``datamodule`` annotated ``Any``, the values that
  cross between the core and a plugin or between a plugin's own modules;
- ``plugin_members``: the public names a ``ModalityPlugin`` subclass meets (its class body, at that revision).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path

FOLDERS = ("ssl_domains", "plugins", "tests", "examples/plugin-template")
SEAM = re.compile(r"\b(cfg|model|datamodule)\s*:\s*Any\b")
ANY = re.compile(r"\bAny\b")


def _files(rev: str) -> dict[str, str]:
    """Path -> text of every Python file of ``FOLDERS`` at ``rev`` (``.``: the working tree, tracked or not)."""
    if rev == ".":
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *FOLDERS], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        return {p: Path(p).read_text() for p in out if p.endswith(".py") and Path(p).is_file()}
    out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *FOLDERS], capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    return {
        p: subprocess.run(["git", "show", f"{rev}:{p}"], capture_output=True, text=True, check=True).stdout
        for p in out
        if p.endswith(".py")
    }


def _plugin_members(files: dict[str, str]) -> int:
    tree = ast.parse(files["ssl_domains/plugin.py"])
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModalityPlugin").body
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return len({n for n in names if not n.startswith("_")})


def measure(rev: str) -> dict:
    files = _files(rev)
    row: dict = {"revision": rev, "lines": {}, "any": {}, "untyped_seams": {}}
    for folder in FOLDERS:
        texts = [t for p, t in files.items() if p.startswith(folder + "/")]
        row["lines"][folder] = sum(t.count("\n") for t in texts)
        row["any"][folder] = sum(len([ln for ln in t.splitlines() if ANY.search(ln)]) for t in texts)
        row["untyped_seams"][folder] = sum(len(SEAM.findall(t)) for t in texts)
    row["plugin_members"] = _plugin_members(files)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions, or . for the working tree")
    for rev in parser.parse_args().revisions:
        print(json.dumps(measure(rev)))


if __name__ == "__main__":
    main()

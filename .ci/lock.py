"""The lock file: every install comes from requirements.lock (exact versions, with hashes).

    python .ci/lock.py compile [--upgrade]  re-resolve pyproject.toml under constraints.txt (keeps current pins
                                           unless --upgrade, or unless they no longer satisfy the inputs)
    python .ci/lock.py check               offline: the lock was made from today's pyproject.toml and
                                           constraints.txt, satisfies every requirement in them, and hashes
                                           every pin
    python .ci/lock.py prune               uninstall what the lock does not list (an old venv's leftovers)

Uses only the standard library and `packaging` (vendored by pip), so it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"
LOCK = ROOT / "requirements.lock"
# The lock is for the machines this project runs on: CPython 3.11 on Linux x86_64.
TARGET = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]
EXTRAS = ["demo", "test"]
FINGERPRINT = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)
# Installers, not dependencies: never pruned.
KEEP = {"pip"}

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def _constraint_lines() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in CONSTRAINTS.read_text().splitlines())
    return [line for line in lines if line]


def inputs_fingerprint() -> str:
    """A digest of everything that decides the resolution: the declared requirements and our pins."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in sorted(project.get("optional-dependencies", {}).items())},
        "constraints": sorted(_constraint_lines()),
        "extras": EXTRAS,
        "target": TARGET,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def read_lock(text: str | None = None) -> dict[str, dict]:
    """name -> {"version", "hashes"} for each pin of the lock."""
    text = LOCK.read_text() if text is None else text
    pins: dict[str, dict] = {}
    for block in re.split(r"\n(?=\S)", text):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        name, sep, version = head.partition("==")
        if not sep:
            raise SystemExit(f"{LOCK.name}: not an exact pin: {head!r}")
        name = name.split("[", 1)[0].strip()
        pins[canonicalize_name(name)] = {"version": version.strip(), "hashes": re.findall(r"--hash=sha256:\w+", block)}
    return pins


def _declared_requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    own = canonicalize_name(project["name"])
    wanted = list(project.get("dependencies", []))
    for extra in EXTRAS:
        wanted += project.get("optional-dependencies", {}).get(extra, [])
    wanted += _constraint_lines()
    # The project's own extras ("creator-dataset-marketplace[demo]") are already included above.
    return [r for r in map(Requirement, wanted) if canonicalize_name(r.name) != own]


def check() -> list[str]:
    if not LOCK.exists():
        return [f"{LOCK.name} is missing: run `make lock`"]
    text = LOCK.read_text()
    problems = []
    found = FINGERPRINT.search(text)
    if not found or found.group(1) != inputs_fingerprint():
        problems.append(
            f"{LOCK.name} was not made from the current pyproject.toml and constraints.txt: run `make lock` "
            "and commit the new lock"
        )
    pins = read_lock(text)
    for requirement in _declared_requirements():
        pin = pins.get(canonicalize_name(requirement.name))
        if requirement.marker and not requirement.marker.evaluate({"python_version": "3.11", "sys_platform": "linux"}):
            continue
        if pin is None:
            problems.append(f"{requirement} is declared but not in {LOCK.name}")
        elif not requirement.specifier.contains(pin["version"], prereleases=True):
            problems.append(f"{requirement} is declared but {LOCK.name} pins {requirement.name}=={pin['version']}")
    problems += [
        f"{name}=={pin['version']} has no hash in {LOCK.name}" for name, pin in pins.items() if not pin["hashes"]
    ]
    return problems


def compile_lock(upgrade: bool) -> None:
    command = [
        "uv", "pip", "compile", "pyproject.toml", *(f"--extra={extra}" for extra in EXTRAS),
        "--constraint=constraints.txt", "--generate-hashes", *TARGET,
        "--output-file=requirements.lock", "--custom-compile-command=make lock",
    ]  # fmt: skip
    if upgrade:
        command.append("--upgrade")
    uv = Path(sys.executable).parent / "uv"
    command[0] = str(uv) if uv.exists() else "uv"
    subprocess.run(command, cwd=ROOT, check=True)
    text = FINGERPRINT.sub("", LOCK.read_text()).lstrip("\n")
    LOCK.write_text(f"# inputs-sha256: {inputs_fingerprint()}\n{text}")


def prune() -> None:
    from importlib import metadata

    pinned = set(read_lock())
    installed = {dist.metadata["Name"] for dist in metadata.distributions() if dist.metadata["Name"]}
    extra = sorted(name for name in installed if canonicalize_name(name) not in pinned | KEEP)
    if extra:
        print(f"Removing what {LOCK.name} does not list: {', '.join(extra)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *extra], check=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["compile"]:
        compile_lock(upgrade="--upgrade" in argv)
        return 0
    if argv[:1] == ["check"]:
        problems = check()
        for problem in problems:
            print(f"lock check: {problem}", file=sys.stderr)
        if not problems:
            print(f"{LOCK.name} matches pyproject.toml and constraints.txt ({len(read_lock())} pins, all hashed)")
        return 1 if problems else 0
    if argv[:1] == ["prune"]:
        prune()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

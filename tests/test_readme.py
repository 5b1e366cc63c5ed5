"""Every siamrdm command line in README.md parses with today's options (the quickstart's two commands are run
by CI itself; each command form is run end to end, on small data, by the test of its module)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from siamrdm import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The `siamrdm ...` command lines of the README's shell blocks (continuation lines joined, comments and
    `pip install ... &&` prefixes dropped; torchrun's launcher options removed)."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            line = line.split("&&")[-1].strip()
            line = re.sub(r"^torchrun( --[\w-]+ \S+)* -m siamrdm", "siamrdm", line)
            line = re.sub(r"^\S+=\S+ ", "", line)  # an environment assignment before the command
            if line.startswith("siamrdm "):
                commands.append(line)
    return commands


def test_the_readme_has_commands() -> None:
    assert len(readme_commands()) >= 8


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command: str) -> None:
    args = cli.build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


def readme_api_names() -> set[str]:
    """The names the README's "The Python API" section imports from siamrdm: its code's `from siamrdm import (...)`
    and the "Also importable" list (a name in backticks, alone or called; `evaluation.to_frame()` is a method)."""
    section = README.read_text().split("### The Python API", 1)[1].split("\n## ", 1)[0]
    imported = re.search(r"from siamrdm import \((.*?)\)", section, flags=re.S).group(1)
    names = {name.strip() for name in imported.split(",")}
    also = section.split("Also importable from `siamrdm`:", 1)[1].split("\n\n", 1)[0]
    return names | set(re.findall(r"`([A-Za-z_]\w*)(?:`|\()", also))


def test_the_readme_api_section_and_all_agree() -> None:
    import siamrdm

    assert readme_api_names() == set(siamrdm.__all__) - {"__version__"}
    for name in siamrdm.__all__:  # every public name resolves
        assert getattr(siamrdm, name) is not None


def test_the_layout_section_names_every_module() -> None:
    """'How the code is laid out' is drawn from the tree: every module of src/siamrdm is named there, and it names
    no file that is gone."""
    root = README.parent
    section = README.read_text().split("## How the code is laid out")[1].split("\n## ")[0]
    modules = {p.name for p in (root / "src" / "siamrdm").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    named = {name for name in re.findall(r"`([\w/]+\.py)`", section) if "/" not in name}
    assert modules - named == set(), "modules the README's layout section does not name"
    gone = {name for name in named if name not in modules and not (root / "benchmarks" / name).is_file()}
    assert gone == set(), "files the layout section names that are in neither src/siamrdm nor benchmarks/"

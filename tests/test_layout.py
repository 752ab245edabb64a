"""README's "Layout" section is true: it names every library module where it lives, and each
name its "Where a change goes" list sends a newcomer to is defined in a module that bullet names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Packages whose every module the Layout lists, one line each under the package's line.
LISTED_PACKAGES = ("turnd", "turnd/core", "turnd/fastpath", "turnd/workers")
#: Backticked words of the list that are not names of code (a command's name).
NOT_CODE = frozenset({"turnctl"})


def _layout() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Layout\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end == -1 else end]


def _listing() -> dict[str, set[str]]:
    """Package line of the indented listing -> the module file names listed under it."""
    listed: dict[str, set[str]] = {}
    package = ""
    for line in _layout().splitlines():
        top = re.match(r"    ([\w/]+)/\s", line)
        if top:
            package = top.group(1)
            listed.setdefault(package, set())
            continue
        module = re.match(r"      (\w+\.py)\s", line)
        if module and package:
            listed[package].add(module.group(1))
    return listed


def _bullets() -> list[str]:
    section = _layout().split("Where a change goes", 1)[1]
    return [" ".join(b.split()) for b in re.split(r"\n- ", section)[1:]]


@pytest.mark.parametrize("package", LISTED_PACKAGES)
def test_every_module_of_the_package_is_listed_and_every_listed_one_exists(package: str) -> None:
    """A module added without a Layout line, or a line left behind by a removed one, fails."""
    skip = ("__init__.py", "__main__.py")
    present = {p.name for p in (REPO / package).glob("*.py") if p.name not in skip}
    listed = _listing().get(package, set())
    assert sorted(present - listed) == [], f"not in README's Layout under {package}/"
    assert sorted(listed - present) == [], f"listed under {package}/ but missing"


def test_every_listed_module_exists() -> None:
    """Lines under stun/ and the rest name real files too."""
    missing = [
        f"{package}/{name}"
        for package, names in _listing().items()
        for name in names
        if not (REPO / package / name).is_file()
    ]
    assert missing == []


def test_each_name_of_where_a_change_goes_is_defined_in_a_module_of_its_bullet() -> None:
    """`Name` in a bullet is a class, function, constant or member defined in one of the files
    that bullet names; every file it names exists."""
    bullets = _bullets()
    assert len(bullets) >= 5  # attribute, quota, turnctl command, cluster message, action
    for bullet in bullets:
        words = re.findall(r"`([^`]+)`", bullet)
        paths = [w for w in words if w.endswith(".py") or w.endswith("/")]
        for path in paths:
            assert (REPO / path).exists(), f"{path} (in: {bullet[:60]}...)"
        sources = [(REPO / p).read_text(encoding="utf-8") for p in paths if p.endswith(".py")]
        for name in words:
            if name in paths or name in NOT_CODE:
                continue
            definition = re.compile(
                rf"^\s*(?:class |def |async def )?{re.escape(name)}\b\s*[(:=]", re.MULTILINE
            )
            assert any(definition.search(s) for s in sources), f"{name} not defined in {paths}"

"""
The public API (README, "The public API"): each public module declares it in
C{__all__}, every name there exists, and every class and function of its own
has a docstring (the API reference, built by pydoctor in .ci/run with its
warnings as errors, renders them).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

PUBLIC = [
    "streamsvc.interfaces",
    "streamsvc.plugin",
    "streamsvc.producers",
    "streamsvc.stages",
    "streamsvc.pull",
    "streamsvc.errors",
    "streamsvc.testing",
    "streamsvc.tasks.resource",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_exists_and_says_what_it_is(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
    exported = module.__all__
    assert exported and len(set(exported)) == len(exported)
    undocumented = []
    for attribute in exported:
        obj = getattr(module, attribute)  # AttributeError: listed but missing
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
            if not obj.__dict__.get("__doc__") if inspect.isclass(obj) else not obj.__doc__:
                undocumented.append(attribute)
    assert undocumented == []


def test_the_readme_lists_the_public_modules() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("**The public API**", 1)[1].split("\n\n", 2)[1]
    for name in PUBLIC:
        assert f"`{name}`" in section, name

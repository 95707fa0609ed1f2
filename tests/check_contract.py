"""The contract every exercise check keeps, as two parametrised tests each tests/test_checks*.py module adopts.

For every case ``(check, reference answer, wrong answers)``: the reference passes; every wrong answer is
reported as a failure with a hint (and raises ``ExerciseFailed`` in strict mode, as under ``make test``);
a stub that raises ``NotImplementedError`` is "not attempted" in both modes and never raises.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

from fftd_course import blocks, checks


SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"


def chapter_function(chapter: str, name: str, **namespace):
    """The function ``name`` exactly as ``solutions/<chapter>.py`` defines it (e.g. the buggy code an exercise
    hands the learner), compiled alone with ``namespace`` as its globals, so a test follows the chapter's text."""
    path = SOLUTIONS / f"{chapter}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    assert len(found) == 1, f"{path.name} defines {name} {len(found)} times at its top level"
    namespace = {"__builtins__": __builtins__, **namespace}
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise")


def contract_tests(cases: list, stubs: dict | None = None):
    """Return the two test functions for ``cases``; ``stubs`` maps a check to a stub other than :func:`stub`."""
    stubs = stubs or {}
    parametrize = pytest.mark.parametrize("check, answer, wrong", cases, ids=[c[0].__name__ for c in cases])

    @parametrize
    def test_reference_passes_wrong_fails_stub_not_attempted(check, answer, wrong, lenient_env, capsys):
        assert check(answer).status == "pass"
        for bad in wrong:
            result = check(bad)
            assert result.status == "fail", getattr(bad, "__name__", bad)
            assert "hint" in result.message
        assert check(stubs.get(check, stub)).status == "not attempted"
        out = capsys.readouterr().out
        assert "PASS" in out and "FAIL" in out and "not attempted yet" in out

    @parametrize
    def test_strict_mode_raises_on_every_wrong_answer(check, answer, wrong, strict):
        assert check(answer)
        for bad in wrong:
            with pytest.raises(checks.ExerciseFailed):
                check(bad)
        assert check(stubs.get(check, stub)).status == "not attempted"

    return test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer


class PostActivationLayers(nn.Module):
    """The layers of chapter 01's post-activation block (its stub), shared by the tests' answers to that exercise:
    each answer subclasses it and writes only ``forward``."""

    def __init__(self, c_in: int, c_out: int, num_groups: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = blocks.group_norm(c_out, num_groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = blocks.group_norm(c_out, num_groups)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        raise NotImplementedError

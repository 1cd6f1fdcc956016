"""Every exception class of the package is an `InputError` (exit 2) or a `RunError` (exit 1), never both.

The command line maps the two bases in one place (cli.py's ClaspGroup), so a
class outside both trees would reach the user as an unexpected error. The test
imports every module of the package and looks at each exception class defined
there.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import clasp
from clasp.errors import ClaspError, InputError, RunError

BASES = {"clasp.errors.ClaspError", "clasp.errors.InputError", "clasp.errors.RunError"}


def package_modules() -> list[str]:
    """Every module of the package (`python -m` entry points left out: importing one runs it)."""
    names = ["clasp"]
    for info in pkgutil.walk_packages(clasp.__path__, prefix="clasp."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def exception_classes() -> dict[str, type]:
    """`module.Class` -> class, for every exception class defined (not imported) in a module of the package."""
    found = {}
    for name in package_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_module_imports_and_defines_its_errors_under_the_two_bases() -> None:
    classes = exception_classes()
    assert set(classes) >= BASES and len(classes) > 30
    outside = sorted(name for name, cls in classes.items()
                     if name not in BASES and not issubclass(cls, (InputError, RunError)))
    both = sorted(name for name, cls in classes.items() if issubclass(cls, InputError) and issubclass(cls, RunError))
    assert not both, f"both an InputError and a RunError: {both}"
    assert outside == [], f"outside InputError and RunError: {outside}"


def test_the_bases_carry_their_exit_codes() -> None:
    assert issubclass(InputError, ClaspError) and issubclass(RunError, ClaspError)
    assert (InputError.exit_code, RunError.exit_code) == (2, 1)
    for name, cls in exception_classes().items():
        if issubclass(cls, ClaspError) and name not in BASES:
            assert cls.exit_code == (2 if issubclass(cls, InputError) else 1), name


def test_builtin_second_bases_are_kept_where_callers_catch_them() -> None:
    from clasp.finetune.config import FinetuneConfigError
    from clasp.hardware.precision import PrecisionError
    from clasp.pretraining.backbone import BackboneError
    from clasp.pretraining.config import ConfigError
    from clasp.pretraining.stream import BadRowError

    for cls in (ConfigError, FinetuneConfigError, BackboneError, PrecisionError):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError), cls
    assert issubclass(BadRowError, RunError) and issubclass(BadRowError, ValueError)

"""The routing package's public names: everything callers need is re-exported, nothing more."""

from __future__ import annotations

import inspect

from pipeline.core import routing
from pipeline.core.routing import artifact, evaluation, features


def test_every_public_name_of_the_modules_is_exported_and_resolves() -> None:
    defined = {name for mod in (artifact, evaluation, features)
               for name, obj in vars(mod).items()
               if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
               and obj.__module__ == mod.__name__}
    assert defined <= set(routing.__all__), sorted(defined - set(routing.__all__))
    for name in routing.__all__:
        assert hasattr(routing, name), name

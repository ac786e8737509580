"""pipeline.sdk's public surface: exactly these names, each re-exported from a submodule.

Adding or dropping a public name is a deliberate change: edit PUBLIC here with it.
"""

import inspect

import pipeline.sdk as sdk

PUBLIC = [
    "AsyncUsageProducer",
    "CallMeter",
    "Reservation",
    "Route",
    "Router",
    "UsageProducer",
    "anthropic_usage",
    "decide",
    "instrument",
    "meter_run",
    "reserve",
    "route_prompt",
]


def test_all_is_exactly_the_public_names_sorted() -> None:
    assert PUBLIC == sorted(PUBLIC)
    assert sdk.__all__ == PUBLIC


def test_every_public_name_resolves() -> None:
    for name in sdk.__all__:
        assert getattr(sdk, name, None) is not None, name
    namespace: dict[str, object] = {}
    exec("from pipeline.sdk import *", namespace)  # noqa: S102 - the star import itself
    assert sorted(n for n in namespace if n != "__builtins__") == PUBLIC


def test_the_package_only_re_exports() -> None:
    for name in sdk.__all__:
        module = getattr(sdk, name).__module__
        assert module.startswith("pipeline.sdk."), (name, module)
    # nothing defined in __init__ itself, exported or not
    own = [name for name, obj in vars(sdk).items()
           if (inspect.isfunction(obj) or inspect.isclass(obj))
           and obj.__module__ == sdk.__name__]
    assert own == []

"""System settings from the environment: ``BIGACTOR_<SYSTEM>_<OPTION>``.

Every keyword option of a system's constructor may also come from the environment, so a
program picks its system and tunes it without a code change::

    BIGACTOR_SYSTEM=local BIGACTOR_LOCAL_FORKSERVER=no BIGACTOR_LOCAL_KEEPALIVE=timeout=30 python prog.py

The variable is ``BIGACTOR_``, the system's ``name``, ``_`` and the option's name, in upper case
(other characters than letters and digits become ``_``). A keyword given to the constructor wins
over the environment. Values are read by the option's type:

* ``str`` as it is; ``int``, ``float`` as Python reads them; ``bool`` from ``1``/``0``,
  ``true``/``false``, ``yes``/``no`` (any case);
* ``list[str]`` (or ``tuple[str, ...]``) comma-separated: ``a,b,c`` (empty: no items);
* ``dict[str, str]`` as ``k=v,k2=v2``;
* an attrs class (``KeepaliveConfig``, ``WatchdogConfig``) as ``field=value,...``, each value
  by its field's type, over the option's default: ``BIGACTOR_LOCAL_KEEPALIVE=timeout=30``
  keeps the system's keepalive period;
* ``X | None``: empty or ``none`` is None, anything else an ``X``.

A value that does not read as its type is a ValueError naming the variable and the type
expected, raised when the system is constructed. The mechanism is :class:`SettingsMeta`, the
metaclass of ``bigactor.System``: every attrs-based subclass gets it, however it is built
(``open_cluster("name")``, ``LocalSystem(...)``).
"""

from __future__ import annotations

import abc
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


def variable(system: str, option: str) -> str:
    """The environment variable of ``option`` of the system called ``system``."""
    return re.sub(r"[^A-Z0-9]", "_", f"BIGACTOR_{system}_{option}".upper())


def environment_options(
    cls: type, given: Mapping[str, Any], environ: Mapping[str, str] | None = None, positional: int = 0
) -> dict[str, Any]:
    """The options of ``cls`` set in ``environ`` (default: ``os.environ``), read by type.

    ``cls`` is an attrs class with a ``name``; its options are its public ``__init__``
    parameters. Options in ``given``, or among the first ``positional`` parameters, are left
    out: what the caller passed wins. Anything but an attrs class with a string ``name`` has
    no options. ValueError names the variable whose value does not read.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not attrs.has(cls):
        return {}
    environ = os.environ if environ is None else environ
    prefix = variable(name, "")
    if not any(k.startswith(prefix) for k in environ):
        return {}  # the common case: nothing to read, no annotations to resolve
    taken = [f.alias for f in attrs.fields(cls) if f.init and not f.kw_only][:positional]
    out: dict[str, Any] = {}
    for f in attrs.fields(cls):
        option = f.alias or f.name
        var = variable(name, option)
        if not f.init or f.name.startswith("_") or option in given or option in taken or var not in environ:
            continue
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = None if default.takes_self else default.factory()
        out[option] = parse(var, environ[var], _option_type(cls, f.name), default)
    return out


def _option_type(cls: type, name: str) -> Any:
    """The type of the field ``name`` of ``cls``: its annotation, evaluated where it was written.

    Not ``typing.get_type_hints``: that evaluates every annotation of every base in the module
    the base reports, and a public class re-homed to ``bigactor`` (``System``) reports one that
    does not hold its annotations' names. The functions of a class keep their true module.
    """
    for klass in cls.__mro__:
        annotation = vars(klass).get("__annotations__", {}).get(name)
        if annotation is None:
            continue
        if not isinstance(annotation, str):
            return annotation
        modules = [klass.__module__, *(getattr(v, "__module__", None) for v in vars(klass).values())]
        for module in dict.fromkeys(m for m in modules if isinstance(m, str) and m in sys.modules):
            try:
                return eval(annotation, vars(sys.modules[module]), dict(vars(klass)))
            except NameError:
                continue
        raise TypeError(f"cannot resolve {annotation!r}, the type of option {name!r} of {cls.__name__}")
    return str


def parse(var: str, value: str, kind: Any, default: Any = None) -> Any:
    """``value`` of the variable ``var`` read as a ``kind`` (see the module docstring)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if value.strip().lower() in ("", "none"):
            return None
        inner = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
        return parse(var, value, inner, default)
    try:
        return _read(value, kind, origin, args, default)
    except _Unsupported as exc:
        raise ValueError(f"{var}: {exc}") from None
    except (ValueError, TypeError) as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise ValueError(
            f"{var}={value!r} is not {_describe(kind)}{detail}; unset it or fix its value"
        ) from None


class _Unsupported(TypeError):
    pass


def _read(value: str, kind: Any, origin: Any, args: tuple[Any, ...], default: Any) -> Any:
    if kind is str:
        return value
    if kind is bool:
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError("")
    if kind is int:
        return int(value.strip())
    if kind is float:
        return float(value.strip())
    if origin in (list, tuple) and args in ((str,), (str, ...)):
        items = [item.strip() for item in value.split(",")] if value.strip() else []
        return items if origin is list else tuple(items)
    if origin is dict and args == (str, str):
        return dict(_pairs(value))
    if isinstance(kind, type) and attrs.has(kind):
        known = {f.name: f for f in attrs.fields(kind) if f.init}
        changes: dict[str, Any] = {}
        for k, v in _pairs(value):
            if k not in known:
                raise ValueError(f"{kind.__name__} has no field {k!r}; it has {', '.join(known)}")
            field_type = _option_type(kind, k)
            try:
                changes[k] = _read(
                    v, field_type, typing.get_origin(field_type), typing.get_args(field_type), None
                )
            except (ValueError, TypeError):
                raise ValueError(f"{k}={v!r} is not {_describe(field_type)}") from None
        return attrs.evolve(default, **changes) if isinstance(default, kind) else kind(**changes)  # type: ignore[misc]
    raise _Unsupported(f"an option of type {_describe(kind)} cannot be set from the environment")


def _pairs(value: str) -> list[tuple[str, str]]:
    pairs = []
    for item in value.split(","):
        if not item.strip():
            continue
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"{item.strip()!r} is not key=value")
        pairs.append((k.strip(), v.strip()))
    return pairs


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return "a bool (1/0, true/false, yes/no)"
    if kind in (int, float, str):
        return f"{'an' if kind is int else 'a'} {kind.__name__}"
    if origin is list:
        return "a comma-separated list (a,b,c)"
    if origin is tuple:
        return "a comma-separated list (a,b,c)"
    if origin is dict:
        return "a comma-separated map (k=v,k2=v2)"
    if isinstance(kind, type) and attrs.has(kind):
        return f"a {kind.__name__} as field=value,... ({', '.join(f.name for f in attrs.fields(kind))})"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return getattr(kind, "__name__", None) or str(kind)


class SettingsMeta(abc.ABCMeta):
    """The metaclass of ``System``: options the constructor was not given come from the
    environment (see the module docstring); an explicit keyword wins."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        found = environment_options(cls, kwargs, positional=len(args))
        return super().__call__(*args, **found, **kwargs)

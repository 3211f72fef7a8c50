"""Settings declared once.

Every setting of an analysis is a field of a settings dataclass (:mod:`imacs.settings`),
declared with :func:`setting`. Its metadata is the one place that says what the CLI flag is,
how the flag's text is read, how a value from the CLI or the Python API becomes the field's
value (and is checked), and whether it changes a run's content. The CLI is generated from
these fields, :func:`imacs.analyze` reads its keywords through them, and the cache keys and
the run fingerprint derive from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import InputError

_KEY = "imacs"


@dataclass(frozen=True)
class Option:
    """How a setting reaches the user.

    Args:
        flag (str, optional): the CLI flag, ``--steps``; None for settings the CLI does not
            offer. The keyword of :func:`imacs.analyze` is the flag without dashes.
        help (str): one line for ``--help``.
        parse (callable, optional): CLI text -> value; raise ``ValueError`` with the fix.
        convert (callable, optional): value (from the CLI or Python) -> field value; raise
            ``ValueError`` with the fix. Also checks the value.
        choices (tuple, optional): the allowed values.
        metavar (str, optional): how ``--help`` names the value.
        result (bool): True when the setting changes a run's numbers (it is part of the
            cache keys and the run's fingerprint); False for batch sizes, the device...
        group (str): the ``--help`` section.
    """

    flag: str | None = None
    help: str = ""
    parse: Callable[[str], Any] | None = None
    convert: Callable[[Any], Any] | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    result: bool = True
    group: str = "settings"

    @property
    def keyword(self) -> str:
        if not self.flag:
            raise ValueError("a setting without a flag has no keyword")
        return self.flag.lstrip("-").replace("-", "_")


def setting(default: Any, **option: Any) -> Any:
    """A dataclass field with ``default`` carrying its :class:`Option`."""
    return dataclasses.field(default=default, metadata={_KEY: Option(**option)})


def option_of(f: dataclasses.Field) -> Option:
    return f.metadata.get(_KEY, Option())


def _nested(f: dataclasses.Field) -> type | None:
    sub = f.default_factory
    return sub if isinstance(sub, type) and dataclasses.is_dataclass(sub) else None


def walk(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, field) of every leaf setting of a settings dataclass, nested ones included
    (a nested settings object is a field whose default_factory is its class)."""
    for f in dataclasses.fields(cls):
        sub = _nested(f)
        if sub is not None:
            yield from walk(sub, (*prefix, f.name))
        else:
            yield (*prefix, f.name), f


def build(cls: type, values: dict[str, Any], base: Any = None) -> Any:
    """An instance of settings class ``cls`` from keywords (flag names): every field whose
    flag matches takes the value; the rest keep their value in ``base`` (an instance of
    ``cls``), or their defaults when there is none."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        sub = _nested(f)
        inner = None if base is None else getattr(base, f.name)
        if sub is not None:
            kwargs[f.name] = build(sub, values, inner)
            continue
        opt = option_of(f)
        if opt.flag and opt.keyword in values:
            kwargs[f.name] = values[opt.keyword]
        elif base is not None:
            kwargs[f.name] = inner
    return cls(**kwargs)


def result_values(obj: Any) -> dict[str, Any]:
    """The settings of ``obj`` that change a run's numbers, nested as the dataclasses are."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if _nested(f) is not None:
            out[f.name] = result_values(value)
        elif option_of(f).result:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def validate(obj: Any) -> None:
    """Check and convert every field of a (frozen) settings object in place."""
    for f in dataclasses.fields(obj):
        opt = option_of(f)
        if opt.convert is not None or opt.choices is not None:
            object.__setattr__(obj, f.name, check(f.name, getattr(obj, f.name), opt))


def check(name: str, value: Any, opt: Option) -> Any:
    """``value`` as the field holds it; InputError naming the setting and its flag."""
    if opt.choices is not None and value not in opt.choices:
        raise _bad(name, value, opt, f"choose one of {', '.join(map(str, opt.choices))}")
    if opt.convert is None:
        return value
    try:
        return opt.convert(value)
    except (ValueError, TypeError) as exc:
        raise _bad(name, value, opt, str(exc)) from None


def _bad(name: str, value: Any, opt: Option, fix: str) -> InputError:
    where = f" ({opt.flag})" if opt.flag else ""
    return InputError(f"setting {name}{where} = {value!r}: {fix}")


# --- readers and checkers, shared by the CLI and the Python API ----------------------------


def whole(low: int | None = None, high: int | None = None) -> Callable[[Any], int]:
    """A whole number in [low, high]."""

    def convert(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError("give a whole number")
        try:
            f = float(v)
        except ValueError:
            raise ValueError("give a whole number") from None
        if not math.isfinite(f) or f != int(f):
            raise ValueError("give a whole number")
        n = int(f)
        if low is not None and n < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and n > high:
            raise ValueError(f"must be at most {high}")
        return n

    return convert


def real(
    low: float | None = None, high: float | None = None, below: float | None = None
) -> Callable[[Any], float]:
    """A finite number in [low, high], or [low, below)."""

    def convert(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError("give a number")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError("give a number") from None
        if not math.isfinite(f):
            raise ValueError("give a finite number")
        if low is not None and f < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and f > high:
            raise ValueError(f"must be at most {high}")
        if below is not None and f >= below:
            raise ValueError(f"must be below {below}")
        return f

    return convert


def boolean(v: Any) -> bool:
    """True or False (numpy booleans too); anything else is refused, not guessed."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    raise ValueError("give True or False")


def optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else convert(v)


def size_pair(v: Any) -> tuple[int, int] | None:
    """N, (H, W) or "HxW" -> (H, W), each side in [8, 4096]."""
    if v is None:
        return None
    if isinstance(v, str):
        parts = v.lower().split("x")
        v = parts[0] if len(parts) == 1 else tuple(parts)
    pair = (v, v) if not isinstance(v, tuple | list) else tuple(v)
    if len(pair) != 2:
        raise ValueError("use N or HxW, e.g. 224 or 224x320")
    side = whole(8, 4096)
    try:
        return (side(pair[0]), side(pair[1]))
    except ValueError:
        raise ValueError("use N or HxW with sides from 8 to 4096, e.g. 224 or 224x320") from None


def triple(named: dict[str, tuple[float, float, float]], positive: bool = False) -> Callable:
    """Three finite numbers (or a name from ``named``) -> a tuple; None stays None."""

    def convert(v: Any) -> tuple[float, float, float] | None:
        if v is None:
            return None
        if isinstance(v, str):
            if v.lower() in named:
                return named[v.lower()]
            v = v.split(",")
        try:
            vals = tuple(float(x) for x in v)
        except (TypeError, ValueError):
            raise ValueError(f"give three numbers or {' or '.join(named)}") from None
        if len(vals) != 3:
            raise ValueError("give three numbers, one per colour channel")
        if not all(math.isfinite(x) for x in vals):
            raise ValueError("every value must be a finite number")
        if positive and any(x <= 0 for x in vals):
            raise ValueError("every value must be positive")
        return vals  # type: ignore[return-value]

    return convert


def cli_type(opt: Option, name: str) -> Callable[[str], Any]:
    """argparse ``type=``: read and check a flag's text, or say why not in one line."""

    def read(text: str) -> Any:
        try:
            value = opt.parse(text) if opt.parse else text
            return check(name, value, opt)
        except InputError as exc:
            fix = str(exc).split(": ", 1)[-1]
            raise argparse.ArgumentTypeError(f"{text!r}: {fix}") from None
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return read

"""Small helpers every layer shares: registry lookups, import paths, fingerprints, thread counts.

Standard library and torch only, so that any package of autoprune may use them.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
from typing import Any, Iterable, Iterator, Mapping, TypeVar

import torch

T = TypeVar("T")


def did_you_mean(name: str, known: Iterable[str], n: int = 3) -> str:
    """`` Did you mean 'x'?`` for the close matches of ``name`` among ``known`` (empty when there are none)."""
    close = difflib.get_close_matches(str(name), list(known), n=n)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def unknown_name(name: str, known: Iterable[str], what: str, extra: str = "") -> str:
    """The one message for a name no registry has: close matches, then everything it has."""
    known = list(known)
    return f"unknown {what} {name!r}.{did_you_mean(name, known)} Available: {', '.join(known)}{extra}"


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or a ValueError naming close matches and every registered name."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(unknown_name(name, sorted(registry), what)) from None


def check_kwargs(target: Any, kwargs: Mapping[str, Any], what: str, *, supplied: Iterable[str] = ()) -> None:
    """Raise ValueError ``no option 'x' for WHAT; allowed: ...`` for a keyword of ``kwargs`` that the callable
    ``target`` (a function or a class) does not take. ``supplied``: keywords the caller passes itself (not allowed
    here). A callable that takes ``**kwargs`` is checked against the class its return annotation names (a builder
    such as ``resnet20(**kwargs) -> ResNetCIFAR``); when there is no such class nothing is checked."""
    allowed = _keywords(target)
    if allowed is None or not kwargs:
        return
    supplied = set(supplied)
    allowed = [k for k in allowed if k not in supplied]
    for key in kwargs:
        if key not in allowed:
            close = did_you_mean(key, allowed, n=1)
            raise ValueError(f"no option {key!r} for {what}; allowed: {', '.join(allowed) or 'none'}.{close}")


def _keywords(target: Any, depth: int = 0) -> list[str] | None:
    """The keyword arguments ``target`` takes (None: any, or unknown)."""
    import inspect

    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    named = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and (depth == 0 or p.default is not p.empty)
    ]
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return named
    if depth or isinstance(target, type):
        return None
    try:  # a builder that passes **kwargs on to the class it returns
        returns = inspect.signature(target, eval_str=True).return_annotation
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: nothing to follow
        return None
    if not isinstance(returns, type) or returns.__init__ is object.__init__:
        return None
    inner = _keywords(returns, depth + 1)
    return None if inner is None else named + [k for k in inner if k not in named]


def import_object(spec: str, what: str = "object") -> Any:
    """Import ``package.module:attribute`` (the attribute may be dotted: ``module:Class.method``)."""
    module_name, _, attribute = str(spec).partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} {spec!r} is not an import path; write it as 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} for {what} {spec!r}: {err}") from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r} ({what} {spec!r})")
        target = getattr(target, part)
    return target


def fingerprint(model: torch.nn.Module | Mapping[str, torch.Tensor], *, values: bool = False, n: int = 16) -> str:
    """A short hash of a model's state dict: names, shapes and dtypes (the architecture), and with ``values`` its
    numbers too (the trained weights)."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if values:
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:n]


def seeded_generator(seed: int, *key: Any) -> torch.Generator:
    """A torch generator seeded by ``seed`` and ``key`` (an episode, a step): randomness that depends only on
    where it is drawn, so there is no RNG state to checkpoint and a resumed run draws the same numbers."""
    digest = hashlib.sha256(":".join(map(str, (seed, *key))).encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (None: leave as is), then restore."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

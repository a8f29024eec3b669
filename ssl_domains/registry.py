"""Plugin discovery through the ``ssl_domains.plugins`` entry-point group.

Discovery (reading entry-point metadata) is separate from loading (importing the plugin's light module), as in
flake8's finder. Loading is lazy and each plugin is isolated: one that fails to import, or whose extra is missing,
is reported with the reason and the fix, and never stops ``list`` or any other plugin (xarray's backends do the
same). Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from .errors import PluginError
from .plugin import ModalityPlugin, contract_problems

__all__ = ["GROUP", "PluginRecord", "PluginReport", "discover", "load", "report", "temporary_plugins"]

GROUP = "ssl_domains.plugins"
FIRST_PARTY = "ssl-domains"
DISABLE_ENV = "SSL_DOMAINS_DISABLE_PLUGINS"


@dataclass(frozen=True)
class PluginRecord:
    """A discovered plugin: its name, where it comes from, and how to import it (not yet imported)."""

    name: str
    target: str
    distribution: str
    version: str
    _entry_point: importlib.metadata.EntryPoint | None = None
    _plugin: ModalityPlugin | None = None

    def load_class_instance(self) -> ModalityPlugin:
        """Import the entry point's target and instantiate the plugin class."""
        if self._plugin is not None:
            return self._plugin
        assert self._entry_point is not None
        obj = self._entry_point.load()
        plugin = obj() if isinstance(obj, type) else obj
        if not isinstance(plugin, ModalityPlugin):
            raise TypeError(f"{self.target} is a {type(plugin).__name__}, not a ssl_domains ModalityPlugin")
        if getattr(plugin, "name", None) != self.name:
            raise TypeError(
                f"entry point {self.name!r} points to a plugin named {getattr(plugin, 'name', None)!r}; "
                "the entry-point name and the plugin's `name` must match"
            )
        problems = contract_problems(type(plugin))
        if problems:
            raise TypeError(
                f"{self.target} is written for the first plugin contract; change: "
                + "; ".join(problems)
                + " (docs/plugin-authoring.md, 'Migrating from the first contract')"
            )
        return plugin


@dataclass(frozen=True)
class PluginReport:
    """One row of ``ssl-domains list``."""

    name: str
    distribution: str
    version: str
    status: Literal["ok", "missing extra", "broken"]
    detail: str
    description: str


_OVERRIDE: dict[str, PluginRecord] | None = None


def _distribution_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "?"
    return dist.metadata["Name"] or "unknown", dist.version or "?"


def discover() -> dict[str, PluginRecord]:
    """All plugins registered in the environment, sorted by name; nothing is imported.

    When two distributions register the same name, a warning names both, and the first-party one (else the
    alphabetically first distribution) is used. Names in ``$SSL_DOMAINS_DISABLE_PLUGINS`` (comma-separated)
    are skipped, which is how a user silences a third-party plugin that misbehaves.
    """
    if _OVERRIDE is not None:
        return dict(sorted(_OVERRIDE.items()))
    disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    found: dict[str, list[PluginRecord]] = {}
    seen: set[tuple[str, str, str]] = set()
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name in disabled:
            continue
        dist, version = _distribution_of(ep)
        key = (ep.name, ep.value, dist)
        if key in seen:  # the same distribution visible twice on sys.path (e.g. editable + build dir)
            continue
        seen.add(key)
        found.setdefault(ep.name, []).append(PluginRecord(ep.name, ep.value, dist, version, ep))
    records: dict[str, PluginRecord] = {}
    for name in sorted(found):
        candidates = sorted(found[name], key=lambda r: (r.distribution != FIRST_PARTY, r.distribution))
        if len(candidates) > 1:
            others = ", ".join(f"{r.distribution!r} ({r.target})" for r in candidates[1:])
            warnings.warn(
                f"plugin name {name!r} is registered by more than one distribution: "
                f"{candidates[0].distribution!r} ({candidates[0].target}) and {others}; "
                f"using {candidates[0].distribution!r}. Uninstall one of them, or set "
                f"{DISABLE_ENV}, to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
        records[name] = candidates[0]
    return records


def load(name: str) -> ModalityPlugin:
    """Import and return plugin ``name``, ready to use.

    Raises :class:`PluginError` with the fix when the name is unknown, the plugin fails to import, or its
    extra is not installed.
    """
    records = discover()
    if name not in records:
        close = difflib.get_close_matches(name, list(records), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        available = ", ".join(records) or "none"
        raise PluginError(f"unknown plugin {name!r}.{hint} Installed plugins: {available}")
    record = records[name]
    try:
        plugin = record.load_class_instance()
    except Exception as exc:
        raise PluginError(
            f"plugin {name!r} from {record.distribution} {record.version} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    missing = plugin.missing_requirements()
    if missing:
        raise PluginError(
            f"plugin {name!r} needs {', '.join(missing)}, which is not installed. "
            f"Run: {plugin.install_command(record.distribution)}"
        )
    return plugin


def report() -> list[PluginReport]:
    """Status of every discovered plugin, each checked in isolation (for ``ssl-domains list``)."""
    rows = []
    for name, record in discover().items():
        try:
            plugin = record.load_class_instance()
        except BaseException as exc:  # a broken third-party plugin may even call sys.exit() on import
            if isinstance(exc, KeyboardInterrupt):
                raise
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
            rows.append(
                PluginReport(
                    name,
                    record.distribution,
                    record.version,
                    "broken",
                    f"{type(exc).__name__}: {exc}{where}",
                    "",
                )
            )
            continue
        missing = plugin.missing_requirements()
        status: Literal["ok", "missing extra"] = "missing extra" if missing else "ok"
        detail = f"needs {', '.join(missing)}: {plugin.install_command(record.distribution)}" if missing else ""
        description = str(getattr(plugin, "description", ""))
        rows.append(PluginReport(name, record.distribution, record.version, status, detail, description))
    return rows


@contextmanager
def temporary_plugins(*plugins: ModalityPlugin, distribution: str = "local") -> Iterator[None]:
    """Make exactly ``plugins`` discoverable for the duration of the block (tests, the conformance kit)."""
    global _OVERRIDE
    previous = _OVERRIDE
    _OVERRIDE = {p.name: PluginRecord(p.name, type(p).__qualname__, distribution, "local", None, p) for p in plugins}
    try:
        yield
    finally:
        _OVERRIDE = previous

"""Memory budgets: caches are a choice made against the RAM a job may use, never a default that grows with the corpus.

A datamodule that could keep its decoded items in memory asks :func:`fits_in_memory` with its estimate of what
they would take. The budget is a share (25 % by default) of the memory this process may use: the machine's RAM,
or the cgroup's limit when a scheduler (Slurm, Kubernetes, Docker) sets a lower one. ``$SSL_DOMAINS_MEMORY_BUDGET``
replaces it with a size, in bytes or with a unit (``8G``, ``500M``), for a job that knows better.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["BUDGET_ENV", "fits_in_memory", "memory_budget", "usable_memory"]

log = logging.getLogger("ssl_domains")

BUDGET_ENV = "SSL_DOMAINS_MEMORY_BUDGET"
DEFAULT_SHARE = 0.25
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 writes a huge number for "no limit"
            return int(text)
    return None


def usable_memory() -> int:
    """Bytes this process may use: physical RAM, or the cgroup's limit where that is lower."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = _cgroup_limit()
    return min(physical, limit) if limit else physical


def parse_size(text: str) -> int:
    """``"8G"`` -> 8 GiB in bytes; a plain number is bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS and not value[-1:].isdigit() else ""
    try:
        return int(float(value[: len(value) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise ConfigError(f"{BUDGET_ENV}={text!r} is not a size; write bytes or e.g. 8G, 500M") from None


def memory_budget(share: float = DEFAULT_SHARE) -> int:
    """Bytes a cache may take: ``$SSL_DOMAINS_MEMORY_BUDGET`` when set, else ``share`` of :func:`usable_memory`."""
    if os.environ.get(BUDGET_ENV):
        return parse_size(os.environ[BUDGET_ENV])
    return int(share * usable_memory())


def fits_in_memory(nbytes: int, what: str, share: float = DEFAULT_SHARE) -> bool:
    """Whether a cache of ``nbytes`` fits the budget; the decision is logged with both sizes."""
    budget = memory_budget(share)
    fits = nbytes <= budget
    log.info(
        "%s: %.2f GB %s the memory budget of %.2f GB (%s)", what, nbytes / 1e9, "fits" if fits else "exceeds",
        budget / 1e9, BUDGET_ENV if os.environ.get(BUDGET_ENV) else f"{share:.0%} of {usable_memory() / 1e9:.1f} GB",
    )  # fmt: skip
    return fits

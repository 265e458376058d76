"""Hypothesis profiles for the unit tests.

``ci`` (the default) keeps the whole unit suite under a minute on two busy cores. ``long``
(``GEOPIN_HYPOTHESIS_PROFILE=long``) is for a run made once in a while and reported: every
property scaled by :func:`examples` runs twenty times as many examples. No deadline in either:
on a shared machine a slow example is load, not a bug.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None)
settings.register_profile("long", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("GEOPIN_HYPOTHESIS_PROFILE", "ci"))


def examples(ci: int) -> int:
    """``ci`` examples under the ci profile, proportionally more under a bigger one."""
    loaded = settings.default
    return max(1, ci * (loaded.max_examples if loaded is not None else 100) // 100)

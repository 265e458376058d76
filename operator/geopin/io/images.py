"""Which replica has which manifest, and the digest of a tag: HEAD requests, cached briefly.

Replication awareness asks "is this image at that replica yet?" before a workload is pointed there;
digest pinning asks "what does this tag resolve to?". Answers are cached per policy: a present
manifest for ``present_ttl`` (it does not vanish), an absent one for ``absent_ttl`` (ACR replicates
within seconds to minutes, so it is asked again soon). A registry error is not an answer: it is
logged and, where there is no answer yet, the image is taken as present (fail open), because a replica
the probes call healthy but that refuses a HEAD (say, no pull permission for geopin) must not hold
every workload back; that guess expires as soon as an absence does, so a real answer replaces it. A
failure never replaces a real answer (a HEAD that times out on a loaded replica must not turn its
"absent" into "present"), and a guess is never ``verified``: decisions prefer a replica whose
answer is real (core/decisions.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from geopin.core.references import InvalidReference, parse

if TYPE_CHECKING:
    from geopin.core.policy import Policy
    from geopin.io.probes import RegistryClient

__all__ = ["ImageCache"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    present: bool
    expires: float
    answered: bool = True  # False: a guess after a failed HEAD


class ImageCache:
    def __init__(
        self,
        present_ttl: float = 300.0,
        absent_ttl: float = 10.0,
        concurrency: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.present_ttl = present_ttl
        self.absent_ttl = absent_ttl
        self.clock = clock
        self._presence: dict[tuple[str, str], _Entry] = {}
        self._digests: dict[str, tuple[str, float]] = {}
        self._limit = asyncio.Semaphore(concurrency)

    def available(self, image: str, region: str) -> bool | None:
        """The last answer, even past its expiry (refreshed by ``refresh_stale``): decisions and
        status never flap to "unknown" just because an answer aged; None only before the first."""
        entry = self._presence.get((image, region))
        return None if entry is None else entry.present

    def verified(self, image: str, region: str) -> bool:
        """Did the replica itself answer that it has the image (not a guess after a failed HEAD)?"""
        entry = self._presence.get((image, region))
        return entry is not None and entry.present and entry.answered

    def absent(self) -> list[tuple[str, list[str]]]:
        """(image, the regions whose last answer was "absent"), the most recently answered first: what
        a standby must know not to redirect a Pod there (``status.replicationGaps``)."""
        found: dict[str, list[str]] = {}
        for (image, region), entry in sorted(self._presence.items(), key=lambda item: -item[1].expires):
            if not entry.present:
                found.setdefault(image, []).append(region)
        return list(found.items())

    def stale(self) -> list[tuple[str, str]]:
        """(image, region) pairs whose answer has expired: to be asked again."""
        now = self.clock()
        return [key for key, entry in self._presence.items() if entry.expires <= now]

    async def refresh_stale(self, policy: Policy, client: RegistryClient, via: str) -> bool:
        """Ask again for every expired answer; True when any answer changed."""
        stale = self.stale()
        if not stale:
            return False
        before = {key: self._presence[key].present for key in stale}
        await self.resolve(policy, client, stale, via)
        return any(self._presence[key].present != present for key, present in before.items())

    def digest_of(self, image: str) -> str | None:
        found = self._digests.get(image)
        if found is None or found[1] <= self.clock():
            return None
        return found[0]

    async def resolve(self, policy: Policy, client: RegistryClient, pairs: Iterable[tuple[str, str]], via: str) -> None:
        """Look up (image, region) pairs; region "" asks for the digest, resolved at replica ``via``."""
        await asyncio.gather(*(self._resolve_one(policy, client, image, region, via) for image, region in set(pairs)))

    async def _resolve_one(self, policy: Policy, client: RegistryClient, image: str, region: str, via: str) -> None:
        from geopin.io.probes import ProbeError

        try:
            ref = parse(image)
        except InvalidReference:
            return
        endpoint = policy.endpoints.get(region or via)
        if endpoint is None:
            return
        reference = ref.digest or ref.tag or "latest"
        async with self._limit:
            try:
                digest = await client.manifest_digest(endpoint, ref.path, reference)
            except ProbeError as e:
                logger.warning(
                    "policy %s: HEAD %s at %s failed (%s); taking it as present", policy.name, image, region or via, e
                )
                digest, present, known = None, True, False
            else:
                present, known = digest is not None, True
        now = self.clock()
        if region:
            previous = self._presence.get((image, region))
            if not known and previous is not None and previous.answered:
                # The last real answer stands, asked again soon.
                self._presence[(image, region)] = _Entry(previous.present, now + self.absent_ttl)
            else:
                # A failure's "present" is a guess, not an answer: asked again as soon as an absence is,
                # or a HEAD that failed while a replica restarted would vouch for it for minutes.
                ttl = self.present_ttl if present and known else self.absent_ttl
                self._presence[(image, region)] = _Entry(present, now + ttl, answered=known)
        if digest is not None:
            self._digests[image] = (digest, now + self.present_ttl)
            if not region:
                return
        elif not region:
            logger.warning("policy %s: cannot resolve the digest of %s at %s", policy.name, image, via)

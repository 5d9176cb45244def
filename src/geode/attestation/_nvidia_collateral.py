"""Geode's collateral document for ``nvidia`` evidence and what is checked with it.

One JSON object (UTF-8, at most ``MAX_COLLATERAL_SIZE`` bytes), all three keys required::

    {"driver_rim": "<the driver's RIM: NVIDIA's SWID tag, XML text>",
     "vbios_rim": "<the VBIOS's RIM, XML text>",
     "ocsp": ["<base64 of a DER OCSP response>", ...]}

A document lacking any of them is refused naming what is missing (no collateral at all gives an
``Unverified`` report; half of it is not a lesser verdict). Checked in this order (any failure
refuses; the order decides only which failure is named): each RIM (``_nvidia_rim``) chains to a
trusted RIM root and its signature verifies; the report's measurements match the RIMs' active
golden values; an OCSP response (``_nvidia_ocsp``) vouches for every certificate of the GPU's
chain below the root except its leaf (the leaf is made by the GPU's firmware at boot, unknown to
NVIDIA's responder; the report binds it through its FWID) and for every certificate of both RIM
chains below the root.

The pinned RIM root is the "NVIDIA CoRIM signing Root CA" (``roots/nvidia_rim_root_ca.pem``, as
NVIDIA's nvtrust ships it), SHA-256 ``NVIDIA_RIM_ROOT_SHA256``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509

from geode.attestation._nvidia_chain import Link, verify_chain
from geode.attestation._nvidia_ocsp import OcspResponses, check_revocation
from geode.attestation._nvidia_rim import Rim, compare_measurements, merge_golden, verify_rim
from geode.attestation._roots import load_pinned_root
from geode.errors import EvidenceError

__all__ = [
    "COLLATERAL_KEYS",
    "MAX_COLLATERAL_SIZE",
    "NVIDIA_RIM_ROOT_SHA256",
    "NvidiaCollateral",
    "apply_collateral",
    "nvidia_rim_roots",
]

NVIDIA_RIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
COLLATERAL_KEYS = ("driver_rim", "vbios_rim", "ocsp")
MAX_COLLATERAL_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class NvidiaCollateral:
    """Geode's collateral document for ``nvidia`` (see the module docstring), parsed."""

    driver_rim: str
    vbios_rim: str
    ocsp: OcspResponses

    @classmethod
    def from_json(cls, data: bytes) -> NvidiaCollateral:
        if len(data) > MAX_COLLATERAL_SIZE:
            raise EvidenceError(
                f"NVIDIA collateral larger than {MAX_COLLATERAL_SIZE} bytes", field="collateral"
            )
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            raise EvidenceError("NVIDIA collateral is not JSON", field="collateral") from None
        if not isinstance(document, dict):
            raise EvidenceError("NVIDIA collateral is not a JSON object", field="collateral")
        unknown = sorted(set(document) - set(COLLATERAL_KEYS))
        if unknown:
            raise EvidenceError(
                f"unknown NVIDIA collateral keys: {', '.join(unknown)[:200]}", field="collateral"
            )
        missing = [key for key in COLLATERAL_KEYS if not document.get(key)]
        if missing:
            raise EvidenceError(
                f"NVIDIA collateral lacks {', '.join(missing)}: RIMs and OCSP responses go "
                "together (give none for an Unverified report)",
                field="collateral",
            )
        for key in ("driver_rim", "vbios_rim"):
            if not isinstance(document[key], str):
                raise EvidenceError("not a string (XML text)", field=f"collateral.{key}")
        if not isinstance(document["ocsp"], list):
            raise EvidenceError("not a list of base64 DER responses", field="collateral.ocsp")
        return cls(
            document["driver_rim"],
            document["vbios_rim"],
            OcspResponses.from_base64(document["ocsp"]),
        )


def _rim_links(
    chain: Sequence[x509.Certificate],
    which: str,
    roots: Sequence[x509.Certificate],
    at: datetime.datetime,
) -> list[Link]:
    field = f"collateral.{which}_rim"
    if not roots:
        raise EvidenceError(f"no trusted NVIDIA RIM root for the {which} RIM", field=field)
    try:
        return verify_chain(chain, roots, at, f"{which} RIM")
    except EvidenceError as exc:
        raise EvidenceError(exc.reason, field=field) from None


def apply_collateral(
    collateral: NvidiaCollateral,
    *,
    measurements: Mapping[int, bytes],
    versions: Mapping[str, str],
    device_links: Sequence[Link],
    rim_roots: Sequence[x509.Certificate],
    at: datetime.datetime,
) -> tuple[Rim, ...]:
    """The RIMs' chains and signatures (each for the ``versions`` the report states, by
    ``driver`` and ``vbios``), the ``measurements``, then OCSP for every chain."""
    rims = []
    links = list(device_links[1:])  # the GPU's leaf is made by its firmware: no OCSP for it
    for which, text in (("driver", collateral.driver_rim), ("vbios", collateral.vbios_rim)):
        rim_links: list[Link] = []

        def check(
            chain: Sequence[x509.Certificate], which: str = which, found: list[Link] = rim_links
        ) -> None:
            found.extend(_rim_links(chain, which, rim_roots, at))

        rims.append(verify_rim(text, which, version=versions[which], check_chain=check))
        links += rim_links
    compare_measurements(measurements, merge_golden(rims))
    check_revocation(links, collateral.ocsp, at)
    return tuple(rims)


def nvidia_rim_roots() -> tuple[x509.Certificate, ...]:
    """The pinned NVIDIA RIM signing roots shipped with Geode."""
    return (load_pinned_root("nvidia_rim_root_ca.pem", NVIDIA_RIM_ROOT_SHA256),)

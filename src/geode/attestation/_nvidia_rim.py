"""NVIDIA reference integrity manifests (RIMs): the signed golden measurements of a GPU's driver
and of its VBIOS.

A RIM is an ISO/IEC 19770-2 (SWID) ``SoftwareIdentity`` XML document, as NVIDIA's RIM service
hands it out. What this module reads of it:

- ``Meta/@colloquialVersion``: the driver's (``550.90.07``) or the VBIOS's (``96.00.9F.00.01``)
  version, compared (case-insensitively) with the version the GPU's report states;
- ``Payload/Resource`` elements, one per measurement: ``index`` (0-based: RIM index ``i`` is the
  report's measurement block ``i + 1``), ``active`` (``False``: not compared), ``alternatives``
  (how many values are golden), ``size`` (bytes) and the values themselves, attributes
  ``Hash0``, ``Hash1``, ... in the namespace ``http://www.w3.org/2001/04/xmlenc#sha384`` (hex);
- the enveloped XML-DSig ``Signature`` (NVIDIA's: canonical XML 1.1, ECDSA P-384 with
  SHA-384, one reference ``URI=""``), whose ``KeyInfo/X509Data`` carries the signing chain,
  leaf first (NVIDIA's: RIM signer, "Reference Value L3", "Reference Value GH100 CA",
  "CoRIM signing Root CA").

The signature is checked by ``signxml`` (the optional extra ``geode[nvidia]``, imported only when a
RIM is given) with the chain's leaf, after the chain was checked up to a trusted RIM root here;
only what the signature covers (``signxml``'s ``signed_xml``) is read afterwards.

The signer's role: NVIDIA's RIM signing certificates (``HCC RIM L4 Signer`` in nvtrust's published
RIMs) carry no extended key usage or other RIM-specific mark; they are end-entity certificates
(basic constraints ``CA:FALSE``, critical) with the key usage ``digitalSignature`` (critical),
under a root used for nothing but RIMs. That is what is checked: a CA certificate of the chain, or
a leaf without ``digitalSignature``, does not sign a RIM. Nothing in a RIM's chain ties it to a GPU
product or SKU; the RIM is tied to the report by its version string only. The text is
parsed without DTDs, entities or network access, and refused above ``MAX_RIM_SIZE``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation._evidence_certs import common_name, fully_decoded
from geode.errors import EvidenceError

__all__ = [
    "MAX_RIM_SIZE",
    "GoldenMeasurement",
    "Rim",
    "compare_measurements",
    "merge_golden",
    "verify_rim",
]

MAX_RIM_SIZE = 4 * 1024 * 1024
_SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
_DSIG = "http://www.w3.org/2000/09/xmldsig#"
_SHA384 = "http://www.w3.org/2001/04/xmlenc#sha384"
_MAX_ALTERNATIVES = 64
_MAX_INDEX = 255

ChainCheck = Callable[[Sequence[x509.Certificate]], None]


@dataclass(frozen=True)
class GoldenMeasurement:
    """One ``Resource`` of a RIM: its golden values at a measurement index."""

    rim: str
    index: int
    name: str
    active: bool
    size: int
    values: tuple[bytes, ...]


@dataclass(frozen=True)
class Rim:
    """A RIM whose signature and chain verified."""

    which: str  # "driver" or "vbios"
    version: str
    chain: tuple[x509.Certificate, ...]
    measurements: Mapping[int, GoldenMeasurement]


def _field(which: str) -> str:
    return f"collateral.{which}_rim"


def _parse(text: str, which: str) -> Any:
    """The document's root element, parsed without DTDs, entities or network access."""
    from lxml import etree

    data = text.encode("utf-8")
    if len(data) > MAX_RIM_SIZE:
        raise EvidenceError(
            f"the {which} RIM is larger than {MAX_RIM_SIZE} bytes", field=_field(which)
        )
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
    )
    try:
        tree = etree.fromstring(data, parser=parser).getroottree()
    except etree.XMLSyntaxError as exc:
        raise EvidenceError(f"the {which} RIM is not XML ({exc})", field=_field(which)) from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise EvidenceError(f"the {which} RIM declares a DTD", field=_field(which))
    return tree.getroot()


def _key_info_chain(root: Any, which: str) -> list[x509.Certificate]:
    found = root.findall(f"{{{_DSIG}}}Signature/{{{_DSIG}}}KeyInfo/{{{_DSIG}}}X509Data")
    if len(found) != 1:
        raise EvidenceError(
            f"the {which} RIM has no single signature with X509Data", field=_field(which)
        )
    chain = []
    for position, element in enumerate(found[0].findall(f"{{{_DSIG}}}X509Certificate")):
        try:
            der = base64.b64decode("".join((element.text or "").split()), validate=True)
            chain.append(fully_decoded(x509.load_der_x509_certificate(der), _field(which)))
        except (binascii.Error, ValueError):
            raise EvidenceError(
                f"certificate {position} of the {which} RIM's KeyInfo is not DER",
                field=_field(which),
            ) from None
    if not chain:
        raise EvidenceError(f"the {which} RIM's KeyInfo has no certificate", field=_field(which))
    return chain


def _check_signer_role(leaf: x509.Certificate, which: str) -> None:
    """The signer is an end entity allowed to sign (see the module docstring)."""
    name = common_name(leaf)
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise EvidenceError(
            f"the {which} RIM is signed by {name!r}, a CA certificate, not a RIM signer",
            field=_field(which),
        )
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.digital_signature:
        raise EvidenceError(
            f"the {which} RIM's signer {name!r} has no digitalSignature key usage",
            field=_field(which),
        )


def _check_signature(text: str, leaf: x509.Certificate, which: str) -> Any:
    """The element the signature covers, after ``signxml`` verified it with ``leaf``."""
    try:
        from signxml.exceptions import InvalidInput, InvalidSignature
        from signxml.verifier import XMLVerifier
    except ImportError:
        raise EvidenceError(
            "NVIDIA RIMs need signxml: pip install 'geode[nvidia]'", field=_field(which)
        ) from None
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        result = XMLVerifier().verify(
            text.encode("utf-8"),
            x509_cert=leaf.public_bytes(Encoding.PEM).decode("ascii"),
            parser=parser,
        )
    except (InvalidSignature, InvalidInput, etree.LxmlError, ValueError) as exc:
        raise EvidenceError(
            f"the {which} RIM's signature does not verify ({exc})", field=_field(which)
        ) from None
    signed = result[0] if isinstance(result, list) else result
    return signed.signed_xml


def _attribute(element: Any, name: str, which: str, position: int) -> str:
    value = element.get(name)
    if value is None:
        raise EvidenceError(
            f"Resource {position} of the {which} RIM has no {name.split('}')[-1]}",
            field=_field(which),
        )
    return str(value)


def _integer(element: Any, name: str, which: str, position: int, limit: int) -> int:
    text = _attribute(element, name, which, position)
    if not (text.isascii() and text.isdigit()) or int(text) > limit:
        raise EvidenceError(
            f"Resource {position} of the {which} RIM: {name} {text[:20]!r} is not 0..{limit}",
            field=_field(which),
        )
    return int(text)


def _resource(element: Any, which: str, position: int) -> GoldenMeasurement:
    index = _integer(element, "index", which, position, _MAX_INDEX)
    count = _integer(element, "alternatives", which, position, _MAX_ALTERNATIVES)
    size = _integer(element, "size", which, position, 1024)
    values = []
    for number in range(count):
        text = _attribute(element, f"{{{_SHA384}}}Hash{number}", which, position)
        try:
            values.append(bytes.fromhex(text))
        except ValueError:
            raise EvidenceError(
                f"Resource {position} of the {which} RIM: Hash{number} is not hex",
                field=_field(which),
            ) from None
    return GoldenMeasurement(
        rim=which,
        index=index,
        name=element.get("name", ""),
        active=_attribute(element, "active", which, position) != "False",
        size=size,
        values=tuple(values),
    )


def _measurements(root: Any, which: str) -> dict[int, GoldenMeasurement]:
    payload = root.find(f"{{{_SWID}}}Payload")
    if payload is None:
        raise EvidenceError(f"the {which} RIM has no Payload", field=_field(which))
    golden: dict[int, GoldenMeasurement] = {}
    for position, element in enumerate(payload.findall(f"{{{_SWID}}}Resource")):
        measurement = _resource(element, which, position)
        if measurement.index in golden:
            raise EvidenceError(
                f"the {which} RIM lists measurement index {measurement.index} twice",
                field=_field(which),
            )
        golden[measurement.index] = measurement
    if not golden:
        raise EvidenceError(f"the {which} RIM lists no measurement", field=_field(which))
    return golden


def verify_rim(text: str, which: str, *, version: str, check_chain: ChainCheck) -> Rim:
    """Parse RIM ``text``, check its chain with ``check_chain`` (which raises), its signature
    with the chain's leaf, and its version against ``version`` (the report's)."""
    root = _parse(text, which)
    chain = _key_info_chain(root, which)
    check_chain(chain)
    _check_signer_role(chain[0], which)
    signed = _check_signature(text, chain[0], which)
    if signed.tag != f"{{{_SWID}}}SoftwareIdentity":
        raise EvidenceError(
            f"the {which} RIM's signature does not cover a SoftwareIdentity", field=_field(which)
        )
    meta = signed.find(f"{{{_SWID}}}Meta")
    stated = "" if meta is None else str(meta.get("colloquialVersion", ""))
    if stated.lower() != version.lower():
        raise EvidenceError(
            f"the {which} RIM is for version {stated[:40]!r}, the report's {which} is {version!r}",
            field=_field(which),
        )
    return Rim(which, stated, tuple(chain), MappingProxyType(_measurements(signed, which)))


def merge_golden(rims: Sequence[Rim]) -> dict[int, GoldenMeasurement]:
    """The active measurements of all RIMs by index; two RIMs may not claim one index, and each
    must have at least one."""
    golden: dict[int, GoldenMeasurement] = {}
    for rim in rims:
        if not any(measurement.active for measurement in rim.measurements.values()):
            raise EvidenceError(
                f"the {rim.which} RIM marks no measurement active: it vouches for nothing",
                field=_field(rim.which),
            )
        for index, measurement in rim.measurements.items():
            if not measurement.active:
                continue
            if index in golden:
                raise EvidenceError(
                    f"the {golden[index].rim} and {rim.which} RIMs both claim measurement "
                    f"index {index}",
                    field=_field(rim.which),
                )
            golden[index] = measurement
    return golden


def compare_measurements(
    measurements: Mapping[int, bytes], golden: Mapping[int, GoldenMeasurement]
) -> None:
    """Every active golden index matches one of its values in the report (block ``index + 1``)."""
    for index in sorted(golden):
        measurement = golden[index]
        value = measurements.get(index + 1)
        if value is None:
            raise EvidenceError(
                f"the {measurement.rim} RIM's measurement index {index} is not in the report "
                f"(block {index + 1})",
                field="measurements",
            )
        if len(value) != measurement.size or value not in measurement.values:
            raise EvidenceError(
                f"measurement index {index} (block {index + 1}) matches none of the "
                f"{measurement.rim} RIM's {len(measurement.values)} golden values",
                field=f"measurements[{index + 1}]",
            )

"""NVIDIA collateral under a test CA: RIMs (SWID tags with an enveloped XML-DSig signature, in
the shape of NVIDIA's) and OCSP responses, for ``_nvidia``'s collateral document."""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.attestation.support.nvidia import AT, END, START

SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384 = "http://www.w3.org/2001/04/xmlenc#sha384"


_SIGNING_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    ocsp_signing: bool = False,
    signing_usage: bool = True,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca and signing_usage:  # as NVIDIA's end entities: digitalSignature, critical
        builder = builder.add_extension(_SIGNING_USAGE, critical=True)
    if ocsp_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass
class RimPki:
    """A test RIM root, an intermediate and a RIM signing leaf (NVIDIA's chain has one more)."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ica_key: ec.EllipticCurvePrivateKey
    ica: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate

    @classmethod
    def create(cls) -> RimPki:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = issue("Test CoRIM signing Root CA", root_key, None, root_key, ca=True)
        ica_key = ec.generate_private_key(ec.SECP384R1())
        ica = issue("Test Reference Value CA", ica_key, root, root_key, ca=True)
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        leaf = issue("Test RIM Signer", leaf_key, ica, ica_key, ca=False)
        return cls(root_key, root, ica_key, ica, leaf_key, leaf)

    def links(self) -> list[tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]]:
        """(certificate, issuer, issuer's key) for each certificate OCSP must vouch for."""
        return [(self.leaf, self.ica, self.ica_key), (self.ica, self.root, self.root_key)]


def rim_xml(
    pki: RimPki,
    *,
    version: str,
    golden: Mapping[int, Sequence[bytes]],
    inactive: Sequence[int] = (),
    chain: Sequence[x509.Certificate] | None = None,
) -> str:
    """A signed SWID tag: ``golden`` {RIM index: alternatives}, plus ``inactive`` indices."""
    from lxml import etree
    from signxml import SignatureMethod
    from signxml.signer import XMLSigner

    root = etree.Element(
        f"{{{SWID}}}SoftwareIdentity",
        nsmap={None: SWID, "SHA384": SHA384},
        name="GH100",
        tagId="test",
        version="1.0",
    )
    etree.SubElement(root, f"{{{SWID}}}Entity", name="Test", role="softwareCreator tagCreator")
    etree.SubElement(root, f"{{{SWID}}}Meta", colloquialVersion=version, product="GH100")
    payload = etree.SubElement(root, f"{{{SWID}}}Payload")
    entries = [(i, list(v), True) for i, v in golden.items()]
    entries += [(i, [bytes(48)], False) for i in inactive]
    for index, values, active in sorted(entries, key=lambda e: e[0]):
        resource = etree.SubElement(
            payload,
            f"{{{SWID}}}Resource",
            type="Measurement",
            index=str(index),
            active="True" if active else "False",
            alternatives=str(len(values)),
            name=f"Measurement_{index}",
            size=str(len(values[0])),
        )
        for number, value in enumerate(values):
            resource.set(f"{{{SHA384}}}Hash{number}", value.hex())
    certs = list(chain) if chain is not None else [pki.leaf, pki.ica, pki.root]
    signed = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA384, digest_algorithm="sha384"
    ).sign(
        root,
        key=pki.leaf_key,
        cert=[c.public_bytes(Encoding.PEM).decode() for c in certs],
    )
    return str(etree.tostring(signed, encoding="unicode"))


def ocsp_response(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    signer_key: ec.EllipticCurvePrivateKey,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    this_update: datetime.datetime = AT - datetime.timedelta(hours=1),
    next_update: datetime.datetime | None = AT + datetime.timedelta(days=7),
    responder: x509.Certificate | None = None,
    carry_responder: bool = True,
) -> str:
    """Base64 DER of a response for ``cert``, signed by its issuer (or ``responder``, which the
    response carries unless ``carry_responder`` is false)."""
    revoked = status is ocsp.OCSPCertStatus.REVOKED
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert,
        issuer=issuer,
        algorithm=hashes.SHA384(),
        cert_status=status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=AT - datetime.timedelta(days=1) if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
    )
    signer = responder or issuer
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
    if responder is not None and carry_responder:
        builder = builder.certificates([responder])
    response = builder.sign(signer_key, hashes.SHA384())
    return base64.b64encode(response.public_bytes(Encoding.DER)).decode()


def collateral(**document: object) -> bytes:
    return json.dumps(document).encode()


def impostor(issuer: x509.Certificate) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed certificate with ``issuer``'s name and another key: signs "its" OCSP."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(issuer.subject)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
        .sign(key, hashes.SHA384())
    )
    return cert, key

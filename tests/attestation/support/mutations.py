"""Mutations of evidence, certificates and collateral, drawn from a seeded ``random.Random``.

Each operator takes the generator and a blob and returns ``(description, mutated blob)``; the
description says exactly what changed (offsets, values), so a failure can be read without
replaying it. Byte operators may be confined to a region (``Region``: where a PEM chain, a
certificate table, a DER chain sits in the evidence). DER operators walk the ASN.1 structure of a
certificate or CRL (into OCTET STRINGs that hold DER, such as the SGX extension) and change a
tag, a length or a content byte; PEM text is decoded, mutated as DER and encoded again in the
same layout, so the change gets past base64 into the X.509 parser. JSON operators change a
collateral document: wrong types, missing keys, deep nesting, huge numbers, broken hex and PEM,
inside the signed JSON texts too.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "DEEP",
    "Region",
    "mutate_bytes",
    "mutate_der",
    "mutate_json_document",
    "mutate_pem",
]

Mutation = tuple[str, bytes]
DEEP = 100_000  # nesting far beyond any recursion limit
_BOUNDARY_BYTES = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)
_PEM = re.compile(rb"(-----BEGIN ([A-Z0-9 ]+)-----\r?\n)(.*?)(\r?\n-----END \2-----)", re.S)


@dataclass(frozen=True)
class Region:
    """Bytes ``[start, end)`` of a blob, and what they hold (``pem``, ``der``, ``bytes``)."""

    name: str
    start: int
    end: int
    holds: str = "bytes"
    # (offset, size) of little-endian length fields anywhere in the blob
    lengths: tuple[tuple[int, int], ...] = ()


# -- raw bytes --------------------------------------------------------------------------------


def _position(rng: random.Random, blob: bytes, region: Region | None) -> int:
    start, end = (region.start, region.end) if region else (0, len(blob))
    return rng.randrange(start, max(end, start + 1))


def mutate_bytes(rng: random.Random, blob: bytes, region: Region | None = None) -> Mutation:
    """One byte-level change of ``blob`` (inside ``region`` when given)."""
    where = f" in {region.name}" if region else ""
    if not blob:
        return "extend empty blob", bytes(rng.randrange(1, 64))
    choice = rng.randrange(7)
    pos = min(_position(rng, blob, region), len(blob) - 1)
    out = bytearray(blob)
    if choice == 0:
        bit = rng.randrange(8)
        out[pos] ^= 1 << bit
        return f"flip bit {bit} of byte {pos}{where}", bytes(out)
    if choice == 1:
        value = rng.choice((*_BOUNDARY_BYTES, rng.randrange(256)))
        out[pos] = value
        return f"set byte {pos}{where} to {value:#04x}", bytes(out)
    if choice == 2:
        return f"truncate to {pos} bytes{where}", blob[:pos]
    if choice == 3:
        size = rng.choice((1, 2, 16, 100, 4096))
        filler = rng.choice(
            (bytes(size), b"\xff" * size, rng.randbytes(size), blob[-size:], b"\n" * size)
        )
        return f"append {size} bytes ({filler[:8].hex()}...)", blob + filler
    if choice == 4:
        value = rng.randrange(256)
        return f"insert byte {value:#04x} at {pos}{where}", blob[:pos] + bytes([value]) + blob[pos:]
    if choice == 5:
        return f"delete byte {pos}{where}", blob[:pos] + blob[pos + 1 :]
    size = rng.choice((2, 4, 8, 16))
    value = rng.choice((0x00, 0xFF))
    end = min(pos + size, len(blob))
    out[pos:end] = bytes([value]) * (end - pos)
    return f"set bytes {pos}..{end}{where} to {value:#04x}", bytes(out)


def mutate_length(rng: random.Random, blob: bytes, field: tuple[int, int], name: str) -> Mutation:
    """Set the little-endian length field ``(offset, size)`` of ``blob`` to an edge value."""
    offset, size = field
    old = int.from_bytes(blob[offset : offset + size], "little")
    top = (1 << (8 * size)) - 1
    new = rng.choice((0, 1, top, top >> 1, old + 1, max(old - 1, 0), old * 2, len(blob)))
    new &= top
    data = blob[:offset] + new.to_bytes(size, "little") + blob[offset + size :]
    return f"set the {size}-byte length at {offset} ({name}) from {old} to {new}", data


# -- DER ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tlv:
    start: int  # tag byte
    header: int  # bytes of tag and length
    length: int


def _read_tlv(der: bytes, offset: int) -> _Tlv | None:
    if offset + 2 > len(der) or der[offset] & 0x1F == 0x1F:
        return None
    first = der[offset + 1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or offset + 2 + count > len(der):
            return None
        header, length = 2 + count, int.from_bytes(der[offset + 2 : offset + 2 + count], "big")
    if offset + header + length > len(der):
        return None
    return _Tlv(offset, header, length)


def _walk(der: bytes, start: int, end: int, depth: int = 0) -> Iterator[_Tlv]:
    offset = start
    while offset < end and depth < 32:
        tlv = _read_tlv(der[:end], offset)
        if tlv is None:
            return
        yield tlv
        content = tlv.start + tlv.header
        tag = der[tlv.start]
        if tag & 0x20:
            yield from _walk(der, content, content + tlv.length, depth + 1)
        elif tag == 0x04 and _spans(der, content, content + tlv.length):
            yield from _walk(der, content, content + tlv.length, depth + 1)  # DER inside
        elif tag == 0x03 and tlv.length > 1 and _spans(der, content + 1, content + tlv.length):
            yield from _walk(der, content + 1, content + tlv.length, depth + 1)
        offset = content + tlv.length


def _spans(der: bytes, start: int, end: int) -> bool:
    """Whether ``der[start:end]`` is exactly a sequence of DER elements (structured content)."""
    offset = start
    while offset < end:
        tlv = _read_tlv(der[:end], offset)
        if tlv is None or der[offset] == 0:
            return False
        offset = tlv.start + tlv.header + tlv.length
    return offset == end and end > start


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    size = (length.bit_length() + 7) // 8
    return bytes([0x80 | size]) + length.to_bytes(size, "big")


def mutate_der(rng: random.Random, der: bytes) -> Mutation:
    """One change to one element of a DER structure: its tag, its length, a content byte."""
    elements = list(_walk(der, 0, len(der)))
    if not elements:
        return mutate_bytes(rng, der)
    tlv = rng.choice(elements)
    at = f"element at {tlv.start} (tag {der[tlv.start]:#04x}, {tlv.length} bytes)"
    choice = rng.randrange(5)
    if choice == 0:
        tag = rng.choice((0x00, 0x02, 0x04, 0x05, 0x06, 0x0C, 0x30, 0x31, 0xA0, 0xA3, 0xFF))
        return f"DER: set the tag of the {at} to {tag:#04x}", _splice(der, tlv.start, 1, [tag])
    if choice == 1:
        new = rng.choice((0, 1, tlv.length + 1, max(tlv.length - 1, 0), 0x7F, 0xFFFF, 1 << 30))
        raw = rng.choice((_der_length(new), b"\x80", b"\x85" + b"\xff" * 5, b"\x81\x05"))
        return (
            f"DER: set the length of the {at} to {raw.hex()}",
            der[: tlv.start + 1] + raw + der[tlv.start + tlv.header :],
        )
    content = tlv.start + tlv.header
    if tlv.length == 0 or choice == 2:
        cut = rng.randrange(tlv.start, content + tlv.length + 1)
        return f"DER: cut the {at} at {cut} (the rest follows)", der[:cut] + der[
            content + tlv.length :
        ]
    pos = rng.randrange(content, content + tlv.length)
    if choice == 3:
        bit = rng.randrange(8)
        return f"DER: flip bit {bit} of byte {pos} in the {at}", _splice(
            der, pos, 1, [der[pos] ^ (1 << bit)]
        )
    value = rng.choice(_BOUNDARY_BYTES)
    return f"DER: set byte {pos} in the {at} to {value:#04x}", _splice(der, pos, 1, [value])


def _splice(blob: bytes, at: int, size: int, values: list[int]) -> bytes:
    return blob[:at] + bytes(values) + blob[at + size :]


# -- PEM ----------------------------------------------------------------------------------------


def _encode_like(der: bytes, body: bytes) -> bytes:
    """``der`` as base64 in the line layout of ``body`` (64 columns, the original's newline)."""
    newline = b"\r\n" if b"\r\n" in body else b"\n"
    text = base64.b64encode(der)
    return newline.join(text[i : i + 64] for i in range(0, len(text), 64))


def pem_blocks(blob: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, DER) of the body of each PEM block in ``blob``."""
    out = []
    for match in _PEM.finditer(blob):
        try:
            der = base64.b64decode(b"".join(match.group(3).split()), validate=True)
        except ValueError:
            continue
        out.append((match.start(3), match.end(3), der))
    return out


def mutate_pem(rng: random.Random, blob: bytes, region: Region | None = None) -> Mutation:
    """A DER mutation of one PEM block of ``blob`` (in ``region``), encoded back in place."""
    start, end = (region.start, region.end) if region else (0, len(blob))
    blocks = pem_blocks(blob[start:end])
    if not blocks:
        return mutate_bytes(rng, blob, region)
    index = rng.randrange(len(blocks))
    body_start, body_end, der = blocks[index]
    what, changed = mutate_der(rng, der)
    body = blob[start + body_start : start + body_end]
    new = _encode_like(changed, body)
    where = f" in {region.name}" if region else ""
    data = blob[: start + body_start] + new + blob[start + body_end :]
    return f"PEM block {index}{where}: {what}", data


def der_chain(blob: bytes, start: int = 0) -> list[tuple[int, int]]:
    """(start, end) of each DER element back to back from ``start`` (a DER certificate chain)."""
    out = []
    offset = start
    while offset < len(blob):
        tlv = _read_tlv(blob, offset)
        if tlv is None or blob[offset] != 0x30:
            break
        out.append((offset, offset + tlv.header + tlv.length))
        offset += tlv.header + tlv.length
    return out


def mutate_der_in(rng: random.Random, blob: bytes, region: Region) -> Mutation:
    """A DER mutation of one certificate of the DER chain in ``region``, spliced in place."""
    chain = [c for c in der_chain(blob, region.start) if c[1] <= region.end]
    if not chain:
        return mutate_bytes(rng, blob, region)
    index = rng.randrange(len(chain))
    start, end = chain[index]
    what, changed = mutate_der(rng, blob[start:end])
    return f"DER certificate {index} in {region.name}: {what}", blob[:start] + changed + blob[end:]


# -- JSON collateral --------------------------------------------------------------------------

_PLACEHOLDER = "\x00geode-mutation\x00"


def _wrong_values(rng: random.Random) -> list[tuple[str, object]]:
    return [
        ("null", None),
        ("true", True),
        ("0", 0),
        ("-1", -1),
        ("1e308", 1e308),
        ("a 5000-digit integer", _PLACEHOLDER + "huge"),
        ("a float overflowing to infinity", _PLACEHOLDER + "inf"),
        ("''", ""),
        ("'zz'", "zz"),
        ("[]", []),
        ("{}", {}),
        (f"nesting {DEEP} deep", _PLACEHOLDER + "deep"),
        ("nesting 200 deep", _PLACEHOLDER + "deep200"),
        ("a list of strings", ["a", "b"]),
        ("a random string", rng.randbytes(8).hex()),
    ]


def _expand(text: str) -> str:
    """Put the raw JSON that ``json.dumps`` could not write in place of the placeholders."""
    replacements = {
        "huge": "9" * 5000,
        "inf": "1e999999",
        "deep": "[" * DEEP + "]" * DEEP,
        "deep200": '{"a":' * 200 + "1" + "}" * 200,
    }
    for key, raw in replacements.items():
        text = text.replace(json.dumps(_PLACEHOLDER + key), raw)
    return text


def _paths(value: object, path: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _set(doc: object, path: tuple[object, ...], value: object, delete: bool = False) -> object:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]  # type: ignore[index]
    if delete:
        del parent[path[-1]]  # type: ignore[attr-defined]
    else:
        parent[path[-1]] = value  # type: ignore[index]
    return doc


def mutate_json_value(rng: random.Random, value: object) -> tuple[str, str]:
    """A structural change somewhere in ``value``: (description, JSON text)."""
    doc = json.loads(json.dumps(value))
    path = rng.choice(list(_paths(doc)))
    where = "/".join(map(str, path)) or "the document"
    if path and rng.random() < 0.2:
        return f"delete {where}", json.dumps(_set(doc, path, None, delete=True))
    if path and isinstance(path[-1], str) and rng.random() < 0.1:
        text = json.dumps(doc)
        key = json.dumps(path[-1])
        return f"duplicate key {where}", text.replace(key + ":", f"{key}: 1, {key}:", 1)
    name, wrong = rng.choice(_wrong_values(rng))
    return f"set {where} to {name}", _expand(json.dumps(_set(doc, path, wrong)))


_HEX_MEMBERS = ("tcb_info_signature", "qe_identity_signature", "root_ca_crl", "pck_crl")
_PEM_MEMBERS = ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain")
_TEXT_MEMBERS = ("tcb_info", "qe_identity")


def mutate_json_document(rng: random.Random, raw: bytes) -> Mutation:
    """One change to an Intel collateral document (``_intel_collateral``'s format)."""
    doc = json.loads(raw)
    operators: list[Callable[[], tuple[str, object]]] = [
        lambda: _structure(rng, doc),
        lambda: _inner_text(rng, doc),
        lambda: _hex_member(rng, doc),
        lambda: _pem_member(rng, doc),
        lambda: _der_crl(rng, doc),
    ]
    choice = rng.randrange(len(operators) + 1)
    if choice == len(operators):
        what, data = mutate_bytes(rng, raw)
        return f"collateral bytes: {what}", data
    what, result = operators[choice]()
    text = result if isinstance(result, str) else json.dumps(result)
    return f"collateral: {what}", text.encode()


def _structure(rng: random.Random, doc: dict[str, object]) -> tuple[str, str]:
    form = rng.randrange(6)
    if form == 0:
        return "the document in a list twice", json.dumps([doc, doc])
    if form == 1:
        return "a list holding a number", json.dumps([doc, 7])
    if form == 2:
        return f"the document nested {DEEP} deep", "[" * DEEP + json.dumps(doc) + "]" * DEEP
    return mutate_json_value(rng, doc)


def _inner_text(rng: random.Random, doc: dict[str, object]) -> tuple[str, object]:
    member = rng.choice([m for m in _TEXT_MEMBERS if isinstance(doc.get(m), str)])
    text = str(doc[member])
    if rng.random() < 0.3:
        what, changed = mutate_bytes(rng, text.encode())
        doc = {**doc, member: changed.decode("utf-8", errors="replace")}
        return f"{member} text: {what}", doc
    what, changed_text = mutate_json_value(rng, json.loads(text))
    return f"{member}: {what}", {**doc, member: changed_text}


def _hex_member(rng: random.Random, doc: dict[str, object]) -> tuple[str, object]:
    member = rng.choice([m for m in _HEX_MEMBERS if isinstance(doc.get(m), str)])
    value = str(doc[member])
    forms = {
        "an odd number of digits": value[:-1],
        "a non-hex digit": "zz" + value[2:],
        "upper case": value.upper(),
        "spaces": " ".join(value[i : i + 2] for i in range(0, len(value), 2)),
        "empty": "",
        "doubled": value + value,
        "a flipped digit": value[:-1] + ("0" if value[-1:] != "0" else "1"),
        "a 0x prefix": "0x" + value,
    }
    name = rng.choice(list(forms))
    return f"{member} with {name}", {**doc, member: forms[name]}


def _pem_member(rng: random.Random, doc: dict[str, object]) -> tuple[str, object]:
    member = rng.choice([m for m in _PEM_MEMBERS if isinstance(doc.get(m), str)])
    value = str(doc[member]).encode()
    form = rng.randrange(4)
    if form == 0:
        changed = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        return f"{member}: not a certificate", {**doc, member: changed.decode()}
    if form == 1:
        what, data = mutate_bytes(rng, value)
    else:
        what, data = mutate_pem(rng, value)
    return f"{member}: {what}", {**doc, member: data.decode("utf-8", errors="replace")}


def _der_crl(rng: random.Random, doc: dict[str, object]) -> tuple[str, object]:
    member = rng.choice([m for m in ("root_ca_crl", "pck_crl") if isinstance(doc.get(m), str)])
    value = str(doc[member])
    if value.lstrip().startswith("-----BEGIN"):
        what, data = mutate_pem(rng, value.encode())
        return f"{member}: {what}", {**doc, member: data.decode()}
    what, der = mutate_der(rng, bytes.fromhex(value))
    return f"{member} (DER): {what}", {**doc, member: der.hex()}

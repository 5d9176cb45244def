"""The Gramine manifest of a Python service whose trusted files are its bundle (SGX).

An SGX enclave has no launch-time field a bundle could be bound through, as SEV-SNP
``HOST_DATA`` and TDX ``MRCONFIGID`` are; instead the enclave measurement, MRENCLAVE, covers
the signed manifest, and the manifest lists every file the enclave may read with its SHA-256.
``gramine_manifest`` writes that manifest for ``geode run`` of a Python service:

- every file of the bundle is an ``sgx.trusted_files`` entry with its SHA-256 (the walk of
  ``measure_bundle`` and staging, ``bundle_entries``: ``__pycache__`` and ``*.pyc`` are left
  out; a symbolic link, which they keep, is refused here: see ``_bundle_files``; so is anything
  else not a regular file), so the bundle ``geode run`` stages is the one MRENCLAVE covers;
- the interpreter, its standard library, the directories Geode and its dependencies are imported
  from, the system's shared libraries and Gramine's own runtime are trusted too (listed by URI:
  ``gramine-sgx-sign`` hashes them; it keeps the hashes given here);
- the command is fixed (``loader.argv``): ``python -s -m geode run`` with the service, the
  Coordinator, the bundle, the deployment's root certificate (a trusted file) and the quote
  provider ``gramine``, then ``<interpreter> <entrypoint>``, the interpreter being the one the
  bundle's ``geode.lock`` names (``geode run`` refuses any other); the host's arguments and
  environment do not reach the enclave, and ``loader.env`` sets only the library and module
  paths Python needs;
- ``sgx.debug = false``, no ``sgx.allowed_files``, quotes by DCAP.

The output is a TOML document that is also a template for ``gramine-manifest``: the one Jinja
expression left in it is Gramine's runtime directory, which only Gramine knows.
``python_layout`` asks the interpreter where its library and Geode are (it runs it once).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from geode.attestation import BundleError, bundle_entries
from geode.errors import LaunchError
from geode.runtime._bundle import read_lock

__all__ = ["PythonLayout", "gramine_manifest", "python_layout"]

GRAMINE_RUNTIME = "{{ gramine.runtimedir() }}"
# Where geode run stages the bundle and lays out credentials inside the enclave: a tmpfs at a
# path no host directory it mounts is likely to be under (a tmpfs at /tmp would hide a bundle
# in /tmp).
ENCLAVE_RUNTIME_DIR = "/geode-runtime"

_QUERY = """
import importlib.util, json, sys, sysconfig
spec = importlib.util.find_spec("geode")
paths = sysconfig.get_paths()
print(json.dumps({
    "executable": sys.executable,
    "stdlib": paths["stdlib"], "platstdlib": paths["platstdlib"],
    "purelib": paths["purelib"], "platlib": paths["platlib"],
    "multiarch": sysconfig.get_config_var("MULTIARCH") or "",
    "geode": None if spec is None or spec.origin is None else spec.origin,
}))
"""


@dataclass(frozen=True)
class PythonLayout:
    """Where an interpreter and what it imports live: ``executable`` as resolved, its standard
    library directories, the directories on ``PYTHONPATH`` in the enclave (Geode's and its
    dependencies'), and the system's multiarch tuple (``x86_64-linux-gnu``)."""

    executable: Path
    stdlib: tuple[Path, ...]
    import_path: tuple[Path, ...]
    multiarch: str


def python_layout(python: Path) -> PythonLayout:
    """Ask ``python`` (run once, ``-s``) where its library, its site packages and Geode are;
    ``LaunchError`` when it does not run or cannot import Geode."""
    try:
        done = subprocess.run(
            [str(python), "-s", "-c", _QUERY], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"cannot run the interpreter {python}: {exc}") from None
    if done.returncode != 0:
        raise LaunchError(f"the interpreter {python} failed (exit {done.returncode})")
    try:
        found = json.loads(done.stdout)
    except ValueError:
        raise LaunchError(f"the interpreter {python} did not say where its library is") from None
    if found["geode"] is None:
        raise LaunchError(f"the interpreter {python} cannot import geode: install it there")
    geode_root = Path(found["geode"]).resolve().parent.parent
    stdlib = _unique(Path(found[key]).resolve() for key in ("stdlib", "platstdlib"))
    site = [Path(found[key]).resolve() for key in ("purelib", "platlib")]
    return PythonLayout(
        executable=Path(os.path.realpath(found["executable"])),
        stdlib=stdlib,
        import_path=_unique([geode_root, *site]),
        multiarch=found["multiarch"] or "x86_64-linux-gnu",
    )


def _unique(paths: Iterable[Path]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(paths))


def _outermost(paths: Iterable[Path]) -> tuple[Path, ...]:
    """``paths`` without those inside another of them (a venv's site packages inside its lib)."""
    kept = _unique(paths)
    return tuple(p for p in kept if not any(p != q and p.is_relative_to(q) for q in kept))


def _bundle_files(bundle: Path) -> list[tuple[Path, str]]:
    """Every regular file of ``bundle`` (``bundle_entries``) with its SHA-256, sorted by relative
    path. A link is refused although staging and the measurement keep it: a trusted file is
    listed by its path and hash, and Gramine opens what the link names at run time, so the link
    itself would not be covered by MRENCLAVE."""
    found: list[tuple[str, Path, str]] = []
    try:
        for entry in bundle_entries(bundle):
            if entry.kind == "dir":
                continue
            if entry.kind != "file":
                what = "a symbolic link" if entry.kind == "link" else "a special file"
                raise LaunchError(
                    f"{entry.rel}: not a regular file ({what}); a Gramine trusted file must be one"
                )
            found.append((entry.rel, entry.path, entry.sha256().hex()))
    except BundleError as exc:
        raise LaunchError(f"cannot read the bundle: {exc}") from None
    found.sort(key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    return [(path, digest) for _rel, path, digest in found]


def _toml(value: str) -> str:
    """A TOML basic string (quotes, backslashes and control characters escaped)."""
    out = []
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _array(items: Sequence[str], indent: str = "  ") -> str:
    return "[\n" + "".join(f"{indent}{item},\n" for item in items) + "]"


def gramine_manifest(
    bundle: Path,
    entrypoint: str,
    layout: PythonLayout,
    *,
    service: str,
    coordinator: str,
    root_ca: Path,
) -> str:
    """The manifest (TOML, and a ``gramine-manifest`` template) that runs ``entrypoint`` of
    ``bundle`` under ``geode run --service SERVICE`` in an SGX enclave; ``LaunchError`` for an
    entrypoint outside the bundle, a bundle with something not a regular file, or a bundle
    whose ``geode.lock`` does not name the interpreter."""
    bundle = bundle.resolve()
    root_ca = root_ca.resolve()
    script = (bundle / entrypoint).resolve()
    if not script.is_relative_to(bundle) or not script.is_file():
        raise LaunchError(f"the entrypoint {entrypoint} is not a file inside the bundle")
    interpreter = next(
        (
            entry
            for entry in read_lock(bundle).executables.values()
            if entry.interpreter and Path(os.path.realpath(entry.path)) == layout.executable
        ),
        None,
    )
    if interpreter is None:
        raise LaunchError(
            f"the bundle's geode.lock does not lock the interpreter {layout.executable}: "
            f"geode bundle lock {bundle} python3"
        )
    files = _bundle_files(bundle)
    arch = f"/lib/{layout.multiarch}"
    usr_arch = f"/usr/lib/{layout.multiarch}"
    programs = _unique([Path(interpreter.path), layout.executable])
    argv = [
        "python3", "-s", "-m", "geode", "run",
        "--service", service, "--coordinator", coordinator,
        "--bundle", str(bundle), "--root-ca", str(root_ca),
        "--quote-provider", "gramine", "--runtime-dir", ENCLAVE_RUNTIME_DIR,
        "--", interpreter.name, script.relative_to(bundle).as_posix(),
    ]  # fmt: skip
    mounted = [Path(arch), Path(usr_arch), *programs, *layout.stdlib, *layout.import_path]
    mounts = [
        f"{{ path = {_toml('/lib')}, uri = {_toml('file:' + GRAMINE_RUNTIME)} }}",
        *(
            f"{{ path = {_toml(str(p))}, uri = {_toml(f'file:{p}')} }}"
            for p in _outermost([*mounted, bundle, root_ca])
        ),
        f'{{ type = "tmpfs", path = {_toml(ENCLAVE_RUNTIME_DIR)} }}',
    ]
    trusted = [
        _toml(f"file:{GRAMINE_RUNTIME}/"),
        _toml(f"file:{arch}/"),
        _toml(f"file:{usr_arch}/"),
        *(_toml(f"file:{p}") for p in programs),
        *(_toml(f"file:{p}/") for p in _outermost([*layout.stdlib, *layout.import_path])),
        _toml(f"file:{root_ca}"),
        *(
            f"{{ uri = {_toml(f'file:{path}')}, sha256 = {_toml(digest)} }}"
            for path, digest in files
        ),
    ]
    env = {
        "LD_LIBRARY_PATH": f"/lib:{arch}:{usr_arch}",
        "PYTHONPATH": ":".join(str(p) for p in layout.import_path),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": ENCLAVE_RUNTIME_DIR,
    }
    lines = [
        f"# Gramine manifest of the Geode service {service!r} (geode bundle gramine-manifest).",
        f"# Bundle {bundle}: {len(files)} trusted files with their SHA-256; MRENCLAVE covers them.",
        "# Render with gramine-manifest (it fills in Gramine's runtime directory), then sign",
        "# with gramine-sgx-sign and pin the enclave with geode measure sgx.",
        "",
        f"libos.entrypoint = {_toml(str(layout.executable))}",
        'loader.log_level = "error"',
        *(f"loader.env.{name} = {_toml(value)}" for name, value in env.items()),
        f"loader.argv = {_array([_toml(arg) for arg in argv])}",
        f"fs.mounts = {_array(mounts)}",
        "sys.enable_extra_runtime_domain_names_conf = true",
        "",
        "sgx.debug = false",
        'sgx.remote_attestation = "dcap"',
        'sgx.enclave_size = "4G"',
        "sgx.max_threads = 64",
        f"sgx.trusted_files = {_array(trusted)}",
        "",
    ]
    return "\n".join(lines)

"""Which quote provider ``geode run`` uses: GEODE_QUOTE_PROVIDER when set, else the first
interface present (Gramine, configfs-tsm, /dev/sev-guest), else simulation."""

from __future__ import annotations

from pathlib import Path

import pytest

from geode.attestation._providers import (
    ConfigfsTsmProvider,
    GramineProvider,
    SevGuestProvider,
    select_quote_provider,
)
from geode.errors import EvidenceError


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    return {
        "gramine_root": tmp_path / "dev" / "attestation",
        "tsm_root": tmp_path / "sys" / "kernel" / "config" / "tsm" / "report",
        "sev_guest": tmp_path / "dev" / "sev-guest",
    }


def make(paths: dict[str, Path], *which: str) -> None:
    if "gramine" in which:
        paths["gramine_root"].mkdir(parents=True)
        (paths["gramine_root"] / "attestation_type").write_text("dcap")
    if "configfs-tsm" in which:
        paths["tsm_root"].mkdir(parents=True)
    if "sev-guest" in which:
        paths["sev_guest"].parent.mkdir(parents=True, exist_ok=True)
        paths["sev_guest"].write_bytes(b"")


def select(paths: dict[str, Path], name: str | None = None, env: str | None = None) -> object:
    environ = {} if env is None else {"GEODE_QUOTE_PROVIDER": env}
    return select_quote_provider(name, environ=environ, **paths)  # type: ignore[arg-type]


def test_nothing_present_is_simulation(paths: dict[str, Path]) -> None:
    assert select(paths) is None


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (("gramine", "configfs-tsm", "sev-guest"), GramineProvider),
        (("configfs-tsm", "sev-guest"), ConfigfsTsmProvider),
        (("sev-guest",), SevGuestProvider),
    ],
)
def test_the_first_present_wins(
    paths: dict[str, Path], present: tuple[str, ...], expected: type
) -> None:
    make(paths, *present)
    assert isinstance(select(paths), expected)


def test_the_environment_overrides(paths: dict[str, Path]) -> None:
    make(paths, "gramine", "sev-guest")
    assert isinstance(select(paths, env="sev-guest"), SevGuestProvider)
    assert select(paths, env="simulated") is None
    # An explicit name (the command-line option) beats the environment.
    assert isinstance(select(paths, "gramine", env="sev-guest"), GramineProvider)


def test_a_named_provider_must_be_present(paths: dict[str, Path]) -> None:
    with pytest.raises(EvidenceError, match="'configfs-tsm' is not available here"):
        select(paths, "configfs-tsm")


def test_an_unknown_name_is_refused(paths: dict[str, Path]) -> None:
    with pytest.raises(EvidenceError, match="unknown quote provider 'tpm'") as caught:
        select(paths, env="tpm")
    assert caught.value.field == "GEODE_QUOTE_PROVIDER"


def test_the_default_paths_are_the_kernels() -> None:
    assert GramineProvider().root == Path("/dev/attestation")
    assert ConfigfsTsmProvider().root == Path("/sys/kernel/config/tsm/report")
    assert SevGuestProvider().device == Path("/dev/sev-guest")

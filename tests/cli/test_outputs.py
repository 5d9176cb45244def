"""Files the CLI writes where its user says: a symbolic link planted at the output path (in a
shared directory, say) is replaced, never written through."""

from __future__ import annotations

from pathlib import Path

from tests.support import CoordinatorProcess, geode_cli


def test_an_output_path_that_is_a_link_is_replaced_not_followed(
    coordinator: CoordinatorProcess, geode_env: dict[str, str], tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("the victim's own file")
    out = tmp_path / "root.pem"
    out.symlink_to(victim)
    geode_cli(
        "certificate", "root", "-o", str(out),
        "--coordinator", coordinator.client_addr, "--insecure",
        env=geode_env, check=True,
    )  # fmt: skip
    assert victim.read_text() == "the victim's own file"
    assert not out.is_symlink()
    assert out.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".root", "root"))) == [
        "root.pem"
    ]

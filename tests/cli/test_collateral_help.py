"""What ``--collateral`` takes, as each command's help says it: Intel's documents for SGX and
TDX, AMD's CRL for SEV-SNP (``attestation._snp_crl``), the same words everywhere."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from geode.cli import cli


@pytest.mark.parametrize(
    "command", [["coordinator"], ["verify"], ["evidence", "verify"]], ids=" ".join
)
def test_collateral_help_names_amds_crl_for_sev_snp(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    help_text = " ".join(result.output.split())
    assert "sev-snp: AMD's CRL, DER or PEM" in help_text
    assert "Intel's TCB info, QE identity and CRLs" in help_text

"""The chart rendered by Helm's own engine (``helm-python-sdk``), for the chart's tests."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, get_args

import click
import pytest
import yaml

from geode.attestation import TEE_CHOICES, SgxSealing
from geode.cli import cli
from tests.inject.support.admission import require

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "geode"
NAMESPACE = "geode"
ROOT_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
SIMULATION = {"simulation": {"enabled": True}}
ETCD = {
    "coordinator": {
        "replicas": 3,
        "store": {
            "type": "etcd",
            "etcd": {
                "endpoints": ["etcd-0.etcd:2379", "etcd-1.etcd:2379", "etcd-2.etcd:2379"],
                "tls": {"secretName": "geode-etcd-client"},
            },
        },
    }
}
TEE = {
    "coordinator": {
        "teeResources": {
            "sgx.intel.com/epc": "64Mi",
            "sgx.intel.com/enclave": 1,
            "sgx.intel.com/provision": 1,
        },
        "runtimeClassName": "kata-cc",
    }
}


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


@functools.cache
def _render(values: str) -> dict[str, str]:
    # Cached: each render generates RSA keys for the webhook's certificate (most of its time).
    helm = require("helm_python", "helm-python-sdk")
    with helm.Chart.load(str(CHART)) as chart:
        files: dict[str, str] = chart.render(
            json.loads(values), name="geode", namespace=NAMESPACE, is_install=True
        )
    return files


class Rendered:
    """The chart's output: its objects by kind and name, and NOTES.txt."""

    def __init__(self, values: dict[str, Any]) -> None:
        files = dict(_render(json.dumps(values, sort_keys=True)))
        self.notes = files.pop("geode/templates/NOTES.txt", "")
        self.objects = [
            doc for text in files.values() for doc in yaml.safe_load_all(text) if doc is not None
        ]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
        return found[0]

    def coordinator(self) -> dict[str, Any]:
        container: dict[str, Any] = self.get("StatefulSet")["spec"]["template"]["spec"][
            "containers"
        ][0]
        return container

    def webhook(self) -> dict[str, Any]:
        container: dict[str, Any] = self.get("Deployment")["spec"]["template"]["spec"][
            "containers"
        ][0]
        return container


def render_error(values: dict[str, Any]) -> str:
    helm = require("helm_python", "helm-python-sdk")
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError) as failure:
        chart.render(values, name="geode", namespace=NAMESPACE)
    return str(failure.value)


GRAMINE = {
    "coordinator": {"tee": "sgx-gramine", "sgxSealing": "mrsigner"},
    "tee": {"profiles": {"sgx-gramine": {"gramine": {"image": {"repository": "geode-sgx"}}}}},
}


def parse_command(command: click.Command, args: list[str]) -> dict[str, Any]:
    context = command.make_context(command.name or "", list(args))
    return dict(context.params)


def coordinator_params(args: list[str]) -> dict[str, Any]:
    """``geode coordinator``'s parameters for ``args``. ``--tee`` and ``--sgx-sealing`` are
    checked against the choices of geode.attestation until the command has them itself."""
    command = cli.commands["coordinator"]
    names = {opt for param in command.params for opt in param.opts}
    args = list(args)
    found: dict[str, Any] = {}
    for option, choices in (("--tee", TEE_CHOICES), ("--sgx-sealing", get_args(SgxSealing))):
        if option in args and option not in names:
            at = args.index(option)
            assert args[at + 1] in choices, (option, args[at + 1])
            found[option.lstrip("-").replace("-", "_")] = args[at + 1]
            del args[at : at + 2]
    return {**parse_command(command, args), **found}

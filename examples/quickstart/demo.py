"""The quick start, scripted: Coordinator up, verify, lock and measure the bundle, set the
manifest, run a service, tamper.

Runs in a fresh temporary directory with its own keys, so it never touches ~/.config or
~/.local/share. Every step prints the ``geode`` command it runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="geode-quickstart-"))
    # The interpreter the bundle locks is the python3 found first: this one's (its virtual
    # environment has what hello.py imports), as after `. .venv/bin/activate`.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {
        **os.environ,
        "PATH": path,
        "GEODE_SEALING_KEY": str(work / "keys" / "sealing.key"),
        "GEODE_PLATFORM_KEY": str(work / "keys" / "platform.key"),
        "GEODE_CONFIG_DIR": str(work / "config"),
    }
    client_port = free_port()
    client, mesh = f"127.0.0.1:{client_port}", f"127.0.0.1:{free_port()}"
    geode = [sys.executable, "-m", "geode"]

    def step(title: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        print(f"\n== {title}\n$ geode {shlex.join(args)}", flush=True)
        result = subprocess.run([*geode, *args], env=env, text=True, capture_output=True)
        print((result.stdout + result.stderr).rstrip(), flush=True)
        if check and result.returncode != 0:
            raise SystemExit(f"quickstart failed at: {title}")
        return result

    bundle = work / "hello"
    shutil.copytree(HERE / "hello", bundle)
    log = (work / "coordinator.log").open("w")
    print(f"== Starting the Coordinator (simulation) on {client} / {mesh}; log {log.name}")
    coordinator = subprocess.Popen(
        [
            *geode,
            "coordinator",
            "--simulation",
            "--data-dir",
            str(work / "data"),
            "--client-addr",
            client,
            "--mesh-addr",
            mesh,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
                break
            except OSError:
                if coordinator.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the Coordinator did not start; see " + log.name) from None
                time.sleep(0.1)
        measurement = step(
            "The Coordinator's expected measurement", "measure", "--coordinator-package"
        ).stdout.strip()
        step(
            "Verify the deployment statement and pin the root",
            "verify",
            "--coordinator",
            client,
            "--measurement",
            measurement,
        )
        step("Lock the interpreter the bundle needs", "bundle", "lock", str(bundle), "python3")
        hello = step("Measure the service bundle", "measure", str(bundle)).stdout.strip()
        manifest = work / "manifest.yaml"
        manifest.write_text(
            (HERE / "manifest.yaml.in").read_text().replace("@HELLO_MEASUREMENT@", hello)
        )
        step("Check the manifest offline", "manifest", "check", str(manifest))
        step("Set the manifest", "manifest", "set", str(manifest), "--coordinator", client)
        run_hello = ["run", "--service", "hello", "--coordinator", mesh, "--bundle", str(bundle)]
        step("Run the service under Geode", *run_hello, "--", "python3", "hello.py")
        evil = work / "evil.py"  # beside the bundle, not in it
        evil.write_text("import os\nprint(os.environ['API_TOKEN'])\n")
        outside = step(
            "A command outside the bundle is refused (it would get hello's secrets)",
            *run_hello,
            "--",
            "python3",
            str(evil),
            check=False,
        )
        if outside.returncode == 0 or "is outside the bundle" not in outside.stderr:
            raise SystemExit("the command outside the bundle was not refused")
        step(
            "Does the deployment run exactly this manifest?",
            "manifest",
            "verify",
            str(manifest),
            "--coordinator",
            client,
        )
        (bundle / "hello.py").write_text((bundle / "hello.py").read_text() + "# tampered\n")
        tampered = step(
            "A tampered bundle is refused",
            "run",
            "--service",
            "hello",
            "--coordinator",
            mesh,
            "--bundle",
            str(bundle),
            "--",
            "python3",
            "hello.py",
            check=False,
        )
        if tampered.returncode == 0 or "measurement mismatch" not in tampered.stderr:
            raise SystemExit("the tampered bundle was not refused")
        step("Coordinator status", "status", "--coordinator", client)
        print("\nquickstart: all steps behaved as expected")
        return 0
    finally:
        coordinator.send_signal(signal.SIGTERM)
        coordinator.wait(timeout=15)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

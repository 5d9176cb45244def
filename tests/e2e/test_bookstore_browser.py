"""A real browser sees the bookstore as a user would: headless Chromium opens the buyer's and
the thief's pages over HTTPS, trusting only the deployment's root certificate, and reads
bought > 0 and stolen = 0 from the rendered page.

``geode up examples/bookstore`` runs as a subprocess on the example's fixed ports. Chromium
gets a fresh profile and a fresh NSS database (its trust store on Linux) under a temporary
HOME, holding the deployment's root alone; the same load without that root must fail, so the
trust is the root's and nothing else's. ``GEODE_SCREENSHOT=1`` also writes the four pages,
side by side, to docs/bookstore.png.

Needs Debian's ``chromium`` and ``libnss3-tools`` (certutil). Without them the test skips,
except in CI (``CI=true``), where their absence is a failure.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.bookstore import EXAMPLE, PAGES, GeodeUp, ports_in_use

pytestmark = pytest.mark.e2e

SCREENSHOT = REPO / "docs" / "bookstore.png"
URLS = {  # the order of the screenshot's frames
    name: f"https://localhost:{PAGES[name]}/"
    for name in ("bookbuyer", "bookthief", "bookstore", "bookwarehouse")
}
# Headless and quiet: no sandbox (CI containers run it as root, where the sandbox cannot
# start), no GPU, no QUIC (the pages are TCP only), no calls home, no first-run pages.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _require(program: str, package: str) -> str:
    found = shutil.which(program)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{program} is not installed: `make test` must install the Debian {package}")
    pytest.skip(f"{program} is not installed (apt-get install {package})")


@dataclass(frozen=True)
class Tools:
    chromium: str
    certutil: str


@pytest.fixture
def tools() -> Tools:
    """Checked before the bookstore starts: without a browser there is nothing to run."""
    return Tools(_require("chromium", "chromium"), _require("certutil", "libnss3-tools"))


@pytest.fixture
def bookstore(tools: Tools, tmp_path: Path) -> Iterator[GeodeUp]:
    """``geode up examples/bookstore`` on the example's own ports, once the buyer has bought
    and the thief has tried."""
    busy = ports_in_use()
    if busy:
        pytest.fail(
            f"the bookstore's fixed ports {busy} are in use: is `geode up examples/bookstore` "
            "(make demo) running? Stop it first."
        )
    up = GeodeUp(EXAMPLE, tmp_path / "run")
    try:
        up.wait_until("every service started", lambda: "Ctrl-C stops" in up.output(), 60)
        up.wait_until("the buyer buys", lambda: up.raw("bookbuyer")["bought"] > 0, 30)
        up.wait_until("the thief tries", lambda: up.raw("bookthief")["refused"] > 0, 30)
        yield up
    finally:
        if up.process.poll() is None:
            up.stop()


# --- the browser -------------------------------------------------------------------------------


@dataclass
class Browser:
    """Headless Chromium with a fresh profile and its own NSS trust store under ``home``."""

    chromium: str
    home: Path

    @classmethod
    def trusting(cls, tools: Tools, home: Path, roots: dict[str, Path]) -> Browser:
        """A browser whose NSS database (``$HOME/.pki/nssdb``) holds ``roots`` and nothing else."""
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        store = f"sql:{nssdb}"
        subprocess.run([tools.certutil, "-N", "-d", store, "--empty-password"], check=True)
        for name, root in roots.items():
            # "C,,": a CA trusted to issue server certificates, nothing else
            subprocess.run(
                [tools.certutil, "-A", "-d", store, "-n", name, "-t", "C,,", "-i", str(root)],
                check=True,
            )
        return cls(tools.chromium, home)

    def run(self, *args: str, timeout: float = 30) -> tuple[str, str]:
        """Chromium's stdout and stderr for one command line, with a profile never used before."""
        profile = tempfile.mkdtemp(prefix="profile-", dir=self.home)
        env = {
            **os.environ,
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
        }
        process = subprocess.Popen(
            [self.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its helpers are stopped with it on a timeout
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            raise AssertionError(
                f"chromium took over {timeout:g} s: {err.decode()[-2000:]}"
            ) from None
        return out.decode(errors="replace"), err.decode(errors="replace")

    def dom(self, url: str) -> str:
        return self.run("--dump-dom", url)[0]

    def screenshot(self, url: str, target: Path, width: int, height: int) -> str:
        return self.run(
            "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={target}", url
        )[1]


def _counter(dom: str, name: str) -> int:
    """A number of a page as rendered: ``<b id=NAME>N</b>`` or a ``<th>NAME</th><td>N</td>`` row."""
    found = re.search(rf'<b id="?{name}"?>(\d+)</b>', dom) or re.search(
        rf"<th>{name}</th><td>(\d+)</td>", dom
    )
    assert found, f"no {name} counter in the rendered page:\n{dom[:2000]}"
    return int(found.group(1))


def _composed_page(path: Path) -> Path:
    """One page framing the four services' pages, for the screenshot."""
    frames = "".join(
        f"<figure><figcaption>{html.escape(url)} &nbsp; {name}</figcaption>"
        f'<iframe src="{html.escape(url)}"></iframe></figure>'
        for name, url in URLS.items()
    )
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>geode up examples/bookstore</title><style>"
        "body{font-family:sans-serif;margin:12px;background:#f2f2f2}"
        "h1{font-size:18px;margin:0 0 8px}"
        ".grid{display:grid;grid-template-columns:1fr 1fr;gap:10px}"
        "figure{margin:0;background:#fff;border:1px solid #ccc}"
        "figcaption{font:12px monospace;padding:4px 6px;background:#e6e6e6}"
        "iframe{border:0;width:100%;height:300px}</style>"
        "<h1>geode up examples/bookstore: the pages over HTTPS, trusting the deployment's root"
        f"</h1><div class=grid>{frames}</div>"
    )
    return path


def test_browser_trusting_only_the_root_sees_the_buyer_buy_and_the_thief_steal_nothing(
    tools: Tools, bookstore: GeodeUp, tmp_path: Path
) -> None:
    # A browser without the deployment's root refuses the page: the trust below is the root's.
    stranger = Browser.trusting(tools, tmp_path / "stranger", {})
    browser = Browser.trusting(
        tools, tmp_path / "browser", {"geode deployment root": bookstore.root_file}
    )
    with ThreadPoolExecutor() as pool:  # the three loads at once, to keep the test short
        refused = pool.submit(stranger.run, "--dump-dom", URLS["bookbuyer"])
        buyer = pool.submit(browser.dom, URLS["bookbuyer"])
        thief = pool.submit(browser.dom, URLS["bookthief"])
    out, err = refused.result()
    assert "ERR_CERT_AUTHORITY_INVALID" in err, err[-2000:]
    assert "bought" not in out

    assert _counter(buyer.result(), "bought") > 0
    assert _counter(thief.result(), "stolen") == 0
    assert _counter(thief.result(), "refused") > 0  # it did try: the policy said no

    if os.environ.get("GEODE_SCREENSHOT") == "1":
        time.sleep(3)  # a few more books bought and refused, for the picture
        target = tmp_path / "bookstore.png"
        err = browser.screenshot(
            _composed_page(tmp_path / "bookstore.html").as_uri(), target, 1000, 720
        )
        assert target.exists(), err[-2000:]
        shutil.copyfile(target, SCREENSHOT)

    # Ctrl-C: geode up stops everything it started and exits 0.
    code = bookstore.stop()
    assert code == 0, bookstore.output()
    assert "Stopped: no process left." in bookstore.output()
    assert bookstore.descendants, "geode up had started no process?"
    assert bookstore.left_behind() == []

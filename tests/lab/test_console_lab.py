"""The web console in a real browser (Debian's chromium, headless, driven by
Playwright's Python package; no browser download) against a lab cluster of real
daemons: the browser runs in the lab's client namespace and trusts exactly the
members' certificates. Each role logs in; a Monitor user sees the states and cannot
act (the page hides the commands, the server refuses them); a Control user swaps with
its confirmation and the Monitor follows live; an Admin installs a module from the
Configuration tab (a bad package first: errors at file:line, nothing installed); and
when the page's node dies (SIGKILL of its daemon) the page moves to the other member
and shows the failover. Screenshots go to tests/artifacts/console/ (git-ignored); the
README's are copies of these."""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from chaos.lab import Lab, wait_until
from chaos.lab_mirror import MirrorLab
from hacluster.modules import package
from hacluster.node import cluster_config
from tests.conftest import needs_root
from tests.lab.test_http_api_lab import MODULE, add_user

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
PASSWORDS = {"ann": "ann-password", "carl": "carl-password", "mona": "mona-password"}

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:             # pragma: no cover - the test extras hold it
    sync_playwright = None      # type: ignore[assignment]

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(sync_playwright is None or not CHROMIUM.exists(),
                                 reason="needs playwright (test extras) and /usr/bin/chromium "
                                        "(apt chromium, Makefile APT_PACKAGES)")]


def spki_hash(cert_path: Path) -> str:
    """What --ignore-certificate-errors-spki-list takes: base64(sha256(SPKI))."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class Console:
    """The lab, its kv mirror module, three users and a headless browser in the
    client's namespace."""

    def __init__(self, m: MirrorLab, workdir: Path) -> None:
        self.m = m
        self.workdir = workdir
        self.urls, certs = {}, []
        for node in m.nodes:
            cfg = cluster_config.load(m.cluster.config_dir(node))
            host, port = cfg.api_address
            self.urls[node] = f"https://{host}:{port}"
            certs.append(spki_hash(cfg.api_certificate[0]))
        # chromium in the client's network namespace: Playwright talks to it over a
        # pipe, which crosses namespaces
        wrapper = workdir / "chromium-in-client"
        wrapper.write_text("#!/bin/sh\nexec nsenter --net=/run/netns/"
                           f"{m.lab.hosts[m.client].netns} -- {CHROMIUM} \"$@\"\n")
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=str(wrapper), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--ignore-certificate-errors-spki-list=" + ",".join(certs)])
        self.errors: list[str] = []

    def page(self, user: str, node: str) -> "Page":
        """A fresh browser profile (context) logged in as ``user`` on ``node``'s console."""
        context = self.browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"{user}: {e}"))
        page.goto(self.urls[node] + "/console/")
        page.fill("#login-user", user)
        page.fill("#login-password", PASSWORDS[user])
        page.click("#login-submit")
        page.wait_for_selector("#app:not(.hidden)")
        page.wait_for_selector("#conn-status.conn-up")
        return page

    def cell(self, page: "Page", node: str, state: str, module: str = MODULE,
             timeout_s: float = 30) -> None:
        page.wait_for_selector(f'td.cell[data-module="{module}"][data-node="{node}"]'
                               f'[data-state="{state}"]', timeout=timeout_s * 1000)

    def shot(self, page: "Page", name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """One cluster for every browser test of this file (they run in order)."""
    lab = Lab(["n1", "n2", "w", "c"])
    console = None
    try:
        lab.start()
        m = MirrorLab(lab).start(prim="n1")
        for user, role in (("ann", "admin"), ("carl", "control"), ("mona", "monitor")):
            add_user(m, "n1", user, role, PASSWORDS[user])
        console = Console(m, tmp_path_factory.mktemp("console"))
        yield console
        assert console.errors == [], console.errors       # no script error on any page
    finally:
        if console is not None:
            console.close()
        lab.cleanup()


def timeline(page: "Page") -> list[str]:
    """The states timeline's entries, newest first, without their times."""
    return [t.strip() for t in page.eval_on_selector_all("#timeline li .chip",
                                                         "els => els.map(e => e.textContent)")]


def kv_package(m: MirrorLab, name: str, directory: Path) -> Path:
    """The lab's kv module packaged under another name (installed, never started)."""
    out = directory / f"{name}.safe"
    package.package(m.lab.workdir / f"{m.module}-module", out)
    return out


def test_roles_a_swap_with_its_confirmation_and_an_install_from_the_console(console, tmp_path):
    c, m = console, console.m
    m.wait_pair("n1")
    # Monitor: the states, live; no command shown, and the server refuses one anyway
    mona = c.page("mona", "n1")
    c.cell(mona, "n1", "PRIM")
    c.cell(mona, "n2", "SECOND")
    assert "epoch" in mona.inner_text(f'td.cell[data-module="{MODULE}"][data-node="n1"]')
    mona.click("button.tab[data-tab=control]")
    assert mona.is_visible("#control-readonly") and not mona.is_visible("button.cmd[data-cmd=swap]")
    refused = mona.evaluate("""async (module) => {
        const s = await (await fetch('/api/session')).json();
        const r = await fetch(`/api/modules/${module}/commands/swap`, {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf},
            body: JSON.stringify({nodes: ['n1']})});
        return [r.status, (await r.json()).error];
    }""", MODULE)
    assert refused[0] == 403 and "control role" in refused[1]
    mona.click("button.tab[data-tab=monitor]")

    # Control: swap, cancelled once, then confirmed; the Monitor page follows live
    carl = c.page("carl", "n1")
    carl.click("button.tab[data-tab=control]")
    carl.select_option("#control-module", MODULE)
    carl.check('#control-nodes input[value="n1"]')
    carl.click("button.cmd[data-cmd=swap]")
    carl.wait_for_selector("#confirm:not(.hidden)")
    assert "in-sync secondary" in carl.inner_text("#confirm-text")
    carl.click("#confirm-no")
    assert carl.inner_text("#control-result") == "swap: cancelled"
    carl.click("button.cmd[data-cmd=swap]")
    carl.wait_for_selector("#confirm:not(.hidden)")
    c.shot(carl, "control")
    carl.click("#confirm-yes")
    carl.wait_for_selector('#control-result[data-status="200"]', timeout=60_000)
    c.cell(mona, "n2", "PRIM", timeout_s=60)
    c.cell(mona, "n1", "SECOND", timeout_s=60)
    m.wait_pair("n2")
    # the swap in the timeline (a state between the two may show, read once a second)
    assert any(line.startswith("kvdemo on n2: ") and line.endswith("→ PRIM")
               for line in timeline(mona)), timeline(mona)
    c.shot(mona, "monitor")

    # Admin: a bad package is refused with its errors at file:line; a good one installs
    ann = c.page("ann", "n2")
    ann.click("button.tab[data-tab=configuration]")
    good = kv_package(m, "kvextra", tmp_path)
    bad = tmp_path / "kvbad.safe"
    text = package.read_userconfig(good.read_bytes(), "kvextra.safe")
    bad.write_bytes(package.with_userconfig(good.read_bytes(), "kvbad.safe",
                                            text.replace('mode="mirror"', 'mode="sideways"')))
    ann.set_input_files("#upload-file", str(bad))
    ann.click("#upload-install")
    ann.click("#confirm-yes")
    ann.wait_for_selector('#upload-result p[data-status="400"]')
    assert "kvbad.safe:conf/userconfig.xml:" in ann.inner_text("#upload-result ul.errors")
    assert "kvbad" not in [r["module"] for r in m.call("n1", "module_list")]
    ann.fill("#upload-name", "")
    ann.set_input_files("#upload-file", str(good))
    ann.click("#upload-install")
    ann.click("#confirm-yes")
    ann.wait_for_selector('#upload-result p[data-status="200"]', timeout=60_000)
    wait_until("kvextra installed on both nodes", lambda: all(
        any(r["module"] == "kvextra" and r["installed_here"] for r in m.call(n, "module_list"))
        for n in m.nodes), 30)
    # its userconfig.xml edited in the page: an error is shown at file:line and nothing
    # changes; the corrected text is installed on every node
    digest = {r["module"]: r["digest"] for r in m.call("n1", "module_list")}["kvextra"]
    ann.select_option("#uc-module", "kvextra")
    ann.click("#uc-load")
    wait_until("userconfig.xml loaded", lambda: "<service" in ann.input_value("#uc-text"), 20)
    original = ann.input_value("#uc-text")
    ann.fill("#uc-text", original.replace('scripts_timeout="30s"', 'scripts_timeout="soon"'))
    ann.click("#uc-check")
    ann.wait_for_selector('#uc-result p[data-status="400"]')
    assert "kvextra.safe:conf/userconfig.xml:" in ann.inner_text("#uc-result ul.errors")
    c.shot(ann, "configuration")
    ann.fill("#uc-text", original.replace('scripts_timeout="30s"', 'scripts_timeout="40s"'))
    ann.click("#uc-save")
    ann.click("#confirm-yes")
    ann.wait_for_selector('#uc-result p[data-status="200"]', timeout=60_000)
    assert {r["module"]: r["digest"] for r in m.call("n1", "module_list")}["kvextra"] != digest
    ann.click("button.tab[data-tab=monitor]")
    ann.wait_for_selector('td.cell[data-module="kvextra"][data-node="n1"]', timeout=30_000)

    # Logs and Advanced
    ann.click("button.tab[data-tab=logs]")
    ann.select_option("#log-module", MODULE)
    ann.select_option("#log-node", "n2")
    ann.fill("#log-filter", "state")
    ann.click("#log-show")
    wait_until("n2's module log shown", lambda: "state PRIM" in ann.inner_text("#log-out"), 20)
    c.shot(ann, "logs")
    # follow: the stream shows a line written after it started
    ann.fill("#log-filter", "resetloop")
    ann.check("#log-follow")
    m.cli("n2", "-m", MODULE, "resetloop", check=True)
    wait_until("the streamed log shows the new line",
               lambda: "event=resetloop" in ann.inner_text("#log-out"), 20)
    ann.uncheck("#log-follow")
    ann.click("button.tab[data-tab=advanced]")
    ann.select_option("#raw-module", MODULE)
    ann.click("#raw-show")
    wait_until("the raw userconfig.xml shown", lambda: "<service" in ann.inner_text("#raw-xml"), 20)
    c.shot(ann, "advanced")
    for page in (mona, carl, ann):
        page.context.close()


def test_the_page_follows_its_node_dying_to_the_other_member(console):
    c, m = console, console.m
    prim = next(n for n in m.nodes if (m.state(n) or {}).get("state") == "PRIM")
    other = m.other(prim)
    m.wait_pair(prim)
    page = c.page("mona", prim)
    c.cell(page, prim, "PRIM")
    m.cluster.kill(prim)                    # nemesis: SIGKILL of the primary's daemon
    page.wait_for_function("origin => location.origin === origin", arg=c.urls[other],
                           timeout=60_000)
    page.wait_for_selector("#conn-status.conn-up", timeout=30_000)
    assert page.inner_text("#whoami") == "mona (monitor)"       # no new login (handoff)
    c.cell(page, other, "ALONE", timeout_s=60)
    c.cell(page, prim, "UNKNOWN", timeout_s=30)
    c.shot(page, "monitor-failover")
    assert any(line.startswith(f"kvdemo on {other}: ") and line.endswith("→ ALONE")
               for line in timeline(page)), timeline(page)
    page.context.close()


def copy_screenshots_to_docs() -> None:
    """``python -m tests.lab.test_console_lab``: the README's screenshots from the last run."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "console"
    docs.mkdir(parents=True, exist_ok=True)
    for name in ("monitor", "control", "configuration", "logs", "advanced", "monitor-failover"):
        shutil.copy(ARTIFACTS / f"{name}.png", docs / f"{name}.png")


if __name__ == "__main__":
    copy_screenshots_to_docs()
    print(f"copied to {os.path.relpath(Path(__file__).resolve().parents[2] / 'docs' / 'console')}")

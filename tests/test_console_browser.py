"""The console in a real browser (chromium through Selenium), against two real gateways: A has
received a study from DCMTK's storescu, forwarded it to a PACS, answered findscu, and released it
to B. Log in, see the study VERIFIED, alter a stored file, see it ALTERED with the break drawn,
export an audit trail from the page and check it there, open the patient's link and see the
access. Every page is screenshotted (var/console-screenshots, not committed) and checked with
axe-core for WCAG A/AA violations; the login form works from the keyboard alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from .browser import axe_source, axe_violations, chrome
from .conftest import SAMPLE_STUDY
from .peers import GatewayProcess, free_port, require_tool, self_signed, wait_until
from .test_forwarder import ScriptedPacs

CLI = [sys.executable, "-m", "dicom_chain.cli"]
SHOTS = Path(
    os.environ.get(
        "CONSOLE_SCREENSHOTS", Path(__file__).resolve().parent.parent / "var" / "console-screenshots"
    )
)
PASSWORD = "correct horse battery"


def _ok(*args: str, cwd: Path, stdin: str | None = None) -> str:
    done = subprocess.run([*CLI, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _shot(session, name: str, *expected: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert session.save_screenshot(str(SHOTS / f"{name}.png"))
    text = session.find_element(By.TAG_NAME, "body").text
    for words in expected:
        assert words in text, f"{name}: {words!r} not on the page:\n{text[:1500]}"


def test_the_console_in_a_browser(tmp_path: Path):
    storescu, findscu = require_tool("storescu", "dcmtk"), require_tool("findscu", "dcmtk")
    files = sorted(SAMPLE_STUDY.glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    study, patient = str(first.StudyInstanceUID), str(first.PatientID)
    port_a, port_b, http_a = free_port(), free_port(), free_port()
    home_a, home_b = ("--home", "a"), ("--home", "b")
    _ok("keys", "export", *home_a, "--output", "a.pem", cwd=tmp_path)
    _ok("keys", "export", *home_b, "--output", "b.pem", cwd=tmp_path)
    _ok("institution", "add", "HOSPITAL_B", "--ae", "HB_GW", "--host", "127.0.0.1", "--port", str(port_b),
        "--public-key", "b.pem", *home_a, cwd=tmp_path)  # fmt: skip
    _ok("institution", "add", "HOSPITAL_A", "--ae", "HA_GW", "--host", "127.0.0.1", "--port", str(port_a),
        "--public-key", "a.pem", *home_b, cwd=tmp_path)  # fmt: skip
    _ok(
        "user",
        "add",
        "alice",
        "--role",
        "administrator",
        "--password-stdin",
        *home_a,
        cwd=tmp_path,
        stdin=PASSWORD,
    )
    cert, key = self_signed(tmp_path, "console")
    pacs = ScriptedPacs([])
    b = GatewayProcess(tmp_path / "b", port_b, ("--ae-title", "HB_GW", "--institution", "HOSPITAL_B"))
    a = GatewayProcess(tmp_path / "a", port_a, (
        "--ae-title", "HA_GW", "--institution", "HOSPITAL_A", "--forward", pacs.destination,
        "--http-port", str(http_a), "--http-host", "127.0.0.1",
        "--http-tls-cert", str(cert), "--http-tls-key", str(key),
    ))  # fmt: skip
    session = None
    try:
        b.start()
        a.start()
        modality = [storescu, "-aet", "MODALITY", "-aec", "HA_GW", "127.0.0.1", str(port_a)]
        sent = subprocess.run([*modality, *map(str, files)], capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        assert wait_until(lambda: len(pacs.received) == len(files), 60)  # forwarded to the PACS
        found = subprocess.run(
            [findscu, "-S", "-aet", "RADIOLOGY", "-aec", "HA_GW", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"PatientID={patient}", "-k", "StudyInstanceUID", "127.0.0.1", str(port_a)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert found.returncode == 0 and study in found.stdout + found.stderr
        _ok("consent", "grant", patient, "--to", "HOSPITAL_B", "--until", "2099-01-01", *home_a, cwd=tmp_path)
        _ok("release", study, "--to", "HOSPITAL_B", "--purpose", "treatment", *home_a, cwd=tmp_path)
        link = _ok(
            "patient", "link", patient, *home_a, "--base-url", f"https://localhost:{http_a}", cwd=tmp_path
        ).strip()

        downloads = tmp_path / "downloads"
        downloads.mkdir()
        session = chrome(downloads)
        axe = axe_source()
        base = f"https://localhost:{http_a}"

        def accessible(name: str) -> None:
            assert axe_violations(session, axe) == [], name

        session.get(f"{base}/console/")
        _shot(session, "01-login", "Log in")
        accessible("login")
        # the keyboard alone: skip link, then name, password, and Enter
        body = session.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        assert session.switch_to.active_element.text == "Skip to content"
        session.find_element(By.ID, "name").send_keys("alice", Keys.TAB)
        session.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
        wait_until(lambda: "Dashboard" in session.title, 10)
        _shot(session, "02-dashboard", "Dashboard", "running", "Forward queues", "SCRIPTED")
        assert "not running" not in session.find_element(By.TAG_NAME, "body").text  # the gateway serving it
        accessible("dashboard")

        session.get(f"{base}/console/studies?patient={patient}")
        _shot(session, "03-studies", "Studies", "Synthetic CT chest")
        accessible("studies")
        session.find_element(By.PARTIAL_LINK_TEXT, "Synthetic CT chest").click()
        session.find_element(By.XPATH, "//button[contains(., 'Verify the stored files now')]").click()
        _shot(session, "04-study-verified", "all VERIFIED", "Released to: HOSPITAL_B")
        accessible("study")
        assert len(session.find_elements(By.CSS_SELECTOR, "td.state-verified")) == len(files)

        stored = sorted((tmp_path / "a" / "storage").rglob("*.dcm"))[2]
        data = bytearray(stored.read_bytes())
        data[-16] ^= 0xFF  # a pixel altered on disk, behind the gateway's back
        stored.write_bytes(bytes(data))
        session.find_element(By.XPATH, "//button[contains(., 'Verify the stored files now')]").click()
        _shot(session, "05-study-altered", "1 ALTERED or MISSING", "ALTERED")
        svg = session.find_element(By.CSS_SELECTOR, "svg[aria-labelledby='chain-title']").get_attribute(
            "outerHTML"
        )
        assert "BREAK" in svg and 'stroke-dasharray="4 3"' in svg  # the break drawn

        session.get(f"{base}/console/audit")
        _shot(session, "06-audit", "Audit", "instance.received", "release.granted", "user.login")
        accessible("audit")
        session.find_element(By.LINK_TEXT, "JSON Lines").click()
        assert wait_until(lambda: any(p.suffix == ".zip" for p in downloads.iterdir()), 30)
        time.sleep(0.5)  # the download renamed from .crdownload: let it close
        [archive] = [p for p in downloads.iterdir() if p.suffix == ".zip"]
        session.find_element(By.NAME, "export").send_keys(str(archive))
        session.find_element(By.XPATH, "//button[contains(., 'Check')]").click()
        _shot(session, "07-audit-verified", "INTACT")

        session.get(f"{base}/console/sharing")
        _shot(session, "08-sharing", "HOSPITAL_B", "Consents", "Policy in force")
        accessible("sharing")

        session.delete_all_cookies()  # the patient: no session, only their link
        session.get(link)
        _shot(session, "09-patient", "Who looked at your images", "HOSPITAL_B")
        accessible("patient")
    finally:
        if session is not None:
            session.quit()
        a.terminate()
        b.terminate()
        pacs.ae.shutdown()

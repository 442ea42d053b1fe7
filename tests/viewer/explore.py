"""Manual exploration: OHIF on a local Orthanc with a job's results; prints services' state, saves screenshots."""
import json, sys, time
from pathlib import Path
from playwright.sync_api import sync_playwright

url, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
        args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    logs = []
    page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"[:300]))
    page.goto(url, wait_until="domcontentloaded")
    for i in range(40):
        time.sleep(3)
        state = page.evaluate("""() => {
          const s = window.services; if (!s) return null;
          const ds = s.displaySetService.getActiveDisplaySets().map(d => ({m: d.Modality, n: d.SeriesDescription, loaded: d.isLoaded, hyd: d.isHydrated, meas: (d.measurements||[]).length}));
          const meas = s.measurementService.getMeasurements().map(m => ({label: m.label, type: m.toolName, sop: m.referencedImageId ? 1 : 0, text: m.displayText}));
          const segs = s.segmentationService.getSegmentations().map(g => ({id: g.segmentationId, label: g.label, segs: Object.values(g.segments||{}).filter(Boolean).map(x => x.label)}));
          return {ds, meas, segs};
        }""")
        print(i, json.dumps(state)[:1500])
        if state and state["ds"] and i in (5, 15, 30):
            page.screenshot(path=str(out / f"shot{i}.png"))
    page.screenshot(path=str(out / "final.png"))
    print("\n".join(logs[-40:]))
    browser.close()

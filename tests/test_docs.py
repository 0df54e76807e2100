"""The docs site, built from a finished run and looked at in a real browser (Debian's chromium via playwright).

The site is built from the session's cpu run (`cpu_run`); `LONGCTX_DOCS_RUN=runs/x` builds it from another run
folder instead (for a quick look while developing: `longctx run --stages 01,02 --run-dir runs/x`)."""
import functools, importlib.util, json, os, shutil, subprocess, sys, threading, urllib.error, urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("longctx_docs", ROOT / "tools" / "docs.py")
docs = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(docs)  # tools/docs.py, the site builder


def test_figure_caption_flags_older_commits():
    prov = {"profile": "cpu", "run": "cpu", "commit": "a" * 40, "date": "2026-01-02T03:04:05+00:00",
            "figures": {"f.png": "s1"}}
    cap, flag = docs.figure_caption("f.png", prov, "s1", "a" * 40 + "+dirty")
    assert not flag and "profile `cpu`" in cap and "commit `aaaaaaa`" in cap and "2026-01-02 03:04" in cap
    cap, flag = docs.figure_caption("f.png", prov, "s1", "b" * 40)
    assert flag and "another commit" in cap                                   # not an ancestor of the site's commit
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.split()[0]
    cap, flag = docs.figure_caption("f.png", {**prov, "commit": first}, "s1", docs.git_commit())
    assert flag and "an older commit" in cap
    assert docs.figure_caption("f.png", prov, "s2", "a" * 40)[1]            # the file changed since the run
    assert docs.figure_caption("g.png", prov, "s1", "a" * 40)[1]            # no provenance for it


def test_sidebar_follows_quarto_yml():
    side = docs.sidebar()
    assert side[0] == (None, ["index"]) and [s for s, _ in side[1:]] == ["Guides", "Foundation", "Stages"]
    stems = [s for _, ss in side for s in ss]
    assert {p.stem for p in (ROOT / "nbs").glob("*.ipynb")} == set(stems), "every notebook has a page"


def test_quarto_flow_is_chosen_when_quarto_is_installed(tmp_path, monkeypatch):
    "With a `quarto` on PATH the build stages nbdev's _proc/ (same _quarto.yml sidebar) and renders it with Quarto."
    bin_ = tmp_path / "bin"; bin_.mkdir()
    (bin_ / "quarto").write_text('#!/bin/sh\n[ "$1" = render ] && mkdir -p "$2/_site" && ls "$2/nbs" > "$2/_site/index.html"\n')
    (bin_ / "quarto").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    run = tmp_path / "empty-run"; run.mkdir()
    rep = docs.build(tmp_path / "_docs", run=run)
    assert rep["engine"] == "quarto" and (tmp_path / "_docs" / "index.html").exists()
    proc = tmp_path / "_proc"
    import yaml
    cfg, ours = yaml.safe_load((proc / "_quarto.yml").read_text()), yaml.safe_load((ROOT / "_quarto.yml").read_text())
    assert cfg["website"]["sidebar"] == ours["website"]["sidebar"] and cfg["project"]["output-dir"] == "_site"
    listed = (tmp_path / "_docs" / "index.html").read_text().split()
    assert {f"{s}.ipynb" for _, ss in docs.sidebar() for s in ss} <= set(listed)
    assert (proc / "nbs" / "published" / "01_mixture" / "domain_mix.png").exists()   # no run: the published figures
    shutil.rmtree(proc)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


@pytest.fixture
def built_site(tmp_path, request):
    run = os.environ.get("LONGCTX_DOCS_RUN") or request.getfixturevalue("cpu_run")
    out = tmp_path / "_docs"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "docs.py"), "--run", str(run), "--out", str(out),
                        "--engine", "sphinx"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "WARNING" not in r.stderr and "ERROR" not in r.stderr, r.stderr[-4000:]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(out)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield out, f"http://127.0.0.1:{httpd.server_address[1]}", json.loads((out / "build.json").read_text())
    httpd.shutdown(); httpd.server_close()
    shutil.rmtree(out.parent / "_docs.src", ignore_errors=True)


def test_docs_site_in_browser(built_site, tmp_path):
    from playwright.sync_api import sync_playwright
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (`make browser` installs it)"
    out, base, rep = built_site
    stems = [p["stem"] for p in rep["pages"]]
    stages = [p["stem"] for p in rep["pages"] if docs.is_stage(p["stem"])]
    assert (out / "index.html").exists() and all((out / f"{s}.html").exists() for s in stems)
    executed = [p["stem"] for p in rep["pages"] if p["executed"]]
    assert executed, "no stage page comes from the run"
    if not os.environ.get("LONGCTX_DOCS_RUN"):  # the session's cpu run: every stage ran, at this commit
        assert executed == stages and not [p for p in rep["pages"] if p["flagged"]], rep["pages"]
    shots = tmp_path / "screenshots"; shots.mkdir()
    errors, links, anchors = [], set(), {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        where = {"page": None}
        page.on("console", lambda m: errors.append(f"{where['page']}: console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"{where['page']}: {e}"))
        page.on("response", lambda r: errors.append(f"{where['page']}: HTTP {r.status} {r.url}") if r.status >= 400 else None)
        page.on("requestfailed", lambda r: errors.append(f"{where['page']}: request failed {r.url}"))
        for stem in ["index", *stems, "search", "genindex"]:
            where["page"] = stem
            resp = page.goto(f"{base}/{stem}.html", wait_until="load")
            assert resp and resp.ok, f"{stem}: HTTP {resp and resp.status}"
            imgs = page.evaluate("""() => Promise.all([...document.querySelectorAll('article img')].map(i => {
                i.loading = 'eager';
                return i.decode().then(() => 0, () => 0).then(() => {
                  const r = i.getBoundingClientRect(), s = getComputedStyle(i);
                  return {src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight, shown: r.width > 0 && r.height > 0
                          && s.display !== 'none' && s.visibility !== 'hidden'};
                });}))""")
            bad = [i for i in imgs if not (i["w"] > 0 and i["h"] > 0 and i["shown"])]
            assert not bad, f"{stem}: images not visible: {bad}"
            if stem in stages:  # every stage page shows a figure whose file exists (the run's, when it ran the stage)
                figs = [i for i in imgs if "_images/" in (i["src"] or "")]
                assert figs, f"{stem}: no figure on the stage page"
                assert all((out / i["src"]).exists() for i in figs)
            if stem == "index":
                side = set(page.eval_on_selector_all(".sidebar-tree a", "els => els.map(e => e.getAttribute('href'))"))
                missing = [s for s in stems if s != "index" and f"{s}.html" not in side]
                assert not missing, f"the sidebar does not reach {missing}"
            anchors[f"{base}/{stem}.html"] = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
            for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
                if href.startswith(base): links.add(href)
            page.screenshot(path=str(shots / f"{stem}.png"))
        where["page"] = "search"
        page.goto(f"{base}/search.html?q=needle", wait_until="load")
        page.wait_for_selector("#search-results li", timeout=15000)
        browser.close()
    assert not errors, "\n".join(errors[:20])
    broken = []
    for link in sorted(links):
        url, frag = urldefrag(link)
        if url.endswith("/"): url += "index.html"
        try: urllib.request.urlopen(url, timeout=10).close()
        except urllib.error.URLError as e: broken.append(f"{link}: {e}"); continue
        if frag and url in anchors and frag not in anchors[url]: broken.append(f"{link}: no #{frag}")
    assert not broken, "\n".join(broken[:20])
    assert len(list(shots.glob("*.png"))) == len(stems) + 2

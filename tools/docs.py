"""Build the docs site into `_docs/` from the notebooks, with each stage page taken from a real run.

    python tools/docs.py [--run runs/cpu] [--out _docs] [--engine auto|quarto|sphinx]

Pages, sidebar and order follow `_quarto.yml`. Library notebooks (`00*`) are shown as written; each stage
notebook is shown as executed in a run (a `gpu` run when one exists, then `smol`, then `cpu`), so its figures
are the reproduced ones. Every figure carries its provenance (profile, run, commit, date) in its caption, read
from the `provenance.json` sidecar that `longctx run` writes beside the figures; a figure drawn at another
commit than the one the site is built from is flagged.

Engines: with Quarto installed, nbdev's own flow renders the pages (`quarto render`, as `nbdev_docs` does);
otherwise Sphinx with MyST-NB and the Furo theme, all from PyPI and fully offline: MyST-NB renders executed
notebooks with their outputs (figures as image files), Sphinx gives the sidebar (from a toctree in
`_quarto.yml`'s order) and a client-side search index, and all three are maintained by active projects.
"""
from __future__ import annotations
import argparse, json, re, shutil, subprocess, sys
from pathlib import Path

import nbformat, yaml

ROOT = Path(__file__).resolve().parent.parent
RUN_PREFERENCE = ("gpu", "smol", "cpu")  # a run of the papers' scale first, the cpu run by default
FIG_LINK = re.compile(r"!\[([^\]]*)\]\(\.\./figures/([^/)]+)/([^)]+\.png)\)")


def sidebar(quarto_yml=None) -> list[tuple[str | None, list[str]]]:
    "The sidebar of `_quarto.yml`: [(section title or None, [notebook stems])], in its order."
    cfg = yaml.safe_load(Path(quarto_yml or ROOT / "_quarto.yml").read_text())
    out = []
    for e in cfg["website"]["sidebar"]["contents"]:
        if isinstance(e, str): out.append((None, [Path(e).stem]))
        else: out.append((e["section"], [Path(x).stem for x in e["contents"]]))
    return out


def is_stage(stem: str) -> bool: return bool(re.match(r"^\d\d_", stem)) and not stem.startswith("00")


def _profile(run: Path) -> str:
    try: runs = json.loads((run / "manifest.json").read_text()).get("runs", [])
    except (OSError, ValueError): return ""
    return Path(runs[-1]["profile"]).stem if runs else ""


def find_run(root=ROOT) -> Path | None:
    "The run the stage pages come from: the newest run of the gpu profile, else smol, else cpu (None if none)."
    runs = [p.parent for p in sorted((Path(root) / "runs").glob("*/manifest.json"))]
    for prof in RUN_PREFERENCE:
        hits = [r for r in runs if _profile(r) == prof or r.name == prof]
        if hits: return max(hits, key=lambda r: (r / "manifest.json").stat().st_mtime)
    return None


def git_commit(path=ROOT) -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError): return None


def _short(c) -> str: return (c or "unknown")[:7] + ("+dirty" if c and c.endswith("+dirty") else "")
def _same(a, b) -> bool: return bool(a and b) and a.split("+")[0] == b.split("+")[0]


def _stale(commit, site_commit) -> str:
    "Why a figure drawn at `commit` is flagged on a site built at `site_commit` ('' when it is not)."
    if not site_commit or _same(commit, site_commit): return ""
    older = False
    if commit:
        try: older = subprocess.run(["git", "merge-base", "--is-ancestor", commit.split("+")[0], site_commit.split("+")[0]],
                                    cwd=ROOT, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError): pass
    return (f" **Flagged: drawn at {'an older commit' if older else 'another commit'} than this page "
            f"(`{_short(site_commit)}`).**")


def figure_caption(name: str, prov: dict | None, sha: str | None, site_commit: str | None) -> tuple[str, bool]:
    """Caption for figure `name` from its provenance (the `provenance.json` sidecar, or what the run manifest says),
    and whether it is flagged: drawn at another commit than the site's, changed since the run, or of unknown origin."""
    if not prov or (prov.get("figures") is not None and name not in prov["figures"]):
        return f"{name}: provenance unknown (no provenance.json entry). **Flagged.**", True
    when = str(prov.get("date", ""))[:16].replace("T", " ")
    cap = (f"{name}: reproduced by profile `{prov.get('profile')}`, run `{prov.get('run')}`, "
           f"commit `{_short(prov.get('commit'))}`, {when} UTC.")
    flagged = False
    if prov.get("figures") is None: cap += " (From the run manifest: the run wrote no provenance.json.)"
    elif sha and prov["figures"][name] != sha:
        cap += " **Flagged: the file changed after the run recorded it.**"; flagged = True
    if (why := _stale(prov.get("commit"), site_commit)): cap += why; flagged = True
    return cap, flagged


def _sha(p: Path) -> str:
    import hashlib
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _figure_md(rel: str, caption: str, engine: str) -> str:
    if engine == "quarto": return f"![{caption}]({rel})"
    return f"```{{figure}} {rel}\n:alt: {rel.rsplit('/', 1)[-1]}\n\n{caption}\n```"


def _note(text: str, engine: str) -> str:
    return f"::: {{.callout-note}}\n{text}\n:::" if engine == "quarto" else f"```{{note}}\n{text}\n```"


def _clean_code(src: str) -> str | None:
    "Drop nbdev directives (`#| ...`); None when the cell is hidden or holds only directives."
    lines = src.splitlines(); dirs = [l for l in lines if re.match(r"^\s*#\|", l)]
    if any(re.match(r"^\s*#\|\s*hide\b", l) for l in dirs): return None
    body = "\n".join(l for l in lines if not re.match(r"^\s*#\|", l)).strip("\n")
    return body or None


def stage_source(stem: str, run: Path | None) -> tuple[Path, dict | None]:
    "The notebook a stage page is made from (executed in `run` when it completed there) and its manifest entry."
    if run is not None:
        try: entry = json.loads((run / "manifest.json").read_text())["stages"].get(stem)
        except (OSError, ValueError, KeyError, AttributeError): entry = None
        nb = run / stem / f"{stem}.ipynb"
        if entry and entry.get("status") == "completed" and nb.exists(): return nb, entry
    return ROOT / "nbs" / f"{stem}.ipynb", None


def stage_provenance(run: Path, stem: str, entry: dict) -> dict:
    "Where a stage's execution comes from: the figures' sidecar, else the run manifest (the run that executed it)."
    pj = run / stem / "figures" / "provenance.json"
    if pj.exists(): return json.loads(pj.read_text())
    runs = json.loads((run / "manifest.json").read_text()).get("runs", [])
    started = entry.get("started", "")
    this = next((r for r in reversed(runs) if r.get("started", "") <= started), runs[-1] if runs else {})
    return {"profile": Path(this.get("profile", "?")).stem, "run": run.name, "commit": this.get("git_commit"),
            "date": entry.get("finished"), "figures": None}


GALLERY_IMG = re.compile(r"\]\(figures/([^/)]+)/([^)]+\.png)\)")


def readme_page(text: str, src: Path) -> str:
    "The README as the front page: links to nbs/ made page links, its gallery's published figures copied in."
    def copy(m):
        f = ROOT / "figures" / m.group(1) / m.group(2)
        out = src / "published" / m.group(1)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out / m.group(2))
        return f"](published/{m.group(1)}/{m.group(2)})"
    return GALLERY_IMG.sub(copy, re.sub(r"\]\(nbs/([^)]+\.ipynb)\)", r"](\1)", text))


def page(stem: str, run: Path | None, src: Path, engine: str, site_commit: str | None) -> dict:
    "Write the processed notebook for one page into `src`; return what the page shows (for the report)."
    nb_path, entry = stage_source(stem, run) if is_stage(stem) else (ROOT / "nbs" / f"{stem}.ipynb", None)
    nb = nbformat.read(nb_path, as_version=4)
    run_figs, pub_figs, shown, flagged = {}, {}, [], []
    prov = stage_provenance(run, stem, entry) if entry else None
    pub_dir = ROOT / "figures" / stem
    pub_prov = json.loads((pub_dir / "provenance.json").read_text()) if (pub_dir / "provenance.json").exists() else None
    if entry and (run / stem / "figures").is_dir(): run_figs = {f.name: f for f in sorted((run / stem / "figures").glob("*.png"))}
    if is_stage(stem) and pub_dir.is_dir(): pub_figs = {f.name: f for f in sorted(pub_dir.glob("*.png"))}

    def fig(name, alt=""):
        "A captioned figure: the run's copy, else the published copy in figures/ (flagged as not from this run)."
        if name in run_figs: f, pv, where = run_figs[name], prov, "figures"
        elif name in pub_figs: f, pv, where = pub_figs[name], pub_prov, "published"
        else: return None
        out = src / where / stem; out.mkdir(parents=True, exist_ok=True); shutil.copyfile(f, out / name)
        cap, flag = figure_caption(name, pv, _sha(f), site_commit)
        if where == "published" and entry:
            cap += " **Flagged: the published copy in figures/, not drawn by this run.**"; flag = True
        if flag: flagged.append(name)
        shown.append(name)
        return _figure_md(f"{where}/{stem}/{name}", (alt + ". " if alt else "") + cap, engine)

    def link(m):
        if m.group(2) != stem: return m.group(0)
        md = fig(m.group(3), m.group(1))
        return md if md is not None else f"*({m.group(3)}: not drawn by this run and not published.)*"

    inline = None
    if prov:
        inline = (f"*Drawn by the cell above in run `{prov.get('run')}` (profile `{prov.get('profile')}`, commit "
                  f"`{_short(prov.get('commit'))}`, {str(prov.get('date', ''))[:16].replace('T', ' ')} UTC).*")
        inline += _stale(prov.get("commit"), site_commit)
    cells = []
    for c in nb.cells:
        c.metadata.pop("papermill", None); c.metadata.pop("execution", None)
        if c.cell_type == "code":
            body = _clean_code(c.source)
            if body is None: continue
            c.source = body
            c.outputs = [o for o in c.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
            cells.append(c)
            if inline and any("image/png" in o.get("data", {}) for o in c.outputs):
                cells.append(nbformat.v4.new_markdown_cell(inline))  # the cell's inline figures carry provenance too
            continue
        if c.cell_type == "markdown":
            s = c.source
            if "{{< include ../README.md >}}" in s:  # the README, with its links to nbs/ made page links
                s = s.replace("{{< include ../README.md >}}", readme_page((ROOT / "README.md").read_text(), src))
            if re.fullmatch(r"\s*---\s*\ntitle:.*\n---\s*", s) and engine != "quarto": continue  # front matter
            c.source = FIG_LINK.sub(link, s)
        cells.append(c)
    if is_stage(stem):
        if entry:
            note = (f"This page is `{nb_path.name}` as executed by `longctx run` in run `{run.name}` "
                    f"(profile `{prov.get('profile')}`, commit `{_short(prov.get('commit'))}`, finished "
                    f"{entry.get('finished', '?')}, {entry.get('wall_s', '?')} s): its outputs and figures are the reproduced ones.")
            note += _stale(prov.get("commit"), site_commit).replace("drawn at", "executed at")
        else:
            note = ("This page shows the notebook as written: " + (f"run `{run.name}` has not completed this stage"
                    if run else "there is no run folder") + " (`make run` runs every stage); its figures are the published "
                    "copies in `figures/`.")
        cells.insert(1, nbformat.v4.new_markdown_cell(_note(note, engine)))
        rest = [n for n in (run_figs or pub_figs) if n not in shown]
        if rest:
            cells.append(nbformat.v4.new_markdown_cell("## All figures of this stage\n\n" + "\n\n".join(fig(n) for n in rest)))
    nb.cells = cells
    nb.nbformat_minor = max(nb.nbformat_minor, 5)
    for i, c in enumerate(nb.cells): c["id"] = f"c{i}"
    nbformat.write(nb, src / f"{stem}.ipynb")
    return {"stem": stem, "notebook": str(nb_path), "executed": bool(entry), "figures": shown, "flagged": flagged}


CONF = '''project = "longctx_nb"
extensions = ["myst_nb"]
html_theme = "furo"
html_title = "longctx_nb"
root_doc = "index"
nb_execution_mode = "off"          # the notebooks were executed by `longctx run`
nb_output_stderr = "remove"
nb_merge_streams = True
myst_heading_anchors = 3
html_favicon = "favicon.svg"
html_show_sourcelink = False
html_copy_source = False
exclude_patterns = ["_build", "figures/**/*.json"]
suppress_warnings = ["myst.header", "myst.xref_missing", "mystnb.unknown_mime_type", "misc.highlighting_failure",
                     "toc.not_included", "myst.strikethrough"]
'''


def build(out=None, run=None, engine="auto", quiet=True) -> dict:
    "Build the site into `out` (default `_docs/`); returns a report of the pages."
    out = Path(out or ROOT / "_docs")
    run = Path(run) if run else find_run()
    if engine == "auto": engine = "quarto" if shutil.which("quarto") else "sphinx"
    work = out.parent / "_proc" if engine == "quarto" else out.parent / (out.name + ".src")  # _proc: as nbdev_docs
    if work.exists(): shutil.rmtree(work)
    src = work / "nbs" if engine == "quarto" else work
    src.mkdir(parents=True)
    site_commit = git_commit()
    side = sidebar()
    pages = [page(s, run, src, engine, site_commit) for _, stems in side for s in stems]
    if engine == "quarto":
        cfg = yaml.safe_load((ROOT / "_quarto.yml").read_text())
        cfg["project"]["output-dir"] = "_site"
        (work / "_quarto.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        shutil.copyfile(ROOT / "README.md", work / "README.md")
        subprocess.run(["quarto", "render", str(work)], check=True)
        if out.exists(): shutil.rmtree(out)
        shutil.move(str(work / "_site"), str(out))
    else:
        (src / "conf.py").write_text(CONF)
        (src / "favicon.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
                                         '<rect width="16" height="16" rx="3" fill="#2a6fb0"/></svg>')
        idx = nbformat.read(src / "index.ipynb", as_version=4)
        for title, stems in side:
            if title is None: continue
            idx.cells.append(nbformat.v4.new_markdown_cell(
                f"```{{toctree}}\n:caption: {title}\n:hidden:\n\n" + "\n".join(stems) + "\n```"))
        nbformat.write(idx, src / "index.ipynb")
        if out.exists(): shutil.rmtree(out)
        cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-j", "1", "-q" if quiet else "-v", str(src), str(out)]
        subprocess.run(cmd, check=True)
        (out / ".nojekyll").touch()
    report = {"engine": engine, "run": str(run) if run else None, "commit": site_commit, "pages": pages}
    (out / "build.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="run folder for the stage pages (default: runs/gpu, runs/smol or runs/cpu)")
    ap.add_argument("--out", help="output folder (default: _docs)")
    ap.add_argument("--engine", default="auto", choices=["auto", "quarto", "sphinx"])
    a = ap.parse_args(argv)
    rep = build(a.out, a.run, a.engine)
    n_exec = sum(p["executed"] for p in rep["pages"] if is_stage(p["stem"]))
    n_stage = sum(is_stage(p["stem"]) for p in rep["pages"])
    print(f"docs: {len(rep['pages'])} pages with {rep['engine']} into {a.out or '_docs'}; "
          f"{n_exec}/{n_stage} stage pages from run {rep['run']}")
    for p in rep["pages"]:
        if p["flagged"]: print(f"  {p['stem']}: flagged figures {p['flagged']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The results page: one static, self-contained HTML file (no server, no network).

:func:`write_results_page` turns run files into ``<folder>/index.html``: the run table (one row per
dataset / backbone / protocol / method / shots, mean ± std over seeds) with the published number
and the difference, the reliability columns, sortable (click a header) and filterable (dataset,
method, shots, protocol, free text); a click on a row opens its per-seed provenance (config,
protocol and split-manifest SHA-256, versions, device, times), its per-class accuracy and most
frequent confusions; the plots (reliability diagrams, risk-coverage, per-class accuracy) are
embedded as PNG data. The page's state can be set from its URL fragment, e.g.
``index.html#method=gda&sort=acc:desc&row=3`` (filters, sort column and direction, an open row).
"""
from __future__ import annotations

import base64
import html
import json
import os
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from ssp import __version__
from ssp._io import write_text_atomic
from ssp.report.plots import plot_per_class, plot_reliability_diagrams, plot_risk_coverage
from ssp.report.published import baseline_method, canonical_backbone, published_lookup
from ssp.report.reliability import COLUMNS, group_key, load_samples, reliability_rows
from ssp.report.stats import mean_std, method_order

PAGE = "index.html"
_PROVENANCE_KEYS = ("created", "settings_key", "protocol_key", "protocol_summary", "protocol", "source",
                    "text_features", "seeds", "hyperparameters", "val_accuracy", "test_accuracy", "timings",
                    "warnings", "environment", "samples", "config")


def _published(row: dict, record: dict) -> float | None:
    backbone = record["backbone"]
    try:
        pub = published_lookup(baseline_method(row["method"]), row["dataset"], row["shots"],
                               canonical_backbone(backbone.get("model") or backbone["name"]))
    except (KeyError, ValueError):
        return None
    return None if pub is None else float(pub["accuracy"])


def _top_confusions(confusion: np.ndarray, k: int = 10) -> list[list[int]]:
    """``[[true, predicted, count], ...]``: the ``k`` largest off-diagonal cells."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    out = []
    for i in flat:
        t, p = np.unravel_index(i, off.shape)
        if off[t, p] > 0:
            out.append([int(t), int(p), int(off[t, p])])
    return out


def _relative(path: Path, folder: Path | None) -> str:
    if folder is None:
        return str(path)
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:  # another drive (Windows)
        return str(path)


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _plots(groups: dict, folder: Path) -> list[dict]:
    """Per (dataset, backbone, protocol): the plots of its largest shot count and first seed."""
    out = []
    for (dataset, backbone, protocol), runs in sorted(groups.items()):
        shots = max(r["shots"] for _, r, _ in runs)
        seed = min(r["seed"] for _, r, s in runs if r["shots"] == shots and s is not None)
        samples = {r["method"]: s for _, r, s in runs if r["shots"] == shots and r["seed"] == seed}
        samples = {m: samples[m] for m in method_order(samples)}
        stem = f"{dataset}_{backbone}_{protocol}_{shots}shot_seed{seed}".replace("/", "_").replace(":", "_")
        where = f"{dataset} | {backbone} | settings {protocol} | {shots}-shot seed {seed}"
        n_bins = next((int(r["reliability"]["n_bins"]) for _, r, _ in runs if r.get("reliability")), 15)
        figures = [("reliability diagrams", plot_reliability_diagrams(samples, folder / f"{stem}_reliability.png",
                                                                      n_bins=n_bins, title=where)),
                   ("risk-coverage", plot_risk_coverage(samples, folder / f"{stem}_risk_coverage.png", title=where))]
        accuracy = {m: next(r["test_accuracy"] for _, r, _ in runs
                            if r["method"] == m and r["shots"] == shots and r["seed"] == seed) for m in samples}
        best = max(accuracy, key=lambda m: accuracy[m])
        zero = samples.get("zero-shot")
        figures.append((f"per-class accuracy: {best} vs zero-shot",
                        plot_per_class(samples[best], zero, folder / f"{stem}_per_class.png", best_name=best,
                                       title=where)))
        out += [{"group": where, "title": t, "file": p.name, "src": _png_data(p)} for t, p in figures]
    return out


def page_data(runs: Iterable[tuple[Path, dict]], folder: Path | None = None) -> dict:
    """What the page shows (rows, per-seed provenance, per-class results, plots), JSON-ready.
    Plots are written into ``folder/plots`` (none when ``folder`` is None); run files are named
    relative to ``folder``."""
    runs = list(runs)
    loaded = [(path, r, load_samples(path, r)) for path, r in runs]
    rows = reliability_rows(r for _, r in runs)
    by_key: dict[tuple, list] = defaultdict(list)
    for path, r, s in loaded:
        by_key[group_key(r)].append((path, r, s))
    out_rows, details = [], {}
    for i, row in enumerate(rows):
        members = sorted(by_key[(row["dataset"], row["backbone"], row["protocol_key"], row["method"], row["shots"])],
                         key=lambda m: m[1]["seed"])
        # published numbers are few-shot test accuracies: other protocols' rows get none
        fewshot = (members[0][1].get("protocol_name") or "fewshot") == "fewshot"
        published = _published(row, members[0][1]) if fewshot else None
        values = {"acc": list(row["accuracy"]), "published": published,
                  "diff": None if published is None else row["accuracy"][0] - published}
        for key in ("new_accuracy", "harmonic_mean"):   # base-to-new runs (acc is their base accuracy)
            found = [float(r[key]) for _, r, _ in members if r.get(key) is not None]
            values[key] = list(mean_std(found)) if found else None
        values.update({name: list(row[name]) for name, *_ in COLUMNS})
        protocol_summary = members[0][1].get("protocol_summary") or ""
        out_rows.append({"id": i, "dataset": row["dataset"], "backbone": row["backbone"],
                         "protocol": row["protocol_key"], "protocol_summary": protocol_summary,
                         "method": row["method"], "shots": row["shots"], "seeds": row["seeds"], "values": values})
        with_samples = [s for _, _, s in members if s is not None]
        per_class = None
        if with_samples:
            acc = np.nanmean(np.stack([s["class_accuracy"] for s in with_samples]), axis=0) \
                if all("class_accuracy" in s for s in with_samples) else None
            confusion = sum(s["class_confusion"] for s in with_samples if "class_confusion" in s)
            per_class = {"accuracy": None if acc is None else [None if np.isnan(a) else round(float(a), 3) for a in acc],
                         "support": with_samples[0]["class_support"].tolist() if "class_support" in with_samples[0] else None,
                         "top_confusions": _top_confusions(np.asarray(confusion)) if np.ndim(confusion) == 2 else [],
                         "names": with_samples[0]["class_names"].tolist() if "class_names" in with_samples[0] else None}
        details[i] = {"runs": [{"seed": r["seed"], "file": _relative(path, folder),
                                "provenance": {k: r[k] for k in _PROVENANCE_KEYS if k in r},
                                "reliability": r.get("reliability")} for path, r, _ in members],
                      "per_class": per_class}
    groups: dict[tuple, list] = defaultdict(list)
    for path, r, s in loaded:
        if s is not None:
            groups[(r["dataset"], r["backbone"]["name"], str(r.get("protocol_key") or "-"))].append((path, r, s))
    plots = _plots(groups, folder / "plots") if folder is not None else []
    columns = [{"key": "acc", "label": "acc", "scale": 1.0, "digits": 2, "title": "test accuracy (%)"},
               {"key": "published", "label": "published", "scale": 1.0, "digits": 2, "title": "published accuracy (%)"},
               {"key": "diff", "label": "diff", "scale": 1.0, "digits": 2, "title": "ours - published"}]
    if any(r["values"]["new_accuracy"] is not None for r in out_rows):
        columns += [{"key": "new_accuracy", "label": "new", "scale": 1.0, "digits": 2,
                     "title": "base-to-new: accuracy on the new classes (%); acc is the base classes'"},
                    {"key": "harmonic_mean", "label": "HM", "scale": 1.0, "digits": 2,
                     "title": "base-to-new: harmonic mean of base and new accuracy"}]
    columns += [{"key": name, "label": name, "scale": scale, "digits": digits} for name, _, scale, digits in COLUMNS]
    return {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ssp_version": __version__,
            "n_runs": len(runs), "columns": columns, "rows": out_rows, "details": details, "plots": plots}


def write_results_page(runs: Iterable[tuple[Path, dict]], folder: str | os.PathLike[str]) -> Path:
    """Write ``folder/index.html`` (plots beside it in ``folder/plots/``, also embedded in the page)."""
    folder = Path(folder)
    runs = list(runs)
    if not runs:
        raise ValueError("no run records to show")
    data = page_data(runs, folder)
    payload = json.dumps(data, allow_nan=False, default=str).replace("</", "<\\/")
    page = _TEMPLATE.replace("__TITLE__", html.escape(f"ssp results: {data['n_runs']} runs")) \
                    .replace("__DATA__", payload)
    return write_text_atomic(folder / PAGE, page)


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em 2em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.4em 0 .4em}
.meta{color:#666;font-size:.9em} .filters{margin:.8em 0;display:flex;gap:1em;flex-wrap:wrap;align-items:center}
.filters label{font-size:.9em;color:#444} select,input{font:inherit;padding:2px 4px}
table{border-collapse:collapse;font-size:.88em} th,td{padding:3px 7px;border-bottom:1px solid #e4e4e4;white-space:nowrap}
th{background:#f3f5f8;cursor:pointer;position:sticky;top:0;user-select:none;text-align:right}
th.text,td.text{text-align:left} td{text-align:right;font-variant-numeric:tabular-nums}
th.sorted-asc::after{content:" \25B2"} th.sorted-desc::after{content:" \25BC"}
tbody tr:hover{background:#eef4ff;cursor:pointer} tr.selected{background:#dde9ff}
.neg{color:#b3261e} .pos{color:#1b6e20} .missing{color:#aaa}
#details{margin-top:1em;padding:.6em 1em;border:1px solid #d0d7e2;border-radius:6px;background:#fafbfc}
#details pre{max-height:28em;overflow:auto;background:#fff;border:1px solid #eee;padding:.5em;font-size:.85em}
.plots{display:flex;flex-wrap:wrap;gap:1em} .plots figure{margin:0;max-width:100%} .plots img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555} .wrap{overflow-x:auto;max-height:70vh}
</style></head>
<body>
<h1>ssp results</h1>
<div class="meta" id="meta"></div>
<div class="filters">
 <label>dataset <select id="f-dataset" data-field="dataset"></select></label>
 <label>method <select id="f-method" data-field="method"></select></label>
 <label>shots <select id="f-shots" data-field="shots"></select></label>
 <label>protocol <select id="f-protocol" data-field="protocol"></select></label>
 <label>search <input id="f-text" type="search" placeholder="any text"></label>
 <span id="count" class="meta"></span>
</div>
<div class="wrap"><table id="runs"><thead><tr id="head"></tr></thead><tbody id="body"></tbody></table></div>
<p class="meta">acc: test accuracy (%), mean ± std over seeds. ECE / MCE / AURC / coverage in %; NLL in nats; Brier
multi-class (0..2); TS: after temperature scaling with one temperature T fitted on the validation split;
acc@80% / acc@50%: accuracy of the most confident 80% / 50% of the test samples; LAC / APS: split conformal
sets calibrated on the validation split (coverage, mean set size). Click a header to sort, a row for its
provenance and per-class results.</p>
<div id="details" hidden></div>
<h2>Plots</h2><div id="plots"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const TEXT = [["dataset","dataset"],["backbone","backbone"],["protocol","settings"],["method","method"],["shots","shots"],["seeds","seeds"]];
const body = document.getElementById("body"), head = document.getElementById("head");
let sortKey = null, sortDir = 1;
function el(tag, attrs, text){const e=document.createElement(tag); for(const k in attrs||{}) e.setAttribute(k, attrs[k]); if(text!==undefined) e.textContent=text; return e;}
function fmt(v, col){ if(v===null||v===undefined) return null; const m=Array.isArray(v)?v[0]:v, s=Array.isArray(v)?v[1]:null;
  if(m===null) return null; const t=(m*col.scale).toFixed(col.digits); return s===null||s===undefined? t : t+" \u00b1 "+(s*col.scale).toFixed(col.digits);}
function num(v){ if(v===null||v===undefined) return NaN; return Array.isArray(v)? (v[0]===null?NaN:v[0]) : v; }
document.getElementById("meta").textContent = DATA.n_runs+" runs, "+DATA.rows.length+" rows; generated "+DATA.generated+" by ssp "+DATA.ssp_version;
for(const [key,label] of TEXT){ const th=el("th",{"class":"text","data-key":key},label); head.appendChild(th); }
for(const col of DATA.columns){ head.appendChild(el("th",{"data-key":col.key,"title":col.title||col.label},col.label)); }
for(const row of DATA.rows){
  const tr=el("tr",{"data-row":row.id,"data-dataset":row.dataset,"data-method":row.method,"data-shots":String(row.shots),"data-protocol":row.protocol});
  for(const [key] of TEXT){ const v = key==="seeds"? row.seeds.join(",") : String(row[key]);
    const td=el("td",{"class":"text","data-value":key==="shots"? row.shots : v}, v); if(key==="protocol") td.title=row.protocol_summary; tr.appendChild(td);}
  for(const col of DATA.columns){ const v=row.values[col.key], t=fmt(v,col);
    const td=el("td",{"data-value":String(num(v))}, t===null? "-" : t);
    if(t===null) td.className="missing"; else if(col.key==="diff") td.className = num(v)<0? "neg":"pos";
    tr.appendChild(td);}
  tr.addEventListener("click",()=>showDetails(row.id));
  body.appendChild(tr);
}
function fillSelect(id, field){ const sel=document.getElementById(id); const vals=[...new Set(DATA.rows.map(r=>String(r[field])))];
  vals.sort((a,b)=>(+a-+b)||a.localeCompare(b)); sel.appendChild(el("option",{"value":""},"all"));
  for(const v of vals) sel.appendChild(el("option",{"value":v},v)); sel.addEventListener("change",applyFilters);}
fillSelect("f-dataset","dataset"); fillSelect("f-method","method"); fillSelect("f-shots","shots"); fillSelect("f-protocol","protocol");
document.getElementById("f-text").addEventListener("input",applyFilters);
function applyFilters(){ let shown=0; const q=document.getElementById("f-text").value.toLowerCase();
  const want={}; for(const f of ["dataset","method","shots","protocol"]) want[f]=document.getElementById("f-"+f).value;
  for(const tr of body.rows){ let ok=true; for(const f in want) if(want[f] && tr.dataset[f]!==want[f]) ok=false;
    if(q && !tr.textContent.toLowerCase().includes(q)) ok=false; tr.hidden=!ok; if(ok) shown++; }
  document.getElementById("count").textContent = shown+" of "+body.rows.length+" rows shown"; }
function sortBy(key){ sortDir = (sortKey===key)? -sortDir : 1; sortKey=key;
  const idx=[...head.children].findIndex(th=>th.dataset.key===key); const textual=head.children[idx].classList.contains("text") && key!=="shots";
  const rows=[...body.rows];
  rows.sort((a,b)=>{ const x=a.cells[idx].dataset.value, y=b.cells[idx].dataset.value;
    if(textual) return sortDir*x.localeCompare(y);
    const u=parseFloat(x), w=parseFloat(y); if(isNaN(u)&&isNaN(w)) return 0; if(isNaN(u)) return 1; if(isNaN(w)) return -1; return sortDir*(u-w); });
  for(const r of rows) body.appendChild(r);
  for(const th of head.children) th.classList.remove("sorted-asc","sorted-desc");
  head.children[idx].classList.add(sortDir>0? "sorted-asc":"sorted-desc"); }
for(const th of head.children) th.addEventListener("click",()=>sortBy(th.dataset.key));
function showDetails(id){ const d=DATA.details[id], row=DATA.rows[id], box=document.getElementById("details");
  for(const tr of body.rows) tr.classList.toggle("selected", tr.dataset.row===String(id));
  box.hidden=false; box.innerHTML="";
  box.appendChild(el("h2",{},row.method+" | "+row.dataset+" | "+row.backbone+" | "+row.shots+"-shot | settings "+row.protocol));
  box.appendChild(el("p",{"class":"meta"},row.protocol_summary));
  for(const run of d.runs){ const det=el("details",{"class":"run"}); const p=run.provenance;
    det.appendChild(el("summary",{},"seed "+run.seed+": test "+p.test_accuracy+"%"+(p.val_accuracy==null? "" : ", val "+p.val_accuracy+"%")+" \u2014 "+run.file));
    det.appendChild(el("pre",{},JSON.stringify({reliability:run.reliability, ...p},null,1))); box.appendChild(det); }
  const pc=d.per_class;
  if(pc && pc.accuracy){ box.appendChild(el("h2",{},"Per-class accuracy (mean over seeds), worst first"));
    const t=el("table",{"class":"per-class"}); t.appendChild(el("tr",{})).append(el("th",{"class":"text"},"class"),el("th",{},"accuracy (%)"),el("th",{},"test samples"));
    const order=pc.accuracy.map((a,i)=>i).sort((i,j)=>(pc.accuracy[i]??1e9)-(pc.accuracy[j]??1e9));
    const cname=c=>pc.names&&pc.names[c]!=null? c+" "+pc.names[c] : String(c);
    for(const c of order){ const tr=el("tr",{}); tr.append(el("td",{"class":"text"},cname(c)), el("td",{},pc.accuracy[c]===null?"-":pc.accuracy[c].toFixed(1)), el("td",{},pc.support? String(pc.support[c]):"-")); t.appendChild(tr);}
    const wrap=el("div",{"class":"wrap"}); wrap.style.maxHeight="20em"; wrap.appendChild(t); box.appendChild(wrap);
    box.appendChild(el("h2",{},"Most frequent confusions (summed over seeds)"));
    const tc=el("table",{"class":"confusions"}); tc.appendChild(el("tr",{})).append(el("th",{"class":"text"},"true class"),el("th",{"class":"text"},"predicted"),el("th",{},"count"));
    for(const [a,b,n] of pc.top_confusions){ const tr=el("tr",{}); tr.append(el("td",{"class":"text"},cname(a)),el("td",{"class":"text"},cname(b)),el("td",{},String(n))); tc.appendChild(tr);} box.appendChild(tc);
  } else box.appendChild(el("p",{"class":"meta"},"no per-class results recorded for these runs (made before ssp recorded them)")); }
const plots=document.getElementById("plots"); let group=null, flex=null;
for(const p of DATA.plots){ if(p.group!==group){ group=p.group; plots.appendChild(el("h3",{},group)); flex=el("div",{"class":"plots"}); plots.appendChild(flex);}
  const f=el("figure",{}); const img=el("img",{"src":p.src,"alt":p.title}); f.append(img, el("figcaption",{},p.title+" ("+p.file+")")); flex.appendChild(f);}
if(!DATA.plots.length) plots.appendChild(el("p",{"class":"meta"},"no per-sample results recorded: no plots"));
applyFilters();
// state from the URL fragment: #dataset=X&method=Y&shots=K&protocol=P&q=TEXT&sort=KEY[:desc]&row=ID
function applyHash(){ const h=new URLSearchParams(location.hash.slice(1));
  for(const f of ["dataset","method","shots","protocol"]) if(h.has(f)){ const s=document.getElementById("f-"+f); s.value=h.get(f); s.dispatchEvent(new Event("change")); }
  if(h.has("q")){ const t=document.getElementById("f-text"); t.value=h.get("q"); t.dispatchEvent(new Event("input")); }
  if(h.has("sort")){ const [k,dir]=h.get("sort").split(":"); const th=[...head.children].find(t=>t.dataset.key===k);
    if(th){ th.click(); if(dir==="desc") th.click(); } }
  if(h.has("row")){ const tr=[...body.rows].find(r=>r.dataset.row===h.get("row")); if(tr) tr.click(); } }
applyHash(); window.addEventListener("hashchange", applyHash);
</script>
</body></html>
"""

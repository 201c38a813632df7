"""The operator's page: one HTML document, its style and script inline (no plug-in, no outside asset,
nothing to install on the panel). It reads /events (server-sent events) and changes nothing.

Layout: a grid of camera tiles (as many columns as fit, one on a small panel), each with the newest
frame and its heatmap, the defect regions as boxes, the verdict in large letters, the score on a bar
whose middle is the threshold, the model version, OK / NotOK / NotDecidable counters, frames/s,
p99 capture->alert latency and drops. A blind camera is covered by a red hatched "CAMERA BLIND"
panel that blinks; a camera without frames for a few seconds says "NO FRAMES". A strip along the
bottom holds the newest NotOK parts (thumbnail, time, part id, score); a click opens the picture
large with its regions and details. If the node stops answering, the whole page says so (a frozen
screen must never look live).
"""
PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>edge-inspect: operator's screen</title>
<style>
:root{--ok:#1fa34a;--ng:#e02424;--nd:#f0a500;--bg:#0e0f11;--fg:#f1f1f1;--tile:#1b1d21;--dim:#9aa0a6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.3 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
     min-height:100vh;display:flex;flex-direction:column}
header{display:flex;gap:12px;align-items:baseline;padding:6px 10px;background:#000;border-bottom:1px solid #333}
header h1{font-size:16px;margin:0;font-weight:600}
header .sp{flex:1}
#conn{font-weight:600}
#conn.ok{color:var(--ok)} #conn.bad{color:#fff;background:var(--ng);padding:0 6px;border-radius:3px}
#lost{display:none;background:var(--ng);color:#fff;text-align:center;font-size:22px;font-weight:800;padding:8px}
body.lost #lost{display:block} body.lost #tiles{opacity:.35}
#tiles{flex:1;display:grid;grid-template-columns:repeat(auto-fit,minmax(290px,1fr));gap:8px;padding:8px;align-content:start}
.tile{background:var(--tile);border:4px solid #3a3d42;border-radius:8px;padding:6px;position:relative;min-width:0}
.tile.v-OK{border-color:var(--ok)} .tile.v-NotOK{border-color:var(--ng)} .tile.v-NotDecidable{border-color:var(--nd)}
.head{display:flex;justify-content:space-between;align-items:baseline;gap:6px}
.cam{font-size:18px;font-weight:700;flex:0 0 auto;max-width:60%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.state{font-size:12px;color:var(--dim);min-width:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;direction:rtl}
.pic{position:relative;width:min(100%,44vh);aspect-ratio:1/1;margin:4px auto;background:#000;overflow:hidden}
.pic img{position:absolute;inset:0;width:100%;height:100%;object-fit:fill}
.box{position:absolute;border:2px solid #fff;box-shadow:0 0 0 1px #000}
.cover{position:absolute;inset:0;display:none;align-items:center;justify-content:center;text-align:center;
       font-weight:900;letter-spacing:1px;padding:8px}
.tile.blind{border-color:#ff1a1a;animation:pulse 1s steps(2,end) infinite}
.tile.blind .cover{display:flex;font-size:30px;color:#fff;
       background:repeating-linear-gradient(45deg,#c00000 0 18px,#7a0000 18px 36px)}
.tile.blind .verdict{color:#ff3030} .cover .why{font-size:13px;font-weight:600;overflow-wrap:anywhere;margin-top:6px}
.tile.stale .cover,.tile.waiting .cover{display:flex;font-size:22px;color:#000;background:rgba(240,165,0,.85)}
@keyframes pulse{50%{border-color:#400}}
.row{display:flex;justify-content:space-between;align-items:center;gap:8px;margin-top:2px}
.verdict{font-size:30px;font-weight:800}
.v-OK .verdict{color:var(--ok)} .v-NotOK .verdict{color:var(--ng)} .v-NotDecidable .verdict{color:var(--nd)}
.score{text-align:right;font-variant-numeric:tabular-nums}
.bar{height:10px;background:#33363b;border-radius:5px;position:relative;margin:4px 0}
.bar i{position:absolute;left:0;top:0;bottom:0;border-radius:5px;background:var(--ok)}
.v-NotOK .bar i{background:var(--ng)}
.bar b{position:absolute;left:50%;top:-3px;bottom:-3px;width:2px;background:#fff}
.counts{display:grid;grid-template-columns:repeat(3,1fr);gap:4px;margin-top:4px;text-align:center}
.counts div{background:#111317;border-radius:4px;padding:2px}
.counts span{display:block;font-size:18px;font-weight:700;font-variant-numeric:tabular-nums}
.counts .n-ok span{color:var(--ok)} .counts .n-ng span{color:var(--ng)} .counts .n-nd span{color:var(--nd)}
.stats{display:flex;justify-content:space-between;color:var(--dim);font-size:12px;margin-top:4px;font-variant-numeric:tabular-nums}
.stats em{font-style:normal;color:var(--fg)}
.model{color:var(--dim);font-size:11px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
footer{background:#000;border-top:2px solid var(--ng);padding:4px 8px}
footer h2{font-size:13px;margin:0 0 4px;color:var(--dim);font-weight:600}
#strip{display:flex;gap:6px;overflow-x:auto;min-height:64px}
#strip .none{color:var(--dim);align-self:center}
.rej{flex:0 0 auto;width:104px;background:#1b1d21;border:2px solid var(--ng);border-radius:5px;padding:2px;cursor:pointer;
     font-size:11px;color:var(--fg);text-align:left}
.rej .pic{width:100%;margin:0 0 2px}
.rej div{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
dialog{background:#15171a;color:var(--fg);border:3px solid var(--ng);border-radius:8px;padding:10px;max-width:96vw}
dialog .pic{width:min(78vh,90vw)}
dialog::backdrop{background:rgba(0,0,0,.7)}
dialog button{font-size:16px;padding:4px 14px;float:right}
@media (max-width:640px),(max-height:520px){
  body{font-size:12px} .verdict{font-size:22px} .cam{font-size:15px} .counts span{font-size:15px}
  .pic{width:min(100%,30vh)} #tiles{gap:4px;padding:4px} .tile{padding:4px;border-width:3px}
  .tile.blind .cover{font-size:18px;padding:4px} .cover .why{display:none} .rej{width:72px;font-size:10px} .counts div{font-size:11px}}
</style></head>
<body>
<header><h1>edge-inspect</h1><span id="node"></span><span class="sp"></span>
<span id="clock"></span><span id="conn">connecting&hellip;</span></header>
<div id="lost">NO DATA FROM THE NODE: this screen is not live</div>
<main id="tiles"></main>
<footer><h2>Last rejects (NotOK) &mdash; click to open <span id="skipped"></span></h2><div id="strip"><span class="none">none yet</span></div></footer>
<dialog id="big"><button id="close">close</button><div id="bigtext"></div><div class="pic" id="bigpic"></div><div id="bignote"></div></dialog>
<script>
"use strict";
const $ = (s, el=document) => el.querySelector(s);
const tiles = new Map(), seenRejects = new Set(), rejectsByKey = new Map();
let first = true, lastMsg = 0, openKey = null;     // openKey: the reject last shown large (while #big is open)
const fmt = (x, d=2) => (x === null || x === undefined) ? "–" : Number(x).toFixed(d);
const hms = t => t ? new Date(t * 1000).toLocaleTimeString([], {hour12:false}) : "–";
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function drawBoxes(pic, boxes) {
  pic.querySelectorAll(".box").forEach(b => b.remove());
  for (const [x, y, w, h] of (boxes || [])) {
    const b = el("div", "box");
    b.style.left = (x * 100) + "%"; b.style.top = (y * 100) + "%"; b.style.width = (w * 100) + "%"; b.style.height = (h * 100) + "%";
    pic.appendChild(b);
  }
}
function makeTile(id) {
  const t = el("section", "tile"); t.dataset.camera = id;
  t.innerHTML = `<div class="head"><span class="cam"></span><span class="state"></span></div>
    <div class="pic"><img alt=""><div class="cover"></div></div>
    <div class="row"><span class="verdict">–</span><span class="score"></span></div>
    <div class="bar"><i></i><b title="threshold"></b></div>
    <div class="model"></div>
    <div class="counts"><div class="n-ok">OK<span>0</span></div><div class="n-ng">NotOK<span>0</span></div><div class="n-nd">NotDecidable<span>0</span></div></div>
    <div class="stats"><span>frames/s <em class="fps">–</em></span><span>p99 <em class="p99">–</em> ms</span><span>drops <em class="drops">0</em></span></div>`;
  $(".cam", t).textContent = id;
  $("#tiles").appendChild(t);
  return t;
}
function renderTile(c) {
  const t = tiles.get(c.id) || makeTile(c.id); tiles.set(c.id, t);
  t.className = "tile " + c.state + (c.verdict ? " v-" + c.verdict : "");
  t.dataset.state = c.state;
  $(".state", t).textContent = c.kind + (c.live ? " (live)" : "") + " · " + c.source;
  const img = $("img", t);
  if (c.img && img.dataset.src !== c.img) { img.dataset.src = c.img; img.src = c.img; }
  drawBoxes($(".pic", t), c.verdict === "NotOK" ? c.boxes : []);
  const cover = $(".cover", t), blind = c.state === "blind";
  cover.textContent = "";
  if (blind) { const b = el("div"); b.append(el("div", "big", "CAMERA BLIND"), el("div", "why", c.blind_reason || "")); cover.appendChild(b); }
  else cover.textContent = c.state === "stale" ? "NO FRAMES for " + fmt(c.frame_age_s, 0) + " s" : c.state === "waiting" ? "waiting for frames" : "";
  $(".verdict", t).textContent = blind ? "BLIND" : (c.verdict || "–");
  $(".score", t).textContent = blind ? "no picture since " + hms(c.blind_since) : c.score === null || c.score === undefined ? (c.reason || "") : "score " + fmt(c.score) + " / threshold " + fmt(c.threshold);
  $(".bar i", t).style.width = (blind || c.normalised_score === null || c.normalised_score === undefined ? 0 : Math.min(100, c.normalised_score * 100)) + "%";
  $(".model", t).textContent = "model " + (c.model_version || "–") + (c.part_id ? " · part " + c.part_id : "") + (c.frame_seq !== undefined && c.frame_seq !== null ? " · frame " + c.frame_seq : "");
  const n = c.counts || {};
  $(".n-ok span", t).textContent = n.OK || 0; $(".n-ng span", t).textContent = n.NotOK || 0; $(".n-nd span", t).textContent = n.NotDecidable || 0;
  $(".fps", t).textContent = fmt(c.fps, 1); $(".p99", t).textContent = fmt(c.p99_ms, 0); $(".drops", t).textContent = c.dropped || 0;
}
function openReject(r) {
  $("#bigtext").textContent = `${r.camera} · ${hms(r.time)} · part ${r.part_id || "–"} · alert ${r.alert_seq} · score ${fmt(r.score)} / threshold ${fmt(r.threshold)} · model ${r.model_version || "–"}`;
  const pic = $("#bigpic"); pic.innerHTML = "";
  r = rejectsByKey.get(r.key) || r;                    // the newest news of it: its full frame may have come since
  const full = !!r.full, src = full ? r.full : r.img;   // the camera's whole frame when preprocess kept it
  const shape = full && r.frame_shape ? r.frame_shape : [1, 1];
  pic.style.aspectRatio = shape[1] + "/" + shape[0];
  if (src) { const i = el("img"); i.src = src; i.alt = "reject " + r.alert_seq; i.dataset.kind = full ? "full" : "model"; pic.appendChild(i); }
  drawBoxes(pic, full ? r.full_boxes : r.boxes);
  $("#bignote").textContent = full ? r.full_note : "what the model saw (" + (r.full_note || "no full frame") + ")";
  openKey = r.key;
  if (!$("#big").open) $("#big").showModal();
}
function renderRejects(list) {
  const strip = $("#strip"), keep = new Set(list.map(r => r.key));
  rejectsByKey.clear(); list.forEach(r => rejectsByKey.set(r.key, r));
  // opened before its full frame came (preprocess encodes it a moment after the verdict): show it now
  const shown = openKey !== null && $("#big").open ? rejectsByKey.get(openKey) : null;
  const pic = $("#bigpic img");
  if (shown && shown.full && !(pic && pic.dataset.kind === "full")) openReject(shown);
  strip.querySelectorAll(".rej").forEach(e => { if (!keep.has(Number(e.dataset.key))) e.remove(); });
  if (list.length) { const none = $(".none", strip); if (none) none.remove(); }
  for (const r of list.slice().reverse()) {          // oldest first, each new one goes to the front
    if (seenRejects.has(r.key)) continue;
    seenRejects.add(r.key);
    const b = el("button", "rej"); b.dataset.key = r.key; b.dataset.alertSeq = r.alert_seq;
    b.dataset.published = Math.round((r.time || 0) * 1000); b.dataset.shown = Date.now(); b.dataset.initial = first ? "1" : "0";
    const pic = el("div", "pic"); if (r.img) { const i = el("img"); i.src = r.img; i.alt = ""; pic.appendChild(i); } drawBoxes(pic, r.boxes);
    b.append(pic, el("div", "", hms(r.time) + " " + r.camera), el("div", "", "part " + (r.part_id || "–")), el("div", "", "score " + fmt(r.score)));
    b.addEventListener("click", () => openReject(r));
    strip.prepend(b);
  }
}
function render(doc) {
  $("#node").textContent = doc.node ? "node " + doc.node : "";
  const ids = new Set(doc.cameras.map(c => c.id));
  for (const [id, t] of tiles) if (!ids.has(id)) { t.remove(); tiles.delete(id); }
  doc.cameras.forEach(renderTile);
  renderRejects(doc.rejects || []);
  $("#skipped").textContent = doc.rejects_skipped ? "· " + doc.rejects_skipped + " more not shown (over 5 a second per camera; the counters have every one)" : "";
  first = false;
}
$("#close").addEventListener("click", () => $("#big").close());
const es = new EventSource("/events");
es.onmessage = ev => { lastMsg = Date.now(); document.body.classList.remove("lost"); $("#conn").textContent = "live"; $("#conn").className = "ok"; render(JSON.parse(ev.data)); };
es.onerror = () => { $("#conn").textContent = "reconnecting"; $("#conn").className = "bad"; };
function tick() {
  $("#clock").textContent = new Date().toLocaleTimeString([], {hour12:false});
  if (Date.now() - lastMsg > 5000) { document.body.classList.add("lost"); $("#conn").textContent = "no data"; $("#conn").className = "bad"; }
}
lastMsg = Date.now(); tick(); setInterval(tick, 1000);
</script>
</body></html>
""".encode()

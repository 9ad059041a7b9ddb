// The topology page: this shard's VPCs, peerings (this side and what it knows of the peer's),
// hosts and what each holds. Reads the REST API with the operator's token (given once as
// #token=... or typed in; kept for the tab only) and redraws every REFRESH_MS.
"use strict";
const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
let token = "";
let refreshes = 0;

function el(tag, attrs = {}, ...children) {
  const node = tag === "line" || tag === "circle" || tag === "text" || tag === "g"
    ? document.createElementNS(SVG, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

function graph(vpcs, peerings) {
  const svg = document.getElementById("graph");
  const names = [...new Set([...vpcs.map(v => v.name), ...peerings.map(p => p.peer_vpc)])];
  const local = new Set(vpcs.map(v => v.name));
  const w = +svg.getAttribute("width"), h = +svg.getAttribute("height");
  const at = {};
  names.forEach((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(names.length, 1) - Math.PI / 2;
    at[n] = [w / 2 + (w / 2 - 70) * Math.cos(a), h / 2 + (h / 2 - 45) * Math.sin(a)];
  });
  const edges = peerings.map(p => el("line", {
    class: p.state, "data-peering": `${p.vpc}/${p.name}`,
    x1: at[p.vpc][0], y1: at[p.vpc][1], x2: at[p.peer_vpc][0], y2: at[p.peer_vpc][1],
  }));
  const nodes = names.map(n => el("g", { class: local.has(n) ? "local" : "remote", "data-vpc": n },
    el("circle", { cx: at[n][0], cy: at[n][1], r: 28 }),
    el("text", { x: at[n][0], y: at[n][1] + 4, "text-anchor": "middle" }, n)));
  svg.replaceChildren(...edges, ...nodes);
}

async function refresh() {
  const health = await (await fetch("/healthz")).json();
  document.getElementById("shard").textContent = `${health.shard} (version ${health.version})`;
  const vpcs = (await api("/v1/vpcs")).vpcs;
  const per = await Promise.all(vpcs.map(async v => ({
    vpc: v,
    peerings: (await api(`/v1/vpcs/${encodeURIComponent(v.name)}/peerings`)).peerings,
    endpoints: (await api(`/v1/vpcs/${encodeURIComponent(v.name)}/endpoints`)).endpoints,
  })));
  const hosts = await Promise.all((await api("/v1/hosts")).hosts.map(
    h => api(`/v1/hosts/${encodeURIComponent(h.name)}`)));
  const peerings = per.flatMap(x => x.peerings);
  const endpoints = per.flatMap(x => x.endpoints);
  graph(vpcs, peerings);
  fill("vpcs", per.map(({ vpc, endpoints }) => el("tr", { "data-vpc": vpc.name },
    el("td", {}, vpc.name), el("td", {}, String(vpc.vni)),
    el("td", {}, vpc.subnets.map(s => s.cidr).join(", ")),
    el("td", {}, endpoints.map(e => `${e.name} ${e.ip}${e.host ? " @" + e.host : ""}`).join(", ") || "-"))));
  fill("peerings", peerings.map(p => el("tr", { "data-peering": `${p.vpc}/${p.name}` },
    el("td", {}, `${p.vpc}/${p.name}`), el("td", {}, p.peer_vpc),
    el("td", { class: p.state }, p.state), el("td", {}, p.state_details),
    el("td", {}, p.export_policy_id), el("td", {}, p.peer_export_policy_id || "-"))));
  fill("hosts", hosts.map(h => {
    const st = h.status;
    const waiting = st ? st.streams.filter(s => s.state !== "delivered").map(s => `${s.stream} ${s.state}`) : [];
    const health = !st ? "no report yet" : st.fail_static ? `FAIL-STATIC: ${waiting.join(", ")}` : "ok";
    const here = endpoints.filter(e => e.host === h.name).map(e => `${e.vpc}/${e.name}`);
    const held = Object.entries(h.applied || {}).map(([s, v]) => `${s} (${v})`);
    return el("tr", { "data-host": h.name },
      el("td", {}, h.name), el("td", {}, h.underlay_ip),
      el("td", { class: st && !st.fail_static ? "ok" : "bad" }, health),
      el("td", {}, st ? String(st.flows) : "-"), el("td", {}, here.join(", ") || "-"),
      el("td", {}, held.join(", ") || "-"));
  }));
  refreshes += 1;
  const status = document.getElementById("status");
  status.className = "";
  status.dataset.refreshes = String(refreshes);
  status.textContent = `live, refreshed every ${REFRESH_MS / 1000} s (${refreshes} so far)`;
}

async function loop() {
  try {
    await refresh();
  } catch (err) {
    const status = document.getElementById("status");
    status.className = "error";
    status.textContent = String(err.message || err);
    if (String(err.message).includes("HTTP 401")) document.getElementById("login").hidden = false;
  }
  setTimeout(loop, REFRESH_MS);
}

function start() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) {
    sessionStorage.setItem("meshpeer-token", given);
    history.replaceState(null, "", location.pathname);  // the token leaves the address bar
  }
  token = sessionStorage.getItem("meshpeer-token") || "";
  document.getElementById("login").addEventListener("submit", ev => {
    ev.preventDefault();
    token = document.getElementById("token").value;
    sessionStorage.setItem("meshpeer-token", token);
    document.getElementById("login").hidden = true;
  });
  if (!token) document.getElementById("login").hidden = false;
  loop();
}

start();

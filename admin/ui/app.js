// The sluice status page: it polls the admin API's /v1 endpoints once a
// second with the token typed in (kept in sessionStorage: this tab only)
// and redraws the tables. Everything is written with textContent, never as
// HTML, so names coming from the configuration or the traffic cannot inject
// markup.
"use strict";

(function () {
  const tokenKey = "sluice.token";
  const interval = 1000; // ms between two polls
  let timer = null;
  let generation = 0; // bumped by start and stop, so a poll in flight from before does not reschedule

  const $ = (id) => document.getElementById(id);
  const askText = "This sluice's API needs a token: type one of role read or above; it is kept for this tab only.";

  function setStatus(text, error) {
    const s = $("status");
    s.textContent = text;
    s.className = error ? "error" : "";
  }

  async function get(path) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(tokenKey);
    if (token) headers.Authorization = "Bearer " + token;
    const r = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    if (r.status === 401 || r.status === 403) {
      const err = new Error("the token was refused (" + r.status + "): type a token of role read or above");
      err.auth = true;
      throw err;
    }
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  function cell(tr, value, cls) {
    const td = document.createElement("td");
    td.textContent = value === undefined || value === null ? "" : String(value);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(id, rows, render, emptyText) {
    const body = $(id).tBodies[0];
    const cols = $(id).tHead.rows[0].cells.length;
    const frag = document.createDocumentFragment();
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = cell(tr, emptyText, "empty");
      td.colSpan = cols;
      frag.appendChild(tr);
    }
    for (const row of rows) {
      const tr = document.createElement("tr");
      render(tr, row);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  function seconds(s) {
    if (!s) return "0s";
    if (s < 60) return s.toFixed(1) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + Math.floor(s % 60) + "s";
    return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
  }

  function since(t) {
    const d = Date.parse(t);
    if (!d || d < 0) return "";
    return seconds(Math.max(0, (Date.now() - d) / 1000)) + " ago";
  }

  function drawShards(v) {
    fill("shards", v.shards, (tr, s) => {
      tr.dataset.shard = s.source + "/" + s.shard;
      tr.dataset.state = s.state;
      cell(tr, s.source);
      cell(tr, s.shard, "num");
      const st = cell(tr, "");
      const badge = document.createElement("span");
      badge.className = "state state-" + s.state;
      badge.textContent = s.state;
      st.appendChild(badge);
      cell(tr, s.reason || "", "wrap");
      cell(tr, since(s.since));
      cell(tr, s.position, "num");
      cell(tr, s.lag, "num");
      cell(tr, seconds(s.iteratorAgeSeconds), "num");
      cell(tr, s.buffered, "num");
      cell(tr, s.delivered, "num");
      cell(tr, s.deadLetters, "num");
    }, "no shards owned here (no stream sources, or not assigned yet)");
  }

  function drawAccount(a) {
    fill("account", [a], (tr, v) => {
      cell(tr, v.accountLimit.concurrentExecutions, "num");
      cell(tr, v.accountLimit.unreservedConcurrentExecutions, "num");
      cell(tr, v.accountLimit.minUnreservedConcurrentExecutions, "num");
      cell(tr, v.accountUsage.concurrentExecutions, "num");
      cell(tr, v.accountUsage.unreservedConcurrentExecutions, "num");
      cell(tr, v.accountUsage.functionCount, "num");
      cell(tr, v.accountUsage.waitingFunctions, "num");
    }, "");
  }

  function drawFunctions(v) {
    fill("functions", v.functions, (tr, f) => {
      tr.dataset.function = f.functionName;
      cell(tr, f.functionName);
      const r = f.concurrency.reservedConcurrentExecutions;
      cell(tr, r === null || r === undefined ? "unreserved" : r + " (" + f.concurrency.origin + ")");
      cell(tr, f.usage.concurrentExecutions, "num");
      cell(tr, f.usage.waiting, "num");
      cell(tr, f.configuration.timeout);
    }, "no functions");
  }

  function drawLimits(v) {
    fill("scopes", v.scopes || [], (tr, s) => {
      cell(tr, s.scope);
      cell(tr, s.usage, "num");
      cell(tr, s.limit < 0 ? "none" : s.limit, "num");
      cell(tr, s.limit < 0 ? "" : s.available, "num");
      cell(tr, s.rule || "");
    }, "no scope holds a slot");
    fill("rules", v.rules || [], (tr, r) => {
      cell(tr, r.pattern);
      cell(tr, r.concurrency, "num");
      cell(tr, r.disabled ? "no" : "yes");
      cell(tr, r.origin);
      cell(tr, r.description || "");
    }, "no rules");
  }

  function drawQueues(v) {
    fill("queues", v.queues, (tr, q) => {
      cell(tr, q.function);
      cell(tr, q.scopes.join(", "));
      cell(tr, q.waiting, "num");
      cell(tr, seconds(q.oldestWaitSeconds), "num");
      cell(tr, q.reason, "wrap");
    }, "nothing waits");
  }

  function drawDeadLetters(v) {
    fill("deadletters", v.deadLetters, (tr, d) => {
      tr.dataset.source = d.source;
      tr.dataset.condition = d.condition;
      cell(tr, d.source);
      cell(tr, d.condition);
      cell(tr, d.count, "num");
    }, "no source has a dead-letter destination");
  }

  async function poll(gen) {
    try {
      const [shards, account, functions, limits, queues, dead] = await Promise.all([
        get("/v1/shards"), get("/v1/account"), get("/v1/functions"), get("/v1/limits"),
        get("/v1/queues"), get("/v1/dead-letter-counts"),
      ]);
      if (gen !== generation) return;
      drawShards(shards);
      drawAccount(account);
      drawFunctions(functions);
      drawLimits(limits);
      drawQueues(queues);
      drawDeadLetters(dead);
      setStatus("Connected; updated every " + interval / 1000 + " s.", false);
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.updated = String(Date.now());
    } catch (e) {
      if (gen !== generation) return;
      if (e.auth) {
        stop();
        // No token typed yet: the API wants one, so ask for it.
        if (sessionStorage.getItem(tokenKey) === null) setStatus(askText, false);
        else setStatus(e.message, true);
        return;
      }
      setStatus(e.message, true);
    }
    timer = setTimeout(() => poll(gen), interval);
  }

  function stop() {
    generation++;
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  function start() {
    stop();
    poll(generation);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(tokenKey, $("token").value.trim());
      $("token").value = "";
      start();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(tokenKey);
      stop();
      for (const t of document.querySelectorAll("tbody")) t.replaceChildren();
      setStatus("Token forgotten.", false);
    });
    // With a token kept for this tab, or none yet (an API without tokens
    // answers at once; one with tokens makes the page ask for one).
    start();
  });
})();

// GRU4Rec demo page: plain JS, no dependencies. All data goes into the DOM as textContent only.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { sessionId: newSessionId(), clicks: [], k: 10, queue: Promise.resolve(), searchSeq: 0 };

  function newSessionId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return "demo-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  async function api(method, path, body) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (!response.ok && !(method === "DELETE" && response.status === 404)) {
      let detail = response.statusText;
      try { detail = JSON.stringify((await response.json()).detail); } catch (e) { /* not JSON */ }
      throw new Error(method + " " + path + ": " + response.status + " " + detail);
    }
    return response.status === 204 || method === "DELETE" ? null : response.json();
  }

  // one clickable row: item id plus a right-aligned note (training count or score)
  function itemButton(itemId, note, noteClass) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "item";
    button.dataset.itemId = itemId;
    const idSpan = document.createElement("span");
    idSpan.className = "item-id";
    idSpan.textContent = itemId;
    const noteSpan = document.createElement("span");
    noteSpan.className = noteClass;
    noteSpan.textContent = note;
    button.append(idSpan, noteSpan);
    button.addEventListener("click", () => click(itemId));
    li.append(button);
    return li;
  }

  async function loadItems(query) {
    const seq = ++state.searchSeq;
    const params = new URLSearchParams({ limit: "20" });
    if (query) params.set("query", query);
    const data = await api("GET", "/v1/items?" + params.toString());
    if (seq !== state.searchSeq) return; // a newer search has been sent meanwhile
    const list = $("items");
    list.replaceChildren(...data.items.map((x) => itemButton(x.item_id, x.count + " clicks", "count")));
    list.dataset.query = query;
    list.dataset.loaded = "1";
    $("items-title").textContent = query
      ? data.matches + " items contain \u201c" + query + "\u201d" + (data.matches > data.items.length ? " (first " + data.items.length + ")" : "")
      : "Most popular items";
    $("model-version").textContent = data.model_version;
  }

  function renderSession() {
    $("session-id").textContent = state.sessionId;
    $("click-count").textContent = String(state.clicks.length);
    $("clicks").replaceChildren(...state.clicks.map((id) => {
      const li = document.createElement("li");
      li.textContent = id;
      return li;
    }));
  }

  function renderRecs(data) {
    const recs = $("recs");
    recs.replaceChildren(...data.items.map((x) => itemButton(x.item_id, x.score.toFixed(3), "score")));
    recs.dataset.clicks = String(state.clicks.length);
    let info = data.source === "popularity" ? "No known item yet: most popular items." : "Top " + data.items.length + " by the model.";
    if (data.unknown_items.length) info += " Unknown to the model: " + data.unknown_items.join(", ");
    $("recs-info").textContent = info;
    $("model-version").textContent = data.model_version;
  }

  // clicks are sent one after another, in the order they were made
  function click(itemId) {
    state.queue = state.queue.then(async () => {
      const sessionId = state.sessionId;
      const data = await api("POST", "/v1/sessions/" + encodeURIComponent(sessionId) + "/events",
        { item_id: itemId, k: state.k, exclude_seen: true });
      if (sessionId !== state.sessionId) return; // a new session was started meanwhile
      state.clicks.push(itemId);
      renderSession();
      renderRecs(data);
      showError("");
    }).catch((e) => showError(String(e.message || e)));
    return state.queue;
  }

  function newSession() {
    state.queue = state.queue.then(async () => {
      const old = state.sessionId;
      state.sessionId = newSessionId();
      state.clicks = [];
      renderSession();
      const recs = $("recs");
      recs.replaceChildren();
      recs.dataset.clicks = "0";
      $("recs-info").textContent = "Click an item to start a session.";
      await api("DELETE", "/v1/sessions/" + encodeURIComponent(old));
      showError("");
    }).catch((e) => showError(String(e.message || e)));
  }

  let searchTimer = null;
  function scheduleSearch() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadItems($("search").value.trim()).catch((e) => showError(String(e.message || e))), 200);
  }

  async function start() {
    renderSession();
    $("search").addEventListener("input", scheduleSearch);
    $("search-form").addEventListener("submit", (event) => { event.preventDefault(); scheduleSearch(); });
    $("new-session").addEventListener("click", newSession);
    try {
      const model = await api("GET", "/v1/model");
      $("model-version").textContent = model.model_version;
      $("n-items").textContent = String(model.n_items);
      state.k = Math.max(1, Math.min(10, model.n_items));
      $("recs").dataset.k = String(state.k);
      await loadItems("");
    } catch (e) {
      showError(String(e.message || e));
    }
  }

  start();
})();

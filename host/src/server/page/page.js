// The search page of `imbed serve`. No framework and no build step: this file is served as is.
// Everything of the collection comes from the JSON routes with the API key as a bearer token
// (thumbnails too, through fetch() and blob URLs, since an <img src> cannot send a header).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "imbed.apiKey";
  const THUMBS_AT_ONCE = 6;

  // What is shown, and what the URL says: mode is "text", "image" (an example image, named by
  // its content hash once the server has seen it) or "similar" ("more like this").
  let view = { mode: null, q: "", image: null, space: null, k: 24, pages: 1 };
  let upload = null; // an image file not sent yet
  let generation = 0; // answers to an older search are dropped
  let blobUrls = [];
  let thumbQueue = [];
  let thumbsRunning = 0;
  let afterKey = null;

  class NeedKey extends Error {}

  const apiKey = () => sessionStorage.getItem(KEY) || "";

  async function api(url, options = {}) {
    const headers = new Headers(options.headers || {});
    const k = apiKey();
    if (k) headers.set("Authorization", "Bearer " + k);
    const response = await fetch(url, { ...options, headers });
    if (response.status === 401) throw new NeedKey("an API key is needed");
    return response;
  }

  async function jsonOf(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // Not JSON: the status says enough.
    }
    if (!response.ok) {
      const message = body && body.error && body.error.message;
      throw new Error(message || `the server answered ${response.status}`);
    }
    return body;
  }

  // ---- the URL -------------------------------------------------------------------------------

  function readUrl() {
    const p = new URLSearchParams(location.search);
    const k = parseInt(p.get("k") || "24", 10);
    const pages = parseInt(p.get("pages") || "1", 10);
    view = {
      mode: null,
      q: p.get("q") || "",
      image: p.get("image"),
      space: p.get("space"),
      k: k >= 1 && k <= 200 ? k : 24,
      pages: pages >= 1 && pages <= 20 ? pages : 1,
    };
    const mode = p.get("mode");
    if ((mode === "image" || mode === "similar") && /^[0-9a-f]{64}$/.test(view.image || "")) {
      view.mode = mode;
    } else if (view.q.trim()) {
      view.mode = "text";
    }
    $("q").value = view.mode === "text" ? view.q : "";
    $("k").value = String(view.k);
  }

  function urlOf(v) {
    const p = new URLSearchParams();
    if (v.mode === "text") {
      p.set("q", v.q);
    } else if (v.mode) {
      p.set("mode", v.mode);
      p.set("image", v.image);
      if (v.space) p.set("space", v.space);
    }
    if (v.k !== 24) p.set("k", String(v.k));
    if (v.pages > 1) p.set("pages", String(v.pages));
    const s = p.toString();
    return s ? "?" + s : location.pathname;
  }

  function writeUrl(push) {
    const url = urlOf(view);
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }

  // ---- searching -----------------------------------------------------------------------------

  function pageRequest(offset) {
    const p = new URLSearchParams({ k: String(view.k), offset: String(offset) });
    if (view.mode === "text") {
      p.set("q", view.q);
      return api("/search?" + p);
    }
    if (upload) {
      const form = new FormData();
      form.append("image", upload);
      return api("/search/image?" + p, { method: "POST", body: form });
    }
    if (view.space) p.set("space", view.space);
    if (view.mode === "image") p.set("self", "true");
    return api(`/similar/${view.image}?` + p);
  }

  async function search(push) {
    const mine = ++generation;
    clearResults();
    setBusy(true, "Searching…");
    try {
      let hits = [];
      let answer = null;
      for (let page = 0; page < view.pages; page++) {
        answer = await jsonOf(await pageRequest(page * view.k));
        if (mine !== generation) return;
        if (upload) {
          // From now on the server knows the image by its content: the URL can name it.
          showQueryImage(URL.createObjectURL(upload), upload.name || "pasted image");
          upload = null;
          view.image = answer.query_image;
          view.space = answer.space;
        }
        hits = hits.concat(answer.hits);
        if (!answer.more) break;
      }
      if (view.mode !== "text" && !$("query-image").dataset.local) {
        showQueryThumb(view.image);
      }
      writeUrl(push);
      render(answer, hits, false);
    } catch (e) {
      if (mine !== generation) return;
      if (e instanceof NeedKey) {
        askKey(() => search(push));
        setBusy(false, "This server needs an API key.");
        return;
      }
      showError(e.message);
    } finally {
      if (mine === generation) $("results").setAttribute("aria-busy", "false");
    }
  }

  async function loadMore() {
    const mine = generation;
    const button = $("more");
    button.disabled = true;
    setBusy(true, "Loading more…");
    try {
      const answer = await jsonOf(await pageRequest(view.pages * view.k));
      if (mine !== generation) return;
      view.pages += 1;
      writeUrl(false);
      render(answer, answer.hits, true);
    } catch (e) {
      if (e instanceof NeedKey) {
        askKey(loadMore);
        return;
      }
      showError(e.message);
    } finally {
      button.disabled = false;
      $("results").setAttribute("aria-busy", "false");
    }
  }

  function startText(text) {
    upload = null;
    hideQueryImage();
    view = { ...view, mode: "text", q: text, image: null, space: null, pages: 1 };
    search(true);
  }

  function startImage(file) {
    if (!file || (file.type && !file.type.startsWith("image/"))) {
      showError("That is not an image: choose a JPEG, PNG, GIF, WebP or BMP file.");
      return;
    }
    upload = file;
    hideQueryImage();
    $("q").value = "";
    view = { ...view, mode: "image", q: "", image: null, space: null, pages: 1 };
    search(true);
  }

  function startSimilar(hash, space) {
    upload = null;
    hideQueryImage();
    $("q").value = "";
    view = { ...view, mode: "similar", q: "", image: hash, space, pages: 1 };
    search(true);
    window.scrollTo(0, 0);
  }

  // ---- showing -------------------------------------------------------------------------------

  function setBusy(busy, text) {
    $("results").setAttribute("aria-busy", busy ? "true" : "false");
    if (text) setStatus(text);
  }

  function setStatus(text) {
    $("status").textContent = text;
    $("status").classList.remove("error");
  }

  function showError(message) {
    $("status").textContent = "Error: " + message;
    $("status").classList.add("error");
    $("results").setAttribute("aria-busy", "false");
  }

  function clearResults() {
    for (const url of blobUrls) URL.revokeObjectURL(url);
    blobUrls = [];
    thumbQueue = [];
    $("results").replaceChildren();
    $("more").hidden = true;
    $("banner").hidden = true;
    $("banner").replaceChildren();
  }

  function hideQueryImage() {
    const box = $("query-image");
    box.hidden = true;
    delete box.dataset.local;
    $("query-thumb").removeAttribute("src");
  }

  function showQueryImage(src, label) {
    const box = $("query-image");
    $("query-thumb").src = src;
    blobUrls.push(src);
    $("query-label").textContent = "Searching by the image " + label;
    box.dataset.local = "1";
    box.hidden = false;
  }

  function showQueryThumb(hash) {
    const box = $("query-image");
    $("query-label").textContent =
      view.mode === "similar" ? "More like this image" : "Searching by this image";
    box.hidden = false;
    queueThumb($("query-thumb"), `/thumb/${hash}`);
  }

  function banner(answer) {
    const parts = [];
    if (answer.fallback) parts.push(answer.fallback.message);
    if (answer.notice) parts.push(answer.notice + " (`imbed doctor` tells which steps answer.)");
    const box = $("banner");
    box.replaceChildren(...parts.map((t) => {
      const p = document.createElement("p");
      p.textContent = t;
      return p;
    }));
    box.hidden = parts.length === 0;
  }

  function render(answer, hits, appended) {
    banner(answer);
    const grid = $("results");
    if (!appended && hits.length === 0) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = answer.notice
        ? "Nothing could be compared (see above)."
        : "No indexed images matched.";
      grid.replaceChildren(empty);
    }
    for (const hit of hits) grid.appendChild(card(hit, answer.space));
    const shown = grid.querySelectorAll(".hit").length;
    const how = answer.method === "exact" ? "exact" : "approximate";
    setStatus(
      `${shown} shown · ${answer.searched} vectors in space ${answer.space} · ${how} · ` +
        `${Math.round(answer.ms)} ms`
    );
    $("more").hidden = !answer.more;
  }

  function card(hit, space) {
    const figure = document.createElement("figure");
    figure.className = "hit";
    figure.dataset.image = hit.image;
    const name = hit.files[0] || hit.image.slice(0, 12);
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = hit.description || name;
    img.decoding = "async";
    const frame = document.createElement("div");
    frame.className = "frame";
    frame.appendChild(img);
    figure.appendChild(frame);
    queueThumb(img, hit.thumb);

    const caption = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "name";
    title.textContent = name;
    title.title = hit.files.join("\n");
    caption.appendChild(title);
    if (hit.copies > 1) {
      const copies = document.createElement("span");
      copies.className = "copies";
      copies.textContent = `×${hit.copies}`;
      copies.title = `${hit.copies} files with this same content:\n` + hit.files.join("\n");
      caption.appendChild(copies);
    }
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    score.title = "cosine similarity with the query";
    caption.appendChild(score);
    if (hit.description) {
      const d = document.createElement("p");
      d.className = "description";
      d.textContent = hit.description;
      caption.appendChild(d);
    }
    figure.appendChild(caption);

    const more = document.createElement("button");
    more.type = "button";
    more.className = "like";
    more.textContent = "More like this";
    more.setAttribute("aria-label", `More like ${name}`);
    more.addEventListener("click", () => startSimilar(hit.image, space));
    figure.appendChild(more);
    return figure;
  }

  function queueThumb(img, url) {
    thumbQueue.push({ img, url, mine: generation });
    pumpThumbs();
  }

  function pumpThumbs() {
    while (thumbsRunning < THUMBS_AT_ONCE && thumbQueue.length) {
      const job = thumbQueue.shift();
      thumbsRunning += 1;
      loadThumb(job).finally(() => {
        thumbsRunning -= 1;
        pumpThumbs();
      });
    }
  }

  async function loadThumb({ img, url, mine }) {
    try {
      const response = await api(url);
      if (!response.ok) throw new Error(String(response.status));
      const blob = await response.blob();
      if (mine !== generation) return;
      const src = URL.createObjectURL(blob);
      blobUrls.push(src);
      img.src = src;
      img.classList.add("loaded");
    } catch (_) {
      if (mine !== generation) return;
      // The file is gone, changed or outside the indexed folders: say so in place.
      img.classList.add("missing");
      img.closest(".frame")?.setAttribute("data-missing", "no preview");
    }
  }

  // ---- the API key ---------------------------------------------------------------------------

  function askKey(retry) {
    afterKey = retry;
    $("key-form").hidden = false;
    const refused = Boolean(apiKey());
    $("key-error").textContent = refused ? "The server refused that key: try another." : "";
    $("key-error").hidden = !refused;
    $("key").focus();
  }

  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("key").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    $("key").value = "";
    $("key-form").hidden = true;
    const retry = afterKey;
    afterKey = null;
    if (retry) retry();
  });

  // ---- input ---------------------------------------------------------------------------------

  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    view.k = parseInt($("k").value, 10) || 24;
    const text = $("q").value.trim();
    if (!text) {
      $("q").focus();
      setStatus("Type some words first, or search by an image.");
      return;
    }
    startText(text);
  });

  $("k").addEventListener("change", () => {
    view.k = parseInt($("k").value, 10) || 24;
    if (view.mode) {
      view.pages = 1;
      search(false);
    }
  });

  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    $("file").value = "";
    if (file) startImage(file);
  });

  $("upload-label").addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("file").click();
    }
  });

  $("more").addEventListener("click", loadMore);

  document.addEventListener("keydown", (e) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName);
    if (e.key === "/" && !typing) {
      e.preventDefault();
      $("q").focus();
    } else if (e.key === "Escape") {
      $("drop").hidden = true;
    }
  });

  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types).includes("Files");
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth += 1;
    $("drop").hidden = false;
  });
  document.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) $("drop").hidden = true;
  });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    $("drop").hidden = true;
    startImage(e.dataTransfer.files[0]);
  });

  document.addEventListener("paste", (e) => {
    const files = e.clipboardData ? Array.from(e.clipboardData.files) : [];
    const image = files.find((f) => f.type.startsWith("image/"));
    if (image) {
      e.preventDefault();
      startImage(image);
    }
  });

  window.addEventListener("popstate", () => {
    upload = null;
    hideQueryImage();
    readUrl();
    if (view.mode) search(false);
    else {
      clearResults();
      setStatus("Type words and press Enter, or search by an image.");
    }
  });

  readUrl();
  if (view.mode) search(false);
})();

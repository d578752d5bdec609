// everest_magic Gallery front end (anywidget ES module).
// Renders the synced `levels` as a breadcrumb trail plus one grid per level. A click on an
// item opens a small action menu; a choice sends {event: "select", level, index, action}
// to the kernel, a breadcrumb click sends {event: "back", level}. The kernel does the work
// and updates the traits; this view only renders them. Text items with `tokens` show each token
// shaded by the group's activation (red positive, blue negative, scaled by the level's
// `token_scale`); long ones fold to three lines with a "more" toggle.

const FOLD_CHARS = 140;

const ACTIONS = [
  ["knn", "kNN from this item"],
  ["neurons", "most activated neurons"],
  ["topk", "top-k of those neurons"],
];

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function render({ model, el }) {
  const root = h("div", { class: "everest-gallery" });
  el.append(root);
  let urls = [];
  let menu = null;
  let shownLevels = 0;
  const unfolded = new Set();   // "level:id" of the text items the user unfolded

  function pngUrl(bytes) {
    if (!bytes || bytes.byteLength === 0) return null;
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    urls.push(url);
    return url;
  }

  function closeMenu() {
    if (menu) {
      menu.remove();
      menu = null;
    }
  }

  function openMenu(figure, level, index, id) {
    closeMenu();
    const buttons = ACTIONS.map(([action, label]) =>
      h("button", {
        type: "button",
        class: "ev-action",
        "data-action": action,
        onclick: (e) => {
          e.stopPropagation();
          closeMenu();
          model.send({ event: "select", level, index, action });
        },
      }, label));
    menu = h("div", { class: "ev-menu", role: "menu" }, h("div", { class: "ev-menu-title" }, `#${id}`), ...buttons);
    root.append(menu);
    const r = figure.getBoundingClientRect();
    const base = root.getBoundingClientRect();
    menu.style.left = `${r.left - base.left + 4}px`;
    menu.style.top = `${r.bottom - base.top + 2}px`;
    buttons[0].focus();
  }

  function tokensNode(item, L, scale) {
    const box = h("div", { class: "ev-tokens" });
    let chars = 0;
    for (const [piece, v] of item.tokens) {
      chars += piece.length;
      if (v === null || v === undefined) {
        box.append(document.createTextNode(piece));
        continue;
      }
      const a = scale > 0 ? Math.min(1, Math.abs(v) / scale) : 0;
      const rgb = v >= 0 ? "214, 39, 40" : "31, 119, 180";
      box.append(h("span", {
        class: "ev-tok", "data-value": v, title: Number(v).toPrecision(3),
        style: `background: rgba(${rgb}, ${(0.8 * a).toFixed(3)})`,
      }, piece));
    }
    if (chars <= FOLD_CHARS) return box;
    const key = `${L}:${item.id}`;
    const wrap = h("div", { class: `ev-fold${unfolded.has(key) ? "" : " ev-folded"}` }, box);
    const toggle = h("button", {
      type: "button", class: "ev-fold-toggle",
      onclick: (e) => {
        e.stopPropagation();
        const folded = wrap.classList.toggle("ev-folded");
        if (folded) unfolded.delete(key); else unfolded.add(key);
        toggle.textContent = folded ? "more" : "less";
      },
    }, unfolded.has(key) ? "less" : "more");
    wrap.append(toggle);
    return wrap;
  }

  function itemNode(item, L, i, clickable, selected, scale) {
    const url = item.thumb ? pngUrl(item.thumb) : null;
    const body = url
      ? h("img", { src: url, alt: `input ${item.id}`, draggable: "false" })
      : item.tokens
        ? tokensNode(item, L, scale)
        : h("div", { class: "ev-snippet" }, item.text ?? "");
    let caption = `#${item.id} · ${item.score_text ?? Number(item.score).toPrecision(4)}`;
    if (item.label !== null && item.label !== undefined) caption += ` · label ${item.label}`;
    const fig = h("figure", {
      class: `ev-item${item.tokens ? " ev-text-item" : ""}${clickable ? " ev-clickable" : ""}${selected ? " ev-selected" : ""}`,
      tabindex: clickable ? "0" : null,
      title: clickable ? "click for drill-down actions" : null,
    }, body, h("figcaption", {}, caption));
    if (clickable) {
      const open = (e) => {
        e.stopPropagation();
        openMenu(fig, L, i, item.id);
      };
      fig.addEventListener("click", open);
      fig.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          open(e);
        }
      });
    }
    return fig;
  }

  function draw() {
    closeMenu();
    for (const u of urls) URL.revokeObjectURL(u);
    urls = [];
    root.replaceChildren();
    const levels = model.get("levels") || [];
    const sel = model.get("selected") || {};
    const busy = model.get("status");
    const error = model.get("error");

    if (levels.length > 1) {
      const crumbs = h("nav", { class: "ev-crumbs" });
      levels.forEach((lv, L) => {
        if (L > 0) crumbs.append(h("span", { class: "ev-sep" }, " › "));
        if (L < levels.length - 1) {
          crumbs.append(h("button", {
            type: "button", class: "ev-crumb",
            onclick: () => model.send({ event: "back", level: L }),
          }, lv.title));
        } else {
          crumbs.append(h("span", { class: "ev-crumb-current" }, lv.title));
        }
      });
      root.append(crumbs);
    }
    if (busy) root.append(h("div", { class: "ev-status" }, h("span", { class: "ev-spinner" }), busy));
    if (error) root.append(h("div", { class: "ev-error" }, error));

    let last = null;
    levels.forEach((lv, L) => {
      const section = h("section", { class: "ev-level", "data-level": L });
      section.append(h("div", { class: "ev-head" }, lv.description));
      if (lv.token_note) section.append(h("div", { class: "ev-note" }, lv.token_note));
      if (L === 0) {
        const hist = pngUrl(model.get("histogram_png"));
        if (hist) {
          section.append(h("img", {
            class: "ev-hist", src: hist,
            alt: "histogram of what the query ranks by, from the index (the title says how it is bounded)",
          }));
        }
      }
      if (lv.text) section.append(h("pre", { class: "ev-text" }, lv.text));
      const items = lv.items || [];
      if (items.length) {
        const clickable = lv.kind !== "neurons";
        const grid = h("div", { class: "ev-grid" });
        items.forEach((item, i) =>
          grid.append(itemNode(item, L, i, clickable, sel.level === L && sel.index === i, lv.token_scale || 0)));
        section.append(grid);
      }
      root.append(section);
      last = section;
    });
    if (levels.length > shownLevels && shownLevels > 0 && last && last.scrollIntoView) {
      last.scrollIntoView({ block: "nearest", behavior: "smooth" });
    }
    shownLevels = levels.length;
  }

  const onDocClick = (e) => {
    if (menu && !menu.contains(e.target)) closeMenu();
  };
  const onKey = (e) => {
    if (e.key === "Escape") closeMenu();
  };
  document.addEventListener("click", onDocClick);
  root.addEventListener("keydown", onKey);
  const traits = ["levels", "selected", "status", "error", "histogram_png"];
  for (const name of traits) model.on(`change:${name}`, draw);
  draw();

  return () => {
    for (const name of traits) model.off(`change:${name}`, draw);
    document.removeEventListener("click", onDocClick);
    for (const u of urls) URL.revokeObjectURL(u);
    root.remove();
  };
}

export default { render };

// A picker of jurisdictions (or zones) by name or code: type part of a name or the start
// of a code, pick from the matches; the chosen ones are chips with their codes. A code the
// layer does not know can still be added with Enter (an injunction zone not on the map);
// the server validates it.

import { el } from "./dom.js";
import { LEVEL_LABELS } from "./format.js";
import { namedPlace } from "./names.js";
import { state } from "./state.js";

const MAX_RESULTS = 12;
const LEVEL_ORDER = { county: 0, township: 1, zone: 2 };
const RAW_CODE = /^[0-9A-Za-z_.-]{2,32}$/;

export class PlacePicker {
  /** `root`: an empty element to build in; `levels`: which feature levels to offer. */
  constructor(root, { levels, testid, placeholder = "输入名称或代码搜索" }) {
    this.levels = new Set(levels);
    this.chosen = [];
    this.input = el("input", {
      type: "search", placeholder, autocomplete: "off", "data-testid": `${testid}-search`,
      "aria-label": placeholder,
    });
    this.results = el("ul", { class: "pick-results", "data-testid": `${testid}-results` });
    this.chips = el("div", { class: "chips", "data-testid": `${testid}-chosen` });
    root.replaceChildren(this.input, this.results, this.chips);
    root.classList.add("picker");
    this.input.addEventListener("input", () => this.search());
    document.addEventListener("places-loaded", () => {
      if (this.input.value.trim()) this.search();
      this.renderChips();
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key !== "Enter") return;
      e.preventDefault();
      const first = this.matches()[0];
      const raw = this.input.value.trim();
      if (first) this.add(first.code);
      else if (RAW_CODE.test(raw)) this.add(raw);
    });
  }

  get codes() {
    return [...this.chosen];
  }

  set codes(list) {
    this.chosen = [...new Set((list || []).map(String))];
    this.renderChips();
  }

  clear() {
    this.codes = [];
    this.input.value = "";
    this.results.replaceChildren();
  }

  matches() {
    const q = this.input.value.trim().toLowerCase();
    if (!q) return [];
    const found = state.places.filter((p) => this.levels.has(p.level) &&
      !this.chosen.includes(p.code) &&
      (p.code.startsWith(q) || (p.name && p.name.toLowerCase().includes(q))));
    // The exact code first, then the larger areas (a county before its townships).
    const rank = (p) => (p.code === q ? 0 : 1) * 10 + (LEVEL_ORDER[p.level] ?? 9);
    return found.sort((x, y) => rank(x) - rank(y) || x.code.localeCompare(y.code))
      .slice(0, MAX_RESULTS);
  }

  search() {
    if (!state.places.length && this.input.value.trim()) {
      this.results.replaceChildren(el("li", { class: "muted", text: "辖区数据加载中…" }));
      return;
    }
    this.results.replaceChildren(...this.matches().map((p) => el("li", {},
      el("button", {
        type: "button", class: "pick", "data-code": p.code,
        text: `${p.name || ""} ${p.code}`.trim(), title: LEVEL_LABELS[p.level] || p.level,
        onclick: () => this.add(p.code),
      }, el("span", { class: "muted pick-level", text: ` ${LEVEL_LABELS[p.level] || ""}` })))));
  }

  add(code) {
    if (!this.chosen.includes(code)) this.chosen.push(code);
    this.input.value = "";
    this.results.replaceChildren();
    this.renderChips();
    this.input.focus();
  }

  renderChips() {
    this.chips.replaceChildren(...this.chosen.map((code) => el("span", {
      class: "chip", "data-code": code,
    }, namedPlace(code), el("button", {
      type: "button", class: "chip-x", title: "移除", "aria-label": `移除 ${code}`, text: "×",
      onclick: () => {
        this.chosen = this.chosen.filter((c) => c !== code);
        this.renderChips();
      },
    }))));
  }
}

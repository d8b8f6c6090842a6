// Sound: a short beep on each new critical alarm (WebAudio; needs a user gesture first),
// and the top bar's toggle, remembered in localStorage.

import { $ } from "./dom.js";

const BEEP_MIN_INTERVAL_MS = 2000;

const sound = {
  on: localStorage.getItem("desk.sound") !== "off",
  ctx: null,
  last: 0,
};

/** Create the audio context; browsers allow it only from a user gesture. */
export function unlockAudio() {
  if (!sound.on || sound.ctx) return;
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  sound.ctx = new Ctx();
  if (sound.ctx.state === "suspended") sound.ctx.resume();
  renderSoundToggle();
}

export function beep() {
  const now = Date.now();
  if (!sound.on || !sound.ctx || now - sound.last < BEEP_MIN_INTERVAL_MS) return;
  sound.last = now;
  const ctx = sound.ctx;
  const t0 = ctx.currentTime + 0.01;
  for (const [i, freq] of [[0, 880], [1, 660]]) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    const start = t0 + i * 0.18;
    osc.type = "sine";
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(0.25, start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.15);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start);
    osc.stop(start + 0.16);
  }
}

export function renderSoundToggle() {
  const b = $("sound-toggle");
  b.setAttribute("aria-pressed", String(sound.on));
  $("sound-text").textContent = sound.on ? (sound.ctx ? "提示音 开" : "提示音 待启用") : "提示音 关";
  b.title = !sound.on ? "严重报警提示音：已关闭"
    : sound.ctx ? "严重报警提示音：已开启" : "严重报警提示音：点击页面任意处后启用";
}

export function toggleSound() {
  sound.on = !sound.on;
  localStorage.setItem("desk.sound", sound.on ? "on" : "off");
  if (sound.on) {
    unlockAudio();
    beep();        // let the operator hear what it sounds like
  }
  renderSoundToggle();
}

// Dates of leaves and audit filters in China time (UTC+8), whatever the browser's zone:
// the law counts leave days and years in local time, and so do the desk's rules.

const CST_MS = 8 * 3600_000;
export const DAY_MS = 86_400_000;
const pad2 = (n) => String(n).padStart(2, "0");

/** "YYYY-MM-DDTHH:MM" (a datetime-local input's value) for `ms`, in UTC+8. */
export function cstInputValue(ms) {
  return new Date(Number(ms) + CST_MS).toISOString().slice(0, 16);
}

/** "YYYY-MM-DD" for `ms` in UTC+8. */
export function cstDateValue(ms) {
  return cstInputValue(ms).slice(0, 10);
}

/** ms of an input's "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM" read as UTC+8; NaN if malformed. */
export function parseCst(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}))?$/.exec(String(value || "").trim());
  if (!m) return NaN;
  return Date.UTC(+m[1], +m[2] - 1, +m[3], +(m[4] || 0), +(m[5] || 0)) - CST_MS;
}

/** "YYYY-MM-DD HH:MM" in UTC+8 ("—" without a time). */
export function fmtCst(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return "—";
  return cstInputValue(ms).replace("T", " ");
}

/** The calendar year of `ms` in UTC+8. */
export function cstYear(ms) {
  return new Date(Number(ms) + CST_MS).getUTCFullYear();
}

/** "HH:MM" from minutes after midnight, or the string itself. */
export function hhmm(v) {
  if (typeof v === "number") return `${pad2(Math.floor(v / 60))}:${pad2(v % 60)}`;
  return String(v ?? "");
}

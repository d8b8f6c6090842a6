// Offices, jurisdictions and zones by name: lookups in what /api/me and /api/layer said.

import { withCode } from "./format.js";
import { state } from "./state.js";

export function officeName(code) {
  return state.officeNames.get(String(code)) || state.placeNames.get(String(code)) || "";
}

export function placeName(code) {
  return state.placeNames.get(String(code)) || state.officeNames.get(String(code)) || "";
}

/** An office as "中心街街道司法所 370402001" (the code alone when the name is unknown). */
export const namedOffice = (code) => withCode(officeName(code), code);
/** A jurisdiction or zone as "中心街街道 370402001". */
export const namedPlace = (code) => withCode(placeName(code), code);

/** Is `code` the office or area `ancestor`, or somewhere below it? */
export function isUnder(code, ancestor) {
  let c = code === null || code === undefined ? null : String(code);
  for (let i = 0; c && i < 64; i++) {
    if (c === ancestor) return true;
    c = state.parents.get(c) || null;
  }
  return false;
}

/** Where the alarm happened: the area, "outside the jurisdictions", or "no fix". */
export function whereText(doc) {
  if (doc.where && doc.where.code) return withCode(doc.where.name || placeName(doc.where.code), doc.where.code);
  if (doc.fix) return "辖区外";
  return "无定位";
}

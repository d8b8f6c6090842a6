// What the officer reads when the desk refuses something: the API's reason in words,
// and a 422's problems one by one (every problem, as `registry import` reports them).

import { el } from "./dom.js";

/** One line for an HttpError from a write: `what` names the action ("批准"). */
export function refusal(e, what) {
  switch (e.status) {
    case 0: return `${what}失败：无法连接服务器，请检查网络`;
    case 400: return `${what}失败：提交的内容格式有误（${e.message}）`;
    case 403: return `无权${what}：${e.message}`;
    case 404: return `${what}失败：对象不存在或不在本辖区`;
    case 409: return `无法${what}：状态已变化（${e.message}）`;
    case 422: return `不符合规定，未能${what}：${e.message}`;
    default: return `${what}失败：${e.message}`;
  }
}

/** Show `e` in the error paragraph `box` and its 422 problems in the list `list`. */
export function showRefusal(e, what, box, list = null) {
  const problems = (e.data && Array.isArray(e.data.problems)) ? e.data.problems : [];
  if (problems.length && !list) box.textContent = `不符合规定，未能${what}：${problems.join("；")}`;
  else if (problems.length) box.textContent = `不符合规定，未能${what}（共 ${problems.length} 处问题）：`;
  else box.textContent = refusal(e, what);
  if (list) list.replaceChildren(...problems.map((p) => el("li", { text: String(p) })));
}

/** Clear what showRefusal showed. */
export function clearRefusal(box, list = null) {
  box.textContent = "";
  if (list) list.replaceChildren();
}

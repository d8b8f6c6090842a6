// What the desk shows for the engine's codes (Chinese labels), and times, durations,
// accuracies and fixes as text. Pure functions: no DOM, no state.

export const TYPE_NAMES = {
  zone_exit: "越界",
  zone_return: "返回",
  possible_exit: "疑似越界",
  exclusion_entry: "进入禁止区域",
  possible_exclusion: "疑似进入禁止区域",
  signal_lost: "失联",
  phone_off: "手机关机",
  signal_restored: "恢复联系",
  permit_overstay: "外出逾期",
  feed_outage: "数据中断",
  engine_fault: "系统故障",
  curfew_breach: "违反宵禁",
  night_absence: "昼伏夜出",
  gathering: "聚集",
};
export const SEVERITIES = ["critical", "high", "medium", "info"];
export const SEVERITY_NAMES = { critical: "严重", high: "高", medium: "中", info: "提示" };
export const STATUS_NAMES = {
  open: "待处理", acknowledged: "已确认", resolved: "已处理", escalated: "已升级",
};
export const ACTION_NAMES = {
  raised: "产生", repeated: "重复", acknowledged: "确认", resolved: "处理", escalated: "升级",
};
export const SRC_NAMES = { gps: "GPS", wifi: "WiFi", cell: "基站" };
// A handset status reported instead of a position (src off, suspended, unreachable).
export const HANDSET_NAMES = { off: "关机", suspended: "停机", unreachable: "无法接通" };
export const RISK_NAMES = { normal: "一般", key: "重点人员" };
export const CATEGORY_NAMES = {
  probation: "缓刑", parole: "假释", medical_parole: "暂予监外执行", control: "管制",
};

export const typeName = (t) => TYPE_NAMES[t] || t;

const pad2 = (n) => String(n).padStart(2, "0");

/** A curfew as the person form writes it: "22:00-06:00", then weekdays and zone if given. */
export function curfewText(c) {
  const days = (c.days || []).length && c.days.length < 7 ? ` ${c.days.join("")}` : "";
  return `${c.from}-${c.to}${days}${c.zone ? ` ${c.zone}` : ""}`;
}

/** The person form's curfew lines as the API takes them (the server checks them). */
export function parseCurfews(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
    const [span, ...rest] = line.split(/\s+/);
    const [from, to = ""] = span.split(/[-–~]/);
    const curfew = { from, to };
    for (const word of rest) {
      if (/^[1-7]+$/.test(word)) curfew.days = [...new Set([...word].map(Number))];
      else curfew.zone = word;
    }
    return curfew;
  });
}

/** Local 24 h time, MM-DD HH:mm:ss. */
export function fmtTime(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return "—";
  const d = new Date(Number(ms));
  return `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

export function fmtDuration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds)));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h >= 24) return `${Math.floor(h / 24)} 天 ${h % 24} 小时`;
  if (h > 0) return `${h} 小时 ${pad2(m)} 分`;
  return `${m} 分 ${pad2(s % 60)} 秒`;
}

export function fmtAcc(acc) {
  if (acc === null || acc === undefined) return "精度未知";
  const m = Number(acc);
  return m >= 1000 ? `±${(m / 1000).toFixed(1)} km` : `±${Math.round(m)} m`;
}

/** "lon, lat · ±acc · source" of a fix. */
export function fixText(fix) {
  const parts = [`${Number(fix.lon).toFixed(5)}, ${Number(fix.lat).toFixed(5)}`, fmtAcc(fix.acc)];
  parts.push(SRC_NAMES[fix.src] || "来源未知");
  return parts.join(" · ");
}

/** "name code", the code alone without a name, "—" without a code. */
export function withCode(name, code) {
  if (code === null || code === undefined || code === "") return "—";
  return name ? `${name} ${code}` : String(code);
}

/** Any JSON value as one line of text. */
export function plain(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "object") return String(v);
  if (Array.isArray(v)) return v.map(plain).join("、");
  return Object.entries(v).map(([k, x]) => `${k}: ${plain(x)}`).join("；");
}

// Round 2: levels, leaves, audit.
export const LEVEL_NAMES = { strict: "严管", normal: "普管", loose: "宽管" };
export const LEVEL_LABELS = { county: "区县", township: "乡镇街道", zone: "禁止区域" };
export const LEAVE_STATUS_NAMES = {
  pending: "待审批", approved: "已批准", rejected: "已驳回", cancelled: "已撤销", closed: "已销假",
};
export const LEAVE_ACTION_NAMES = {
  request: "申请", requested: "申请", create: "申请", approve: "批准", approved: "批准",
  reject: "驳回", rejected: "驳回", cancel: "撤销", cancelled: "撤销", close: "销假",
  closed: "销假", import: "导入", imported: "导入",
};
export const WEEKDAY_NAMES = ["", "一", "二", "三", "四", "五", "六", "日"];
export const AUDIT_ACTION_NAMES = {
  login: "登录", logout: "退出", "user.login": "登录", "user.logout": "退出",
  "user.disable": "停用用户", "alarm.read": "查看报警", "alarm.ack": "确认报警",
  "alarm.resolve": "处理报警", "track.read": "查看轨迹", "subject.read": "查看人员",
  "subject.create": "新增人员", "subject.update": "修改人员", "subject.end": "解除矫正",
  "leave.read": "查看请假", "leave.list": "查看请假记录", "leave.create": "提交请假", "leave.approve": "批准请假",
  "leave.reject": "驳回请假", "leave.cancel": "撤销请假", "leave.close": "销假",
  "audit.read": "查看审计", "locate.request": "立即定位", "locate.read": "查看定位请求",
  "locate.list": "查看定位请求记录",
};
export const ROLE_NAMES = { officer: "工作人员", viewer: "只读（监督）" };

/** "名称 code" for a code in a table of labels. */
export const labelled = (names, code) => (names[code] ? `${names[code]}（${code}）` : String(code ?? "—"));

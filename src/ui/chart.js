// The clicks-over-time chart: stacked human and bot hits per bucket with conversions as dots, drawn as
// SVG built node by node (no markup parsing, no inline style: colours come from classes in app.css).
// Bars sit where their bucket's time is, so a quiet hour is a gap, not a missing column.

import { fill, num, svg } from "./core.js";

const SECONDS = { minute: 60, hour: 3600, day: 86400 };
const HEIGHT = 220;
const PAD = { left: 40, right: 12, top: 14, bottom: 36 };

// The smallest 1, 2 or 5 × 10^k at or above `n` (at least 1): the top of the y axis.
function niceCeil(n) {
  if (n <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(n));
  for (const step of [1, 2, 5, 10]) if (step * power >= n) return step * power;
  return 10 * power;
}

function label(ms, bucket, withDate) {
  const d = new Date(ms);
  if (bucket === "day") return d.toLocaleDateString([], { month: "short", day: "numeric" });
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return withDate ? `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}` : time;
}

// Draws `points` (`[{at, human, bot, conversions}]`, oldest first) into `box`, as wide as the box is.
export function drawTimeline(box, points, bucket) {
  const step = (SECONDS[bucket] || 3600) * 1000;
  const width = Math.max(280, Math.floor(box.clientWidth || 640));
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const total = (key) => points.reduce((sum, p) => sum + (p[key] || 0), 0);
  const human = total("human"), bot = total("bot"), conversions = total("conversions");
  const start = points.length ? Date.parse(points[0].at) : 0;
  const slots = points.length ? Math.round((Date.parse(points[points.length - 1].at) - start) / step) + 1 : 1;
  const slotW = plotW / slots;
  const barW = Math.max(1, Math.min(48, slotW * 0.8));
  const top = niceCeil(Math.max(0, ...points.map((p) => Math.max(p.human + p.bot, p.conversions || 0))));
  const y = (v) => PAD.top + plotH - (v * plotH) / top;
  const xOf = (ms) => PAD.left + ((ms - start) / step) * slotW + (slotW - barW) / 2;

  const grid = [0, top / 2, top].filter((v) => Number.isInteger(v)).map((v) => [
    svg("line", { class: "grid", x1: PAD.left, x2: width - PAD.right, y1: y(v), y2: y(v) }),
    svg("text", { class: "tick", x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, num(v)),
  ]);

  const bars = points.map((p) => {
    const x = xOf(Date.parse(p.at));
    const conv = p.conversions || 0;
    return svg(
      "g",
      { class: "bucket" },
      svg("title", {}, `${label(Date.parse(p.at), bucket, true)}: ${p.human} human, ${p.bot} bot, ${conv} conversions`),
      p.human > 0 && svg("rect", { class: "bar-human", x, width: barW, y: y(p.human), height: y(0) - y(p.human) }),
      p.bot > 0 &&
        svg("rect", { class: "bar-bot", x, width: barW, y: y(p.human + p.bot), height: y(p.human) - y(p.human + p.bot) }),
      conv > 0 && svg("circle", { class: "dot-conversion", cx: x + barW / 2, cy: y(conv), r: 4 }),
    );
  });

  // Time labels at whole buckets, about one per 110 px; the date is shown once per day.
  const every = Math.max(1, Math.ceil(slots / Math.max(1, Math.floor(plotW / 110))));
  const ticks = [];
  let lastDay = "";
  for (let i = 0; points.length && i < slots; i += every) {
    const ms = start + i * step;
    const day = new Date(ms).toDateString();
    const cx = PAD.left + (i + 0.5) * slotW;
    const text = label(ms, bucket, day !== lastDay);
    const half = text.length * 3.5; // about half the label's width at 12 px
    const anchor = cx - half < 0 ? "start" : cx + half > width ? "end" : "middle";
    ticks.push(
      svg("line", { class: "axis", x1: cx, x2: cx, y1: y(0), y2: y(0) + 4 }),
      svg("text", { class: "tick", x: anchor === "start" ? Math.max(0, cx - 8) : cx, y: HEIGHT - 12, "text-anchor": anchor }, text),
    );
    lastDay = day;
  }

  const summary = points.length
    ? `${num(human)} human hits, ${num(bot)} bot hits and ${num(conversions)} conversions in ${num(slots)} ` +
      `${bucket} buckets from ${new Date(start).toLocaleString()}`
    : "No hits yet";
  const chart = svg(
    "svg",
    {
      viewBox: `0 0 ${width} ${HEIGHT}`, width, height: HEIGHT, role: "img", "aria-label": summary,
      "data-bucket": bucket, "data-human": human, "data-bot": bot, "data-conversions": conversions, "data-buckets": points.length,
      "data-slots": slots,
    },
    grid,
    svg("line", { class: "axis", x1: PAD.left, x2: width - PAD.right, y1: y(0), y2: y(0) }),
    bars,
    ticks,
    !points.length && svg("text", { class: "empty", x: width / 2, y: HEIGHT / 2, "text-anchor": "middle" }, summary),
  );
  fill(box, chart);
}

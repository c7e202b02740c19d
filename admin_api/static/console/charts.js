// Inline SVG charts for the console: stacked columns over time, horizontal bars by label. No library.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777",
                 "#4b5563", "#65a30d"];

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

// data: {labels: [bucket label], series: [{name, values: [number per label]}]}; format(number) -> text.
function stackedColumns(container, data, format) {
  container.replaceChildren();
  const width = 760, height = 260, left = 84, bottom = 40, top = 12, right = 12;
  const svg = svgEl("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart-svg"});
  const totals = data.labels.map((_, i) => data.series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  const plotW = width - left - right, plotH = height - top - bottom;
  for (let tick = 0; tick <= 4; tick++) {
    const y = top + plotH - (plotH * tick) / 4;
    svg.append(svgEl("line", {x1: left, x2: width - right, y1: y, y2: y, stroke: "#e5e7eb"}));
    svg.append(svgEl("text", {x: left - 6, y: y + 4, "text-anchor": "end", class: "axis"}, format(max * tick / 4)));
  }
  const slot = plotW / Math.max(1, data.labels.length);
  const barW = Math.max(2, Math.min(48, slot * 0.7));
  data.labels.forEach((label, i) => {
    let y = top + plotH;
    const x = left + slot * i + (slot - barW) / 2;
    data.series.forEach((series, s) => {
      const value = series.values[i] || 0;
      if (value <= 0) return;
      const h = (plotH * value) / max;
      y -= h;
      const rect = svgEl("rect", {x, y, width: barW, height: Math.max(h, 1), fill: PALETTE[s % PALETTE.length],
                                  "data-series": series.name, "data-bucket": label, "data-value": value});
      rect.append(svgEl("title", {}, `${series.name} · ${label}: ${format(value)}`));
      svg.append(rect);
    });
    const every = Math.ceil(data.labels.length / 8);
    if (i % every === 0) {
      svg.append(svgEl("text", {x: left + slot * i + slot / 2, y: height - bottom + 16, "text-anchor": "middle",
                                class: "axis"}, label));
    }
  });
  container.append(svg);
  const legend = document.createElement("ul");
  legend.className = "legend";
  data.series.forEach((series, s) => {
    const item = document.createElement("li");
    const swatch = svgEl("svg", {width: 12, height: 12});
    swatch.append(svgEl("rect", {width: 12, height: 12, fill: PALETTE[s % PALETTE.length]}));
    item.append(swatch, document.createTextNode(" " + series.name));
    legend.append(item);
  });
  container.append(legend);
  container.dataset.series = String(data.series.length);
  container.dataset.buckets = String(data.labels.length);
}

// rows: [{label, value}]
function horizontalBars(container, rows) {
  container.replaceChildren();
  const rowH = 26, left = 220, width = 760, right = 60;
  const height = Math.max(rowH, rows.length * rowH) + 8;
  const svg = svgEl("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart-svg"});
  const max = Math.max(1, ...rows.map((r) => r.value));
  rows.forEach((row, i) => {
    const y = 4 + i * rowH;
    const w = ((width - left - right) * row.value) / max;
    svg.append(svgEl("text", {x: left - 8, y: y + 16, "text-anchor": "end", class: "axis"}, row.label));
    svg.append(svgEl("rect", {x: left, y: y + 3, width: Math.max(w, 1), height: rowH - 8,
                              fill: PALETTE[i % PALETTE.length], "data-code": row.label, "data-value": row.value}));
    svg.append(svgEl("text", {x: left + w + 6, y: y + 16, class: "axis"}, String(row.value)));
  });
  container.append(svg);
  container.dataset.bars = String(rows.length);
}

window.DynasealCharts = {stackedColumns, horizontalBars};

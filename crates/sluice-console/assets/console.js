/*
 * Sluice console: one page for jobs and brokers.
 *
 * Fetches /api/info once, then polls /api/job or /api/broker every refresh_ms
 * and re-renders in place. Plain JS, no build step; charts use the vendored
 * uPlot (window.uPlot). All data goes into the DOM through textContent or
 * setAttribute, never through innerHTML.
 *
 * Test hooks (see console-spec.md): body[data-kind|data-ready|data-renders],
 * div.chart[data-points], #results-<table> tr[data-key][data-value],
 * #lag tr[data-source][data-partition][data-lag][data-lag-ms],
 * #batches tr[data-batch-id], #topics tr[data-topic][data-partition][data-log-end],
 * #groups tr[data-group][data-topic][data-partition][data-committed][data-lag][data-status].
 */
(function () {
  'use strict';

  var BROKER_HISTORY = 300;      // points kept in the browser for the broker charts
  var CHART_HEIGHT = 170;
  var AXIS_FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif';
  var PALETTE = ['#2563eb', '#e8590c', '#2f9e44', '#9c36b5', '#e03131', '#1098ad',
                 '#f08c00', '#d6336c', '#5c7cfa', '#66a80f', '#862e9c', '#495057'];
  var GROUP_STATUSES = ['OK', 'WARN', 'STALL', 'STOP', 'REWIND'];

  var S = {
    info: null,
    kind: null,
    refresh: 1000,
    renders: 0,
    charts: new Map(),   // chart id -> {card, div, title, u, sig, raw, ro}
    seen: null,          // chart ids used during the current render
    el: {},              // persistent elements of the current page skeleton
    hist: null,          // broker history (bounded)
    lastOk: null,        // Date.now() of the last successful poll
    lastPlan: null,
  };

  // ---------------------------------------------------------------- DOM helpers

  function $(id) { return document.getElementById(id); }

  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === undefined || v === null || v === false) return;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = String(v);
        else if (k === 'title') el.title = String(v);
        else el.setAttribute(k, String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }

  function add(el, kid) {
    if (kid === undefined || kid === null || kid === false) return;
    if (Array.isArray(kid)) { kid.forEach(function (k) { add(el, k); }); return; }
    if (kid instanceof Node) el.appendChild(kid);
    else el.appendChild(document.createTextNode(String(kid)));
  }

  function setText(el, text) {
    var t = text === undefined || text === null ? '' : String(text);
    if (el && el.textContent !== t) el.textContent = t;
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }

  function fill(el, kids) { clear(el); add(el, kids); }

  function td(text, cls, title) { return h('td', { class: cls, title: title }, text); }

  // A table with a fixed header; rows are replaced on every render.
  function mkTable(id, cols) {
    var tr = h('tr');
    cols.forEach(function (c) {
      var num = c.charAt(0) === '#';
      tr.appendChild(h('th', { class: num ? 'num' : null, scope: 'col' }, num ? c.slice(1) : c));
    });
    return h('table', { id: id, class: 'data' }, h('thead', null, tr), h('tbody'));
  }

  function setRows(table, rows, emptyEl) {
    var body = table.tBodies[0];
    clear(body);
    rows.forEach(function (r) { body.appendChild(r); });
    if (emptyEl) emptyEl.hidden = rows.length > 0;
  }

  function badge(text, cls) { return h('span', { class: 'badge ' + cls }, text); }

  function statusClass(s) {
    switch (String(s || '').toUpperCase()) {
      case 'OK': case 'RUNNING': case 'STABLE': return 'st-ok';
      case 'WARN': case 'PREPARINGREBALANCE': case 'COMPLETINGREBALANCE': return 'st-warn';
      case 'STALL': return 'st-stall';
      case 'STOP': case 'FAILED': case 'DEAD': return 'st-stop';
      case 'REWIND': return 'st-rewind';
      default: return 'st-neutral';
    }
  }

  // ----------------------------------------------------------------- formatting

  function num(v) {
    if (v === null || v === undefined || v === '') return null;
    var n = typeof v === 'number' ? v : Number(v);
    return isFinite(n) ? n : null;
  }

  function trimNum(x, a) {
    var s = a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : x.toFixed(2);
    if (s.indexOf('.') >= 0) s = s.replace(/0+$/, '').replace(/\.$/, '');
    return s === '-0' ? '0' : s;
  }

  function fmtSI(v) {
    v = num(v);
    if (v === null) return '—';
    var a = Math.abs(v);
    var units = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
    for (var i = 0; i < units.length; i++) {
      if (a >= units[i][0]) return trimNum(v / units[i][0], a / units[i][0]) + units[i][1];
    }
    return trimNum(v, a);
  }

  function fmtInt(v) {
    v = num(v);
    if (v === null) return '—';
    return Math.round(v).toLocaleString('en-US');
  }

  function fmtBytes(v) {
    v = num(v);
    if (v === null) return '—';
    var a = Math.abs(v);
    var units = [[1099511627776, 'TiB'], [1073741824, 'GiB'], [1048576, 'MiB'], [1024, 'KiB']];
    for (var i = 0; i < units.length; i++) {
      if (a >= units[i][0]) return trimNum(v / units[i][0], a / units[i][0]) + ' ' + units[i][1];
    }
    return trimNum(v, a) + ' B';
  }

  function fmtRate(v) { return num(v) === null ? '—' : fmtSI(v) + '/s'; }
  function fmtByteRate(v) { return num(v) === null ? '—' : fmtBytes(v) + '/s'; }

  // Durations given in milliseconds.
  function fmtMs(v) {
    v = num(v);
    if (v === null) return '—';
    var a = Math.abs(v);
    if (a === 0) return '0 ms';
    if (a < 1) return trimNum(v * 1000, a * 1000) + ' µs';
    if (a < 1000) return trimNum(v, a) + ' ms';
    if (a < 60000) return trimNum(v / 1000, a / 1000) + ' s';
    return fmtSpan(v);
  }

  function fmtSecs(v) { v = num(v); return v === null ? '—' : fmtMs(v * 1000); }

  // Coarse span for uptimes and ages (ms).
  function fmtSpan(ms) {
    ms = num(ms);
    if (ms === null) return '—';
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + 's';
    var m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + pad2(s % 60) + 's';
    var hr = Math.floor(m / 60);
    if (hr < 24) return hr + 'h ' + pad2(m % 60) + 'm';
    return Math.floor(hr / 24) + 'd ' + pad2(hr % 24) + 'h';
  }

  function pad2(n) { return (n < 10 ? '0' : '') + n; }

  function fmtClock(ms) {
    ms = num(ms);
    if (ms === null) return '—';
    var d = new Date(ms);
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }

  function fmtDateTime(ms) {
    ms = num(ms);
    if (ms === null) return '—';
    var d = new Date(ms);
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + fmtClock(ms);
  }

  function fmtAge(now, t) {
    now = num(now); t = num(t);
    if (now === null || t === null) return '';
    var d = now - t;
    if (d < 1000) return 'just now';
    return fmtSpan(d) + ' ago';
  }

  function errMsg(e) {
    if (!e) return 'unknown error';
    if (e.message) return e.message;
    return String(e);
  }

  // ------------------------------------------------------------------ fetching

  function getJSON(path) {
    var ctl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = setTimeout(function () { if (ctl) ctl.abort(); }, Math.max(5000, S.refresh * 4));
    return fetch(path, { cache: 'no-store', headers: { Accept: 'application/json' }, signal: ctl ? ctl.signal : undefined })
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status + (r.statusText ? ' ' + r.statusText : '') + ' from ' + path);
        return r.text();
      })
      .then(function (text) {
        try { return JSON.parse(text); }
        catch (e) { throw new Error('invalid JSON from ' + path + ': ' + errMsg(e)); }
      })
      .catch(function (e) {
        if (e && e.name === 'AbortError') throw new Error('timed out fetching ' + path);
        if (e instanceof TypeError) throw new Error(errMsg(e) + ' (' + path + ')');
        throw e;
      })
      .finally(function () { clearTimeout(timer); });
  }

  function showBanner(text) {
    var b = $('banner');
    setText(b, text);
    b.hidden = false;
  }

  function hideBanner() { $('banner').hidden = true; }

  function markStale() {
    var u = $('hdr-updated');
    u.classList.add('stale');
    setText($('hdr-updated-text'), S.lastOk ? 'last update ' + fmtClock(S.lastOk) + ' (stale)' : 'no data yet');
  }

  function markFresh() {
    S.lastOk = Date.now();
    $('hdr-updated').classList.remove('stale');
    setText($('hdr-updated-text'), 'updated ' + fmtClock(S.lastOk) + ' · every ' + fmtMs(S.refresh));
  }

  // ------------------------------------------------------------------ lifecycle

  function sleep(ms) { return new Promise(function (res) { setTimeout(res, ms); }); }

  function start() {
    getJSON('/api/info').then(function (info) {
      if (!info || (info.kind !== 'job' && info.kind !== 'broker')) {
        throw new Error('/api/info has an unknown kind: ' + JSON.stringify(info && info.kind));
      }
      S.info = info;
      S.kind = info.kind;
      var r = num(info.refresh_ms);
      S.refresh = r === null ? 1000 : Math.min(5000, Math.max(250, r));
      document.body.dataset.kind = info.kind;
      document.title = (info.name || 'sluice') + ' · Sluice ' + info.kind;
      setText($('hdr-kind'), info.kind);
      setText($('hdr-name'), info.name || '');
      hideBanner();
      if (info.kind === 'job') buildJob(); else buildBroker();
      poll();
    }).catch(function (e) {
      showBanner('console unreachable: ' + errMsg(e));
      markStale();
      return sleep(2000).then(start);
    });
  }

  function poll() {
    var path = S.kind === 'job' ? '/api/job' : '/api/broker';
    getJSON(path).then(function (doc) {
      if (!doc || typeof doc !== 'object') throw new Error('empty document from ' + path);
      $('app').classList.remove('pending');
      var failures = S.kind === 'job' ? renderJob(doc) : renderBroker(doc);
      S.renders += 1;
      document.body.dataset.renders = String(S.renders);
      document.body.dataset.ready = '1';
      markFresh();
      if (failures.length) showBanner('render failed: ' + failures.join('; '));
      else hideBanner();
    }, function (e) {
      showBanner('console unreachable: ' + errMsg(e));
      markStale();
    }).catch(function (e) {
      showBanner('render failed: ' + errMsg(e));
    }).then(function () {
      setTimeout(poll, S.refresh);
    });
  }

  // Runs one section's render; a failure in one section leaves the others alive.
  function section(failures, name, fn) {
    try { fn(); }
    catch (e) {
      failures.push(name + ': ' + errMsg(e));
      if (window.console) console.error('sluice console: ' + name, e);
    }
  }

  window.addEventListener('unhandledrejection', function (ev) {
    showBanner('console error: ' + errMsg(ev.reason));
    ev.preventDefault();
  });

  // ------------------------------------------------------------------- charts

  function yRange(u, min, max) {
    if (min === null || max === null || !isFinite(min) || !isFinite(max)) return [0, 1];
    var lo = Math.min(0, min);
    var hi = max <= lo ? lo + 1 : max + (max - lo) * 0.08;
    return [lo, hi];
  }

  // A single snapshot (or none) would otherwise make uPlot span years of x axis.
  // (uPlot itself stretches a single time point over a whole day.)
  function xRange(u, min, max) {
    var xs = u.data && u.data[0] ? u.data[0] : [];
    if (xs.length <= 1 || min === null || max === null || !isFinite(min) || !isFinite(max)) {
      var t = xs.length ? xs[0] : Date.now() / 1000;
      return [t - 60, t + 2];
    }
    if (max - min < 10) return [max - 10, max + 0.5];
    return [min, max];
  }

  // One-line time ticks: HH:MM:SS below a minute step, HH:MM below a day, else M/D HH:MM.
  function timeTicks(u, splits, axisIdx, space, incr) {
    return splits.map(function (v) {
      if (v === null || v === undefined) return '';
      var d = new Date(v * 1000);
      var hm = pad2(d.getHours()) + ':' + pad2(d.getMinutes());
      if (incr < 60) return hm + ':' + pad2(d.getSeconds());
      if (incr < 86400) return hm;
      return (d.getMonth() + 1) + '/' + d.getDate() + ' ' + hm;
    });
  }

  function chartWidth(div) {
    var w = div.clientWidth;
    if (!w && div.parentNode) w = div.parentNode.clientWidth - 20;
    return Math.max(200, Math.floor(w || 400));
  }

  function makeOpts(entry, series, o, width) {
    var yfmt = o.yfmt || fmtSI;
    var axis = {
      stroke: '#5f6b7a',
      font: AXIS_FONT,
      grid: { stroke: '#edf0f3', width: 1 },
      ticks: { stroke: '#dde2e8', width: 1, size: 4 },
    };
    return {
      width: width,
      height: CHART_HEIGHT,
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      legend: { live: true },
      scales: { x: { time: true, range: xRange }, y: { range: yRange } },
      axes: [
        Object.assign({}, axis, { values: timeTicks, space: 72 }),
        Object.assign({}, axis, {
          size: o.ysize || 58,
          incrs: o.incrs,
          values: function (u, splits) { return splits.map(function (v) { return v === null ? '' : yfmt(v); }); },
        }),
      ],
      series: [{
        label: 'time',
        value: function (u, v) { return v === null || v === undefined ? '—' : fmtClock(v * 1000); },
      }].concat(series.map(function (s) {
        return {
          label: s.label,
          stroke: s.color,
          width: s.width || 1.5,
          fill: s.fill,
          paths: s.paths,
          points: s.points,
          value: function (u, v, si, idx) {
            if (entry.raw && idx !== null && idx !== undefined) {
              var r = entry.raw[si - 1];
              if (r) v = r[idx];
            }
            return v === null || v === undefined ? '—' : yfmt(v);
          },
        };
      })),
      hooks: {
        // When the cursor is not over the plot, the legend shows the newest values.
        setLegend: [function (u) {
          var n = u.data && u.data[0] ? u.data[0].length : 0;
          if (n > 0 && (u.legend.idx === null || u.legend.idx === undefined) && u.cursor.left < 0) {
            u.setLegend({ idx: n - 1 }, false);
          }
        }],
      },
    };
  }

  // Draws (or updates) the chart `id` inside `grid`. xs are seconds, ys one array per series.
  function chart(grid, id, title, series, xs, ys, o) {
    o = o || {};
    S.seen.add(id);
    var e = S.charts.get(id);
    if (!e) {
      var div = h('div', { class: 'chart', id: id, 'data-points': '0' });
      var titleEl = h('h3', { class: 'chart-title' });
      var card = h('div', { class: 'chart-card' }, titleEl, div);
      grid.appendChild(card);
      e = { card: card, div: div, title: titleEl, u: null, sig: null, raw: null, ro: null, raf: 0 };
      S.charts.set(id, e);
      if (typeof ResizeObserver === 'function') {
        // Resize on the next frame, not inside the observer callback (avoids observer loops).
        e.ro = new ResizeObserver(function () {
          if (e.raf) return;
          e.raf = requestAnimationFrame(function () {
            e.raf = 0;
            if (!e.u) return;
            var w = chartWidth(e.div);
            if (Math.abs(w - e.u.width) > 2) e.u.setSize({ width: w, height: CHART_HEIGHT });
          });
        });
        e.ro.observe(div);
      }
    }
    if (typeof o.order === 'number') e.card.style.order = String(o.order);
    setText(e.title, title);
    e.raw = o.raw || null;
    var data = [xs].concat(ys);
    if (typeof window.uPlot !== 'function') {
      setText(e.div, 'charts unavailable: uPlot did not load');
      e.div.setAttribute('data-points', '0');
      return;
    }
    var sig = series.map(function (s) { return s.label + '\u0001' + s.color; }).join('\u0002');
    if (!e.u || e.sig !== sig) {
      if (e.u) { e.u.destroy(); e.u = null; }
      e.u = new window.uPlot(makeOpts(e, series, o, chartWidth(e.div)), data, e.div);
      e.sig = sig;
    } else {
      e.u.setData(data);
    }
    // Outside hover, keep the legend on the newest point.
    if (xs.length && !(e.u.cursor.left >= 0)) e.u.setLegend({ idx: xs.length - 1 }, false);
    e.div.setAttribute('data-points', String(xs.length));
  }

  function beginCharts() { S.seen = new Set(); }

  // Removes the charts not drawn during this render (e.g. a stream without watermarks any more).
  function endCharts() {
    S.charts.forEach(function (e, id) {
      if (S.seen.has(id)) return;
      if (e.ro) e.ro.disconnect();
      if (e.raf) cancelAnimationFrame(e.raf);
      if (e.u) e.u.destroy();
      e.u = null;
      if (e.card.parentNode) e.card.parentNode.removeChild(e.card);
      S.charts.delete(id);
    });
  }

  // Binary steps for byte axes (1, 2, 5 × 1024^k) so ticks read 512 KiB, 1 MiB, 2 MiB...
  var BYTE_INCRS = (function () {
    var out = [];
    for (var e = 0; e <= 5; e++) {
      [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].forEach(function (m) { out.push(m * Math.pow(1024, e)); });
    }
    return out;
  })();

  function color(i) { return PALETTE[i % PALETTE.length]; }

  function lighten(hex, alpha) {
    var n = parseInt(hex.slice(1), 16);
    return 'rgba(' + ((n >> 16) & 255) + ',' + ((n >> 8) & 255) + ',' + (n & 255) + ',' + alpha + ')';
  }

  // Opaque tint of a colour (mixed with white by f in 0..1), for stacked fills.
  function tint(hex, f) {
    var n = parseInt(hex.slice(1), 16);
    var mix = function (c) { return Math.round(c + (255 - c) * f); };
    return 'rgb(' + mix((n >> 16) & 255) + ',' + mix((n >> 8) & 255) + ',' + mix(n & 255) + ')';
  }

  function barsPath() {
    var U = window.uPlot;
    return U && U.paths && U.paths.bars ? U.paths.bars({ size: [0.7, 40], align: 0 }) : undefined;
  }

  // ------------------------------------------------------------- page skeletons

  function navLinks(items) {
    fill($('nav'), items.map(function (it) { return h('a', { href: '#' + it[0] }, it[1]); }));
  }

  // Until the first document arrives the sections stay hidden behind a waiting note.
  function waiting(app, path) {
    app.classList.add('pending');
    app.appendChild(h('p', { class: 'waiting' }, 'Waiting for the first snapshot from ' + path + '…'));
  }

  function sec(id, title, extra) {
    var hd = h('h2', null, h('span', { class: 'h2-title' }, title));
    var s = h('section', { id: id }, hd);
    add(s, extra);
    return { section: s, heading: hd };
  }

  function panel() {
    var p = h('div', { class: 'panel' });
    for (var i = 0; i < arguments.length; i++) add(p, arguments[i]);
    return p;
  }

  function buildJob() {
    var app = $('app');
    clear(app);
    var E = S.el = {};
    waiting(app, '/api/job');
    navLinks([['overview', 'Overview'], ['rates', 'Throughput'], ['lag-section', 'Lag'],
              ['state-section', 'State'], ['results-section', 'Results'], ['batches-section', 'Batches'],
              ['plan-section', 'Plan'], ['errors-section', 'Errors'], ['printed-section', 'Output']]);

    E.cards = h('div', { class: 'cards' });
    app.appendChild(sec('overview', 'Overview', E.cards).section);

    E.gridRates = h('div', { class: 'grid' });
    app.appendChild(sec('rates', 'Throughput & latency', E.gridRates).section);

    E.gridLag = h('div', { class: 'grid' });
    E.lag = mkTable('lag', ['Source', '#Partition', '#From', '#Until', '#Rows', '#Lag (records)', '#Lag (time)']);
    E.lagEmpty = h('p', { class: 'empty' }, 'No partitions in the last batch.');
    var lagSec = sec('lag-section', 'Consumer lag', [E.gridLag,
      h('h3', { class: 'sub' }, 'Per partition, last batch'), panel(h('div', { class: 'scroll' }, E.lag), E.lagEmpty)]);
    E.lagHead = lagSec.heading;
    app.appendChild(lagSec.section);

    E.gridState = h('div', { class: 'grid' });
    app.appendChild(sec('state-section', 'State, event time & counters', E.gridState).section);

    E.results = h('div', { class: 'results' });
    E.resultsEmpty = h('p', { class: 'empty panel' }, 'This job has no result tables.');
    app.appendChild(sec('results-section', 'Results', [E.results, E.resultsEmpty]).section);

    E.batches = mkTable('batches', ['#Batch', 'Time', 'Offset ranges', '#Rows', '#Input rate',
                                    '#Processing rate', '#Processing', '#Sched. delay', '#Total delay']);
    E.batchesEmpty = h('p', { class: 'empty' }, 'No batch committed yet.');
    var bSec = sec('batches-section', 'Batches', panel(h('div', { class: 'scroll tall' }, E.batches), E.batchesEmpty));
    E.batchesHead = bSec.heading;
    app.appendChild(bSec.section);

    E.plan = h('pre', { id: 'plan', class: 'plan' });
    E.checkpoint = h('div', { class: 'checkpoint' });
    var two = h('div', { class: 'two-col' },
      h('div', null, h('h3', { class: 'sub' }, 'Plan'), panel(E.plan)),
      h('div', null, h('h3', { class: 'sub' }, 'Checkpoint'), panel(E.checkpoint)));
    app.appendChild(sec('plan-section', 'Plan & checkpoint', two).section);

    E.errors = mkTable('errors', ['Time', 'Message']);
    E.errorsEmpty = h('p', { class: 'empty' }, 'No errors.');
    var eSec = sec('errors-section', 'Errors', panel(h('div', { class: 'scroll' }, E.errors), E.errorsEmpty));
    E.errorsHead = eSec.heading;
    app.appendChild(eSec.section);

    E.printed = mkTable('printed', ['#Batch', 'Line']);
    E.printedScroll = h('div', { class: 'scroll' }, E.printed);
    E.printedEmpty = h('p', { class: 'empty' }, 'Nothing printed yet.');
    var pSec = sec('printed-section', 'Printed output', panel(E.printedScroll, E.printedEmpty));
    E.printedHead = pSec.heading;
    app.appendChild(pSec.section);
  }

  function buildBroker() {
    var app = $('app');
    clear(app);
    var E = S.el = {};
    S.hist = { t: [], bin: [], bout: [], rec: [], conn: [], groups: new Map() };
    waiting(app, '/api/broker');
    navLinks([['overview', 'Overview'], ['traffic', 'Traffic'], ['topics-section', 'Topics'],
              ['apis-section', 'Requests'], ['groups-section', 'Consumer groups']]);

    E.cards = h('div', { class: 'cards' });
    app.appendChild(sec('overview', 'Overview', E.cards).section);

    E.grid = h('div', { class: 'grid' });
    app.appendChild(sec('traffic', 'Traffic & lag', [E.grid,
      h('p', { class: 'note' }, 'Charts show the snapshots this page has seen (last ' + BROKER_HISTORY + ').')]).section);

    E.topics = mkTable('topics', ['Topic', 'Policy', '#Partition', '#Log start', '#Log end', '#LSO',
                                  '#Records', '#Size', '#Segments', '#Produce', '#Fetch']);
    E.topicsEmpty = h('p', { class: 'empty' }, 'No topics.');
    var tSec = sec('topics-section', 'Topics & partitions', panel(h('div', { class: 'scroll tall' }, E.topics), E.topicsEmpty));
    E.topicsHead = tSec.heading;
    app.appendChild(tSec.section);

    E.apis = mkTable('apis', ['API', '#Key', '#Requests', '#Errors', '#Req/s', '#p50', '#p99', '#Mean']);
    E.apisEmpty = h('p', { class: 'empty' }, 'No requests yet.');
    app.appendChild(sec('apis-section', 'Requests per API', panel(h('div', { class: 'scroll' }, E.apis), E.apisEmpty)).section);

    E.groupCards = h('div', { class: 'group-cards' });
    E.groups = mkTable('groups', ['Group', 'Topic', '#Partition', '#Committed', '#Log end', '#Lag',
                                  'Last commit', 'Owner', 'Status']);
    E.groupsEmpty = h('p', { class: 'empty' }, 'No consumer groups.');
    var legend = h('div', { class: 'status-legend' }, 'Partition status (Burrow, last 10 commits): ',
      GROUP_STATUSES.map(function (s) { return badge(s, statusClass(s)); }));
    var gSec = sec('groups-section', 'Consumer groups', [E.groupCards,
      h('h3', { class: 'sub' }, 'Committed offsets and lag per partition'), legend,
      panel(h('div', { class: 'scroll tall' }, E.groups), E.groupsEmpty)]);
    E.groupsHead = gSec.heading;
    app.appendChild(gSec.section);
  }

  function setCount(heading, text) {
    var c = heading.querySelector('.count');
    if (!c) { c = h('span', { class: 'count' }); heading.appendChild(c); }
    setText(c, text);
  }

  function card(label, value, sub, cls, help) {
    return h('div', { class: 'card' + (cls ? ' ' + cls : ''), title: help },
      h('div', { class: 'card-label' }, label),
      h('div', { class: 'card-value', title: help ? null : value }, value),
      sub ? h('div', { class: 'card-sub', title: help ? null : sub }, sub) : null);
  }

  function setHeader(status, meta) {
    var st = $('hdr-status');
    if (status) {
      st.hidden = false;
      st.className = 'badge ' + statusClass(status);
      setText(st, status);
    } else {
      st.hidden = true;
    }
    setText($('hdr-meta'), meta);
  }

  // ------------------------------------------------------------------ job page

  function arr(v) { return Array.isArray(v) ? v : []; }

  function col(batches, f) { return batches.map(function (b) { return num(f(b)); }); }

  function partKey(p) { return String(p.source) + '\u0000' + String(p.partition); }

  function renderJob(d) {
    var failures = [];
    var batches = arr(d.batches).filter(function (b) { return b && typeof b === 'object'; });
    var last = batches.length ? batches[batches.length - 1] : null;
    var now = num(d.now_ms) || Date.now();

    section(failures, 'header', function () {
      var meta = [d.mode, S.info.version ? 'v' + S.info.version : null,
                  d.started_ms ? 'up ' + fmtSpan(now - d.started_ms) : null].filter(Boolean).join(' · ');
      setText($('hdr-name'), d.job || S.info.name || '');
      setHeader(d.status || null, meta);
    });
    section(failures, 'overview', function () { renderJobCards(d, batches, last, now); });
    section(failures, 'charts', function () {
      beginCharts();
      try { renderJobCharts(batches); } finally { endCharts(); }
    });
    section(failures, 'lag', function () { renderLag(last); });
    section(failures, 'results', function () { renderResults(arr(d.results)); });
    section(failures, 'batches', function () { renderBatches(batches, num(d.batch_interval_ms)); });
    section(failures, 'plan', function () {
      var plan = d.plan === null || d.plan === undefined ? '(no plan)' : String(d.plan);
      if (plan !== S.lastPlan) { S.el.plan.textContent = plan; S.lastPlan = plan; }
    });
    section(failures, 'checkpoint', function () { renderCheckpoint(d.checkpoint, now); });
    section(failures, 'errors', function () { renderErrors(arr(d.errors), now); });
    section(failures, 'printed', function () { renderPrinted(arr(d.printed)); });
    return failures;
  }

  function avg(values) {
    var s = 0, n = 0;
    values.forEach(function (v) { if (v !== null) { s += v; n++; } });
    return n ? s / n : null;
  }

  function renderJobCards(d, batches, last, now) {
    var recent = batches.slice(-10);
    var lagSum = null, lagMaxMs = null;
    if (last) {
      arr(last.partitions).forEach(function (p) {
        var l = num(p.lag), lm = num(p.lag_ms);
        if (l !== null) lagSum = (lagSum || 0) + l;
        if (lm !== null) lagMaxMs = Math.max(lagMaxMs || 0, lm);
      });
    }
    var cp = d.checkpoint || {};
    var errors = arr(d.errors);
    var interval = num(d.batch_interval_ms);
    var avgProc = avg(col(recent, function (b) { return b.processing_ms; }));
    var items = [
      card('Status', String(d.status || '—'), d.started_ms ? 'up ' + fmtSpan(now - d.started_ms) : null,
           'status-' + statusClass(d.status)),
      card('Last batch', last ? '#' + last.batch_id : '—',
           last ? fmtAge(now, last.batch_time_ms) : 'none yet'),
      card('Input rate', last ? fmtRate(last.arrival_rows_per_s) : '—',
           'avg ' + fmtRate(avg(col(recent, function (b) { return b.arrival_rows_per_s; }))),
           null, 'rows arriving per second; average over the last 10 batches'),
      card('Proc. rate', last ? fmtRate(last.input_rows_per_s) : '—',
           'avg ' + fmtRate(avg(col(recent, function (b) { return b.input_rows_per_s; }))),
           null, 'rows processed per second of processing time; average over the last 10 batches'),
      card('Proc. time', last ? fmtMs(last.processing_ms) : '—', 'avg ' + fmtMs(avgProc),
           avgProc !== null && interval && avgProc > interval ? 'warn' : null,
           'processing time of the last batch; average over the last 10' + (interval ? '; batch interval ' + fmtMs(interval) : '')),
      card('Total delay', last ? fmtMs(last.total_delay_ms) : '—',
           last ? 'sched. ' + fmtMs(last.scheduling_delay_ms) : null),
      card('Lag', lagSum === null ? '—' : fmtSI(lagSum) + ' rec',
           lagMaxMs === null ? null : 'max ' + fmtMs(lagMaxMs), null, 'records behind the log end, summed over partitions; max time behind'),
      card('State', last ? fmtBytes(last.state_bytes) : '—',
           last ? arr(last.state).length + ' operator' + (arr(last.state).length === 1 ? '' : 's') : null),
      card('Last commit', cp.last_committed_batch === null || cp.last_committed_batch === undefined ? '—' : '#' + cp.last_committed_batch,
           cp.committed_ms ? fmtAge(now, cp.committed_ms) : 'not yet'),
      card('Errors', String(errors.length), errors.length ? 'last ' + fmtAge(now, errors[errors.length - 1].at_ms) : 'none',
           errors.length ? 'bad' : null),
    ];
    if (last && num(last.caught_up_fraction) !== null) {
      items.push(card('Catch-up', Math.round(num(last.caught_up_fraction) * 100) + '%',
                      num(last.estimated_rate) !== null ? 'est. ' + fmtRate(last.estimated_rate) : null));
    }
    fill(S.el.cards, items);
  }

  function renderJobCharts(batches) {
    var E = S.el;
    var xs = batches.map(function (b) { return (num(b.batch_time_ms) || 0) / 1000; });

    // Throughput & latency
    chart(E.gridRates, 'chart-rates', 'Input vs processing rate (rows/s)',
      [{ label: 'input', color: PALETTE[0], width: 2 }, { label: 'processing', color: PALETTE[2], width: 2 }],
      xs, [col(batches, function (b) { return b.arrival_rows_per_s; }),
           col(batches, function (b) { return b.input_rows_per_s; })], { order: 1 });

    var phaseKeys = ['plan_ms', 'compute_ms', 'sink_ms', 'commit_ms'];
    var phaseNames = ['plan', 'read+compute', 'sink', 'commit'];
    var phaseColors = ['#7048e8', '#2563eb', '#1098ad', '#f08c00'];
    var raw = phaseKeys.map(function (k) { return col(batches, function (b) { return b.phases && b.phases[k]; }); });
    var cum = [], running = batches.map(function () { return null; });
    raw.forEach(function (r) {
      running = running.map(function (acc, i) {
        return r[i] === null ? acc : (acc || 0) + r[i];
      });
      cum.push(running.slice());
    });
    // Drawn top band first so each lower (cumulative) series paints over it: a stacked area.
    var order = [3, 2, 1, 0];
    chart(E.gridRates, 'chart-phases', 'Batch duration by phase (ms, stacked)',
      order.map(function (i) {
        return { label: phaseNames[i], color: phaseColors[i], width: 1, fill: tint(phaseColors[i], 0.55), points: { show: false } };
      }),
      xs, order.map(function (i) { return cum[i]; }),
      { yfmt: fmtMs, raw: order.map(function (i) { return raw[i]; }), order: 2 });

    chart(E.gridRates, 'chart-delay', 'Scheduling & total delay (ms)',
      [{ label: 'scheduling delay', color: PALETTE[1] }, { label: 'total delay', color: PALETTE[3], width: 2 }],
      xs, [col(batches, function (b) { return b.scheduling_delay_ms; }),
           col(batches, function (b) { return b.total_delay_ms; })], { yfmt: fmtMs, order: 3 });

    chart(E.gridRates, 'chart-records', 'Records per batch',
      [{ label: 'input rows', color: PALETTE[0], width: 1, fill: lighten(PALETTE[0], 0.35), paths: barsPath(), points: { show: false } }],
      xs, [col(batches, function (b) { return b.input_rows; })], { order: 4 });

    // Consumer lag: union of partitions over all batches, stable order.
    var parts = new Map();
    batches.forEach(function (b) {
      arr(b.partitions).forEach(function (p) { if (!parts.has(partKey(p))) parts.set(partKey(p), p); });
    });
    var keys = Array.from(parts.keys()).sort(function (a, b) {
      var pa = parts.get(a), pb = parts.get(b);
      if (String(pa.source) !== String(pb.source)) return String(pa.source) < String(pb.source) ? -1 : 1;
      return (num(pa.partition) || 0) - (num(pb.partition) || 0);
    });
    var sources = new Set(keys.map(function (k) { return String(parts.get(k).source); }));
    var label = function (k) {
      var p = parts.get(k);
      return (sources.size > 1 ? p.source + ' ' : '') + 'p' + p.partition;
    };
    var byBatch = batches.map(function (b) {
      var m = new Map();
      arr(b.partitions).forEach(function (p) { m.set(partKey(p), p); });
      return m;
    });
    var lagSeries = [{ label: 'sum', color: '#1d2633', width: 2 }];
    var lagData = [byBatch.map(function (m) {
      var s = null;
      m.forEach(function (p) { var l = num(p.lag); if (l !== null) s = (s || 0) + l; });
      return s;
    })];
    var lagSecSeries = [], lagSecData = [];
    keys.forEach(function (k, i) {
      lagSeries.push({ label: label(k), color: color(i), width: 1 });
      lagData.push(byBatch.map(function (m) { var p = m.get(k); return p ? num(p.lag) : null; }));
      lagSecSeries.push({ label: label(k), color: color(i), width: 1.25 });
      lagSecData.push(byBatch.map(function (m) {
        var p = m.get(k), v = p ? num(p.lag_ms) : null;
        return v === null ? null : v / 1000;
      }));
    });
    chart(E.gridLag, 'chart-lag', 'Consumer lag (records)', lagSeries, xs, lagData, { order: 1 });
    chart(E.gridLag, 'chart-lag-seconds', 'Consumer lag (seconds)', lagSecSeries, xs, lagSecData,
      { yfmt: fmtSecs, order: 2 });

    // State per operator/table.
    var ops = [];
    batches.forEach(function (b) {
      arr(b.state).forEach(function (s) { if (ops.indexOf(String(s.name)) < 0) ops.push(String(s.name)); });
    });
    var stateOf = function (b, name) {
      var st = arr(b.state);
      for (var i = 0; i < st.length; i++) if (String(st[i].name) === name) return st[i];
      return null;
    };
    var opLabel = function (name) {
      for (var i = batches.length - 1; i >= 0; i--) {
        var s = stateOf(batches[i], name);
        if (s && s.kind) return name + ' (' + s.kind + ')';
      }
      return name;
    };
    chart(E.gridState, 'chart-state-keys', 'State keys per operator',
      ops.map(function (n, i) { return { label: opLabel(n), color: color(i) }; }),
      xs, ops.map(function (n) { return batches.map(function (b) { var s = stateOf(b, n); return s ? num(s.keys) : null; }); }),
      { order: 1 });
    chart(E.gridState, 'chart-state-bytes', 'State size (bytes)',
      [{ label: 'total', color: '#1d2633', width: 2 }].concat(ops.map(function (n, i) { return { label: opLabel(n), color: color(i) }; })),
      xs, [col(batches, function (b) { return b.state_bytes; })].concat(
        ops.map(function (n) { return batches.map(function (b) { var s = stateOf(b, n); return s ? num(s.bytes) : null; }); })),
      { yfmt: fmtBytes, ysize: 68, incrs: BYTE_INCRS, order: 2 });

    // Watermark gap per stream, only with event time.
    var streams = [];
    batches.forEach(function (b) {
      arr(b.watermarks).forEach(function (w) { if (streams.indexOf(String(w.stream)) < 0) streams.push(String(w.stream)); });
    });
    if (streams.length) {
      chart(E.gridState, 'chart-watermark', 'Watermark gap per stream (event time behind batch time)',
        streams.map(function (s, i) { return { label: s, color: color(i + 2) }; }),
        xs, streams.map(function (s) {
          return batches.map(function (b) {
            var ws = arr(b.watermarks);
            for (var i = 0; i < ws.length; i++) {
              if (String(ws[i].stream) === s) { var g = num(ws[i].gap_ms); return g === null ? null : g / 1000; }
            }
            return null;
          });
        }), { yfmt: fmtSecs, order: 3 });
    }

    // Counters (late/bad records, dead letters, ...): only the names present.
    var names = [];
    batches.forEach(function (b) {
      var c = b.counters;
      if (c && typeof c === 'object') Object.keys(c).forEach(function (k) { if (names.indexOf(k) < 0) names.push(k); });
    });
    if (names.length) {
      chart(E.gridState, 'chart-counters', 'Late / bad records & dead letters',
        names.map(function (n, i) { return { label: n, color: [PALETTE[6], PALETTE[4], PALETTE[3], PALETTE[5]][i % 4] }; }),
        xs, names.map(function (n) { return col(batches, function (b) { return b.counters ? b.counters[n] : null; }); }),
        { order: 4 });
    }
  }

  function renderLag(last) {
    var parts = last ? arr(last.partitions) : [];
    var rows = parts.map(function (p) {
      var from = num(p.from), until = num(p.until);
      var lagMs = num(p.lag_ms);
      return h('tr', {
        'data-source': p.source === null || p.source === undefined ? '' : p.source,
        'data-partition': p.partition === null || p.partition === undefined ? '' : p.partition,
        'data-lag': p.lag === null || p.lag === undefined ? '' : p.lag,
        'data-lag-ms': p.lag_ms === null || p.lag_ms === undefined ? '' : p.lag_ms,
      },
        td(String(p.source)),
        td(String(p.partition), 'num'),
        td(fmtInt(from), 'num'),
        td(fmtInt(until), 'num'),
        td(from !== null && until !== null ? fmtInt(until - from) : '—', 'num'),
        td(fmtInt(p.lag), 'num' + (num(p.lag) > 0 ? ' strong' : '')),
        td(lagMs === null ? '—' : fmtMs(lagMs), 'num'));
    });
    setRows(S.el.lag, rows, S.el.lagEmpty);
    var total = 0;
    parts.forEach(function (p) { total += num(p.lag) || 0; });
    setCount(S.el.lagHead, parts.length ? fmtInt(total) + ' records behind' : '');
  }

  function renderResults(results) {
    var E = S.el;
    E.resultsEmpty.hidden = results.length > 0;
    fill(E.results, results.map(function (r) {
      var rows = arr(r.rows);
      var name = String(r.table);
      var maxAbs = 0;
      rows.forEach(function (row) { var n = num(row.number); if (n !== null) maxAbs = Math.max(maxAbs, Math.abs(n)); });

      var bars = h('div', { class: 'bars', 'aria-label': 'top rows of ' + name });
      rows.forEach(function (row) {
        var n = num(row.number);
        var pct = n === null || maxAbs === 0 ? 0 : Math.max(0.5, Math.abs(n) / maxAbs * 100);
        var bar = h('div', { class: 'bar' + (n !== null && n < 0 ? ' neg' : '') });
        bar.style.width = pct.toFixed(2) + '%';
        bars.appendChild(h('div', { class: 'bar-row' },
          h('span', { class: 'bar-label', title: String(row.key) }, String(row.key)),
          h('div', { class: 'bar-track' }, bar),
          h('span', { class: 'bar-value', title: String(row.value) }, n === null ? String(row.value) : fmtSI(n))));
      });
      if (!rows.length) bars.appendChild(h('p', { class: 'empty' }, 'No rows yet.'));

      var t = mkTable('results-' + name, ['#', 'Key', '#Value']);
      setRows(t, rows.map(function (row, i) {
        return h('tr', { 'data-key': row.key === null || row.key === undefined ? '' : row.key,
                         'data-value': row.value === null || row.value === undefined ? '' : row.value },
          td(String(i + 1), 'num muted'),
          td(String(row.key), 'key', String(row.key)),
          td(String(row.value), 'num'));
      }));

      var meta = [
        (r.key_type || '?') + ' → ' + (r.value_type || '?'),
        r.refreshed_batch === null || r.refreshed_batch === undefined ? 'not refreshed yet' : 'as of batch #' + r.refreshed_batch,
        'top ' + rows.length,
      ].join(' · ');
      return h('div', { class: 'panel result' },
        h('div', { class: 'result-head' }, h('h3', null, name), h('span', { class: 'muted' }, meta)),
        h('div', { class: 'result-body' }, bars, h('div', { class: 'scroll' }, t)));
    }));
  }

  function ranges(parts) {
    var bySource = new Map();
    parts.forEach(function (p) {
      var s = String(p.source);
      if (!bySource.has(s)) bySource.set(s, []);
      bySource.get(s).push('p' + p.partition + ' ' + (p.from === null || p.from === undefined ? '?' : p.from) +
                          '..' + (p.until === null || p.until === undefined ? '?' : p.until));
    });
    var out = [];
    bySource.forEach(function (list, s) { out.push((bySource.size > 1 ? s + ': ' : '') + list.join('  ')); });
    return out.join('; ');
  }

  function renderBatches(batches, interval) {
    var rows = [];
    for (var i = batches.length - 1; i >= 0; i--) {
      var b = batches[i];
      var idCell = h('td', { class: 'num' }, String(b.batch_id));
      if (b.replayed) idCell.appendChild(h('span', { class: 'tag' }, 'replay'));
      if (num(b.lost_records) > 0) idCell.appendChild(h('span', { class: 'tag bad', title: 'records lost' }, 'lost ' + fmtInt(b.lost_records)));
      var proc = num(b.processing_ms);
      rows.push(h('tr', { 'data-batch-id': b.batch_id === null || b.batch_id === undefined ? '' : b.batch_id },
        idCell,
        td(fmtClock(b.batch_time_ms), 'nowrap', fmtDateTime(b.batch_time_ms)),
        td(ranges(arr(b.partitions)), 'mono ranges'),
        td(fmtInt(b.input_rows), 'num'),
        td(fmtRate(b.arrival_rows_per_s), 'num'),
        td(fmtRate(b.input_rows_per_s), 'num'),
        td(fmtMs(proc), 'num' + (interval && proc !== null && proc > interval ? ' warn-text' : '')),
        td(fmtMs(b.scheduling_delay_ms), 'num'),
        td(fmtMs(b.total_delay_ms), 'num')));
    }
    setRows(S.el.batches, rows, S.el.batchesEmpty);
    setCount(S.el.batchesHead, batches.length ? batches.length + ' shown, newest first' : '');
  }

  function renderCheckpoint(cp, now) {
    cp = cp && typeof cp === 'object' ? cp : {};
    var dl = h('dl', { class: 'facts' });
    var fact = function (k, v) { dl.appendChild(h('dt', null, k)); dl.appendChild(h('dd', null, v)); };
    fact('Path', h('span', { class: 'mono' }, cp.path === null || cp.path === undefined ? '—' : String(cp.path)));
    fact('Schema version', cp.schema_version === null || cp.schema_version === undefined ? '—' : String(cp.schema_version));
    fact('Last committed batch', cp.last_committed_batch === null || cp.last_committed_batch === undefined
      ? 'none yet' : '#' + cp.last_committed_batch);
    fact('Committed at', cp.committed_ms ? fmtDateTime(cp.committed_ms) + ' (' + fmtAge(now, cp.committed_ms) + ')' : '—');
    var offs = cp.offsets && typeof cp.offsets === 'object' ? cp.offsets : {};
    var t = mkTable('offsets', ['Source', '#Partition', '#Next offset']);
    var rows = [];
    Object.keys(offs).sort().forEach(function (src) {
      var m = offs[src] && typeof offs[src] === 'object' ? offs[src] : {};
      Object.keys(m).sort(function (a, b) { return Number(a) - Number(b); }).forEach(function (p) {
        rows.push(h('tr', null, td(src), td(p, 'num'), td(fmtInt(m[p]), 'num')));
      });
    });
    setRows(t, rows);
    fill(S.el.checkpoint, [dl, rows.length ? h('div', { class: 'scroll short' }, t) : h('p', { class: 'empty' }, 'No offsets committed yet.')]);
  }

  function renderErrors(errors, now) {
    var rows = [];
    for (var i = errors.length - 1; i >= 0; i--) {
      var e = errors[i] || {};
      rows.push(h('tr', null,
        td(fmtClock(e.at_ms), 'nowrap', fmtDateTime(e.at_ms) + ' · ' + fmtAge(now, e.at_ms)),
        td(String(e.message === undefined ? '' : e.message), 'mono err-msg')));
    }
    setRows(S.el.errors, rows, S.el.errorsEmpty);
    setCount(S.el.errorsHead, errors.length ? String(errors.length) : '');
    S.el.errorsHead.parentNode.classList.toggle('has-errors', errors.length > 0);
  }

  function renderPrinted(printed) {
    var box = S.el.printedScroll;
    var atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    setRows(S.el.printed, printed.map(function (p) {
      p = p || {};
      return h('tr', null, td(String(p.batch_id), 'num muted'), td(String(p.line === undefined ? '' : p.line), 'mono line'));
    }), S.el.printedEmpty);
    if (atBottom) box.scrollTop = box.scrollHeight;
    setCount(S.el.printedHead, printed.length ? 'last ' + printed.length + ' lines' : '');
  }

  // --------------------------------------------------------------- broker page

  function pushHistory(d) {
    var H = S.hist;
    var t = (num(d.at_ms) || Date.now()) / 1000;
    var lastT = H.t.length ? H.t[H.t.length - 1] : null;
    if (lastT !== null && t < lastT) {               // the broker restarted: start over
      S.hist = H = { t: [], bin: [], bout: [], rec: [], conn: [], groups: new Map() };
    } else if (lastT !== null && t === lastT) {
      return;                                         // same snapshot as before
    }
    H.t.push(t);
    H.bin.push(num(d.bytes_in_per_s));
    H.bout.push(num(d.bytes_out_per_s));
    H.rec.push(num(d.records_in_per_s));
    H.conn.push(num(d.connections_open));
    var present = new Set();
    arr(d.groups).forEach(function (g) {
      var name = String(g.group);
      if (present.has(name)) return;
      present.add(name);
      var a = H.groups.get(name);
      if (!a) { a = new Array(H.t.length - 1).fill(null); H.groups.set(name, a); }
      a.push(num(g.lag));
    });
    H.groups.forEach(function (a, name) { if (!present.has(name)) a.push(null); });
    while (H.t.length > BROKER_HISTORY) {
      H.t.shift(); H.bin.shift(); H.bout.shift(); H.rec.shift(); H.conn.shift();
      H.groups.forEach(function (a) { a.shift(); });
    }
    H.groups.forEach(function (a, name) {
      if (a.every(function (v) { return v === null; })) H.groups.delete(name);
    });
  }

  function parseLe(le) {
    if (typeof le === 'number') return le;
    if (typeof le === 'string') {
      if (/^\+?inf/i.test(le.trim())) return Infinity;
      var n = parseFloat(le);
      return isFinite(n) ? n : null;
    }
    return null;
  }

  // Prometheus-style histogram_quantile over cumulative buckets.
  // Returns {v: seconds, over: bool} or null; over = the rank fell into the +Inf bucket.
  function quantile(lat, q) {
    if (!lat || !Array.isArray(lat.buckets)) return null;
    var bs = lat.buckets.map(function (b) { return { le: parseLe(b && b.le), c: num(b && b.count) }; })
      .filter(function (b) { return b.le !== null && b.c !== null; })
      .sort(function (a, b) { return a.le - b.le; });
    var total = num(lat.count);
    if (total === null) total = bs.length ? bs[bs.length - 1].c : 0;
    if (!total) return null;
    if (!bs.length || bs[bs.length - 1].le !== Infinity) bs.push({ le: Infinity, c: total });
    var rank = q * total, prevLe = 0, prevC = 0;
    for (var i = 0; i < bs.length; i++) {
      var b = bs[i];
      if (b.c >= rank) {
        if (b.le === Infinity) return { v: prevLe, over: true };
        if (b.c === prevC) return { v: b.le, over: false };
        return { v: prevLe + (b.le - prevLe) * (rank - prevC) / (b.c - prevC), over: false };
      }
      prevLe = b.le; prevC = b.c;
    }
    return { v: prevLe, over: true };
  }

  function fmtQuantile(x) {
    if (!x) return '—';
    return (x.over ? '> ' : '') + fmtSecs(x.v);
  }

  function renderBroker(d) {
    var failures = [];
    var now = num(d.at_ms) || Date.now();
    section(failures, 'history', function () { pushHistory(d); });
    section(failures, 'header', function () {
      var meta = ['listen ' + (d.listen || '?'), d.cluster_id ? 'cluster ' + d.cluster_id : null,
                  S.info.version ? 'v' + S.info.version : null,
                  d.started_ms ? 'up ' + fmtSpan(now - d.started_ms) : null].filter(Boolean).join(' · ');
      setHeader(null, meta);
    });
    section(failures, 'overview', function () { renderBrokerCards(d, now); });
    section(failures, 'charts', function () {
      beginCharts();
      try { renderBrokerCharts(); } finally { endCharts(); }
    });
    section(failures, 'topics', function () { renderTopics(arr(d.topics)); });
    section(failures, 'apis', function () { renderApis(arr(d.apis)); });
    section(failures, 'groups', function () { renderGroups(arr(d.groups), now); });
    return failures;
  }

  var STATUS_RANK = { OK: 0, WARN: 1, REWIND: 2, STALL: 3, STOP: 4 };

  function renderBrokerCards(d, now) {
    var topics = arr(d.topics), groups = arr(d.groups);
    var nParts = 0, bytes = 0;
    topics.forEach(function (t) { arr(t.partitions).forEach(function (p) { nParts++; bytes += num(p.bytes) || 0; }); });
    var worst = null;
    groups.forEach(function (g) {
      var s = String(g.status || '').toUpperCase();
      if (worst === null || (STATUS_RANK[s] || 0) > (STATUS_RANK[worst] || 0)) worst = s;
    });
    var lag = 0;
    groups.forEach(function (g) { lag += num(g.lag) || 0; });
    var perr = num(d.protocol_errors) || 0;
    fill(S.el.cards, [
      card('Connections', fmtInt(d.connections_open), fmtInt(d.connections_total) + ' since start'),
      card('Bytes in', fmtByteRate(d.bytes_in_per_s), fmtBytes(d.bytes_in) + ' total'),
      card('Bytes out', fmtByteRate(d.bytes_out_per_s), fmtBytes(d.bytes_out) + ' total'),
      card('Records in', fmtRate(d.records_in_per_s), fmtInt(d.records_in) + ' total'),
      card('Topics', String(topics.length), nParts + ' partitions · ' + fmtBytes(bytes)),
      card('Consumer groups', String(groups.length), groups.length ? 'lag ' + fmtInt(lag) + ' · worst ' + worst : 'none',
           worst && worst !== 'OK' ? 'warn' : null),
      card('Protocol errors', fmtInt(perr), null, perr > 0 ? 'bad' : null),
      card('Uptime', d.started_ms ? fmtSpan(now - d.started_ms) : '—', d.started_ms ? 'since ' + fmtClock(d.started_ms) : null, null, d.started_ms ? 'started ' + fmtDateTime(d.started_ms) : null),
    ]);
  }

  function renderBrokerCharts() {
    var H = S.hist, g = S.el.grid;
    var xs = H.t.slice();
    chart(g, 'chart-bytes', 'Bytes in / out per second',
      [{ label: 'in', color: PALETTE[0], width: 2, fill: lighten(PALETTE[0], 0.08) },
       { label: 'out', color: PALETTE[2], width: 2 }],
      xs, [H.bin.slice(), H.bout.slice()], { yfmt: function (v) { return fmtBytes(v) + '/s'; }, ysize: 78, incrs: BYTE_INCRS, order: 1 });
    chart(g, 'chart-records-in', 'Records in per second',
      [{ label: 'records/s', color: PALETTE[3], width: 2 }], xs, [H.rec.slice()], { order: 2 });
    var names = Array.from(H.groups.keys()).sort();
    chart(g, 'chart-group-lag', 'Total lag per consumer group (records)',
      names.map(function (n, i) { return { label: n, color: color(i + 1), width: 2 }; }),
      xs, names.map(function (n) { return H.groups.get(n).slice(); }), { order: 3 });
    chart(g, 'chart-connections', 'Open connections',
      [{ label: 'open', color: PALETTE[5], width: 2, paths: window.uPlot && window.uPlot.paths && window.uPlot.paths.stepped
          ? window.uPlot.paths.stepped({ align: 1 }) : undefined }],
      xs, [H.conn.slice()], { order: 4 });
  }

  function renderTopics(topics) {
    var rows = [];
    var sorted = topics.slice().sort(function (a, b) { return String(a.name) < String(b.name) ? -1 : String(a.name) > String(b.name) ? 1 : 0; });
    var nParts = 0;
    sorted.forEach(function (t) {
      var parts = arr(t.partitions).slice().sort(function (a, b) { return (num(a.partition) || 0) - (num(b.partition) || 0); });
      parts.forEach(function (p, i) {
        nParts++;
        var ls = num(p.log_start), le = num(p.log_end);
        rows.push(h('tr', {
          class: i === 0 ? 'group-first' : 'group-cont',
          'data-topic': t.name === null || t.name === undefined ? '' : t.name,
          'data-partition': p.partition === null || p.partition === undefined ? '' : p.partition,
          'data-log-end': p.log_end === null || p.log_end === undefined ? '' : p.log_end,
        },
          td(String(t.name), 'topic-name', String(t.name)),
          td(i === 0 ? String(t.cleanup_policy || '—') : '', 'muted'),
          td(String(p.partition), 'num'),
          td(fmtInt(ls), 'num'),
          td(fmtInt(le), 'num'),
          td(fmtInt(p.last_stable), 'num' + (num(p.last_stable) !== null && le !== null && num(p.last_stable) < le ? ' warn-text' : '')),
          td(ls !== null && le !== null ? fmtInt(le - ls) : '—', 'num'),
          td(fmtBytes(p.bytes), 'num'),
          td(fmtInt(p.segments), 'num'),
          td(fmtRate(p.produced_records_per_s), 'num', 'records produced per second'),
          td(fmtByteRate(p.fetched_bytes_per_s), 'num', 'fetched ' + fmtBytes(p.fetched_bytes) + ' total')));
      });
    });
    setRows(S.el.topics, rows, S.el.topicsEmpty);
    setCount(S.el.topicsHead, topics.length ? topics.length + ' topics · ' + nParts + ' partitions' : '');
  }

  function renderApis(apis) {
    var rows = apis.slice().sort(function (a, b) { return (num(a.key) || 0) - (num(b.key) || 0); }).map(function (a) {
      var lat = a.latency || {};
      var count = num(lat.count), sum = num(lat.sum_seconds);
      var errs = num(a.errors) || 0;
      return h('tr', { 'data-api': a.api === null || a.api === undefined ? '' : a.api },
        td(String(a.api)),
        td(String(a.key), 'num muted'),
        td(fmtInt(a.requests), 'num'),
        td(fmtInt(errs), 'num' + (errs > 0 ? ' bad-text' : ' muted')),
        td(num(a.requests_per_s) === null ? '—' : trimNum(num(a.requests_per_s), Math.abs(num(a.requests_per_s))), 'num'),
        td(fmtQuantile(quantile(lat, 0.5)), 'num', 'estimated from histogram buckets'),
        td(fmtQuantile(quantile(lat, 0.99)), 'num', 'estimated from histogram buckets'),
        td(count && sum !== null ? fmtSecs(sum / count) : '—', 'num'));
    });
    setRows(S.el.apis, rows, S.el.apisEmpty);
  }

  function renderGroups(groups, now) {
    var E = S.el;
    var sorted = groups.slice().sort(function (a, b) { return String(a.group) < String(b.group) ? -1 : String(a.group) > String(b.group) ? 1 : 0; });
    fill(E.groupCards, sorted.map(function (g) {
      var members = arr(g.members);
      var mt = h('table', { class: 'data members' }, h('thead', null, h('tr', null,
        h('th', null, 'Member'), h('th', null, 'Client'), h('th', null, 'Host'), h('th', null, 'Assignment'))), h('tbody'));
      setRows(mt, members.map(function (m) {
        var asg = arr(m.assignment).map(function (a) {
          return String(a.topic) + ' [' + arr(a.partitions).join(', ') + ']';
        }).join('  ');
        return h('tr', null,
          td(String(m.member_id), 'mono ellipsis', String(m.member_id)),
          td(String(m.client_id === undefined ? '' : m.client_id)),
          td(String(m.client_host === undefined ? '' : m.client_host), 'mono'),
          td(asg || '(none)', 'mono'));
      }));
      var st = String(g.status || '—');
      return h('div', { class: 'panel group-card' },
        h('div', { class: 'group-head' },
          h('span', { class: 'group-name' }, String(g.group)),
          badge(String(g.state || '—'), statusClass(g.state)),
          h('span', { class: 'muted' }, [g.protocol_type, g.protocol, g.generation !== undefined && g.generation !== null ? 'generation ' + g.generation : null]
            .filter(function (x) { return x !== undefined && x !== null && x !== ''; }).join(' · ')),
          h('span', { class: 'spacer' }),
          h('span', { class: 'group-lag' }, 'lag ', h('strong', null, fmtInt(g.lag))),
          badge(st, statusClass(st))),
        members.length ? mt : h('p', { class: 'empty' }, 'No members (group is empty).'));
    }));

    var rows = [];
    sorted.forEach(function (g) {
      var parts = arr(g.partitions).slice().sort(function (a, b) {
        if (String(a.topic) !== String(b.topic)) return String(a.topic) < String(b.topic) ? -1 : 1;
        return (num(a.partition) || 0) - (num(b.partition) || 0);
      });
      parts.forEach(function (p, i) {
        var st = String(p.status || '—');
        rows.push(h('tr', {
          class: 'status-row ' + statusClass(st) + '-row' + (i === 0 ? ' group-first' : ''),
          'data-group': g.group === null || g.group === undefined ? '' : g.group,
          'data-topic': p.topic === null || p.topic === undefined ? '' : p.topic,
          'data-partition': p.partition === null || p.partition === undefined ? '' : p.partition,
          'data-committed': p.committed === null || p.committed === undefined ? '' : p.committed,
          'data-lag': p.lag === null || p.lag === undefined ? '' : p.lag,
          'data-status': p.status === null || p.status === undefined ? '' : p.status,
        },
          td(String(g.group), i === 0 ? 'strong' : 'muted'),
          td(String(p.topic)),
          td(String(p.partition), 'num'),
          td(fmtInt(p.committed), 'num'),
          td(fmtInt(p.log_end), 'num'),
          td(fmtInt(p.lag), 'num' + (num(p.lag) > 0 ? ' strong' : '')),
          td(p.last_commit_ms ? fmtAge(now, p.last_commit_ms) : '—', 'nowrap', p.last_commit_ms ? fmtDateTime(p.last_commit_ms) : null),
          td(p.owner === null || p.owner === undefined ? 'unassigned' : String(p.owner),
             'mono ellipsis' + (p.owner === null || p.owner === undefined ? ' muted' : ''),
             p.owner === null || p.owner === undefined ? null : String(p.owner)),
          h('td', null, badge(st, statusClass(st)))));
      });
    });
    setRows(E.groups, rows, E.groupsEmpty);
    setCount(E.groupsHead, groups.length ? groups.length + ' groups' : '');
  }

  // --------------------------------------------------------------------- boot

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

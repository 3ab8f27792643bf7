// trimtab operator dashboard: the Experiments and Segments pages. Plain JS, no build step.
//
// Loaded after app.js, which owns the admin token, the login and the header nav; this file only
// gets `window.trimtabDashboard` (an API helper that sends the token, the shared formatters and a
// way to register pages). Server data is only ever inserted as text (textContent), never as HTML.
//
//  - Experiments: GET /v1/experiments (list + refused definition files) and, for the selected
//    one, GET /v1/experiments/{id}/results every 5 s while the page is open.
//  - Segments: GET /v1/segments (every 15 s while open); "Re-cluster now" POSTs
//    /v1/segments/refresh (202) and polls until `computed_at_ms` changes.
(function () {
  'use strict';

  var D = window.trimtabDashboard;
  if (!D) { console.error('insights.js: app.js did not load'); return; }

  var EXP_EVERY_MS = 5000;
  var SEG_EVERY_MS = 15000;
  var SEG_POLL_MS = 1000;
  var SEG_POLL_MAX_MS = 120000;
  var C = D.colors.base;
  var PALETTE = D.colors.variants;
  var CONTROL_COLOR = '#8a96a6';
  var NOISE_COLOR = '#5d6877';
  var GOOD = '#3fb950', BAD = '#f2645a', WARN = '#d6a23a';

  // ---------------------------------------------------------------- helpers
  // DOM helpers are app.js's (text only, never innerHTML).
  var $ = D.dom.$, el = D.dom.el, append = D.dom.append, clear = D.dom.clear;
  var isNum = D.val.isNum, num = D.val.num, arr = D.val.arr, obj = D.val.obj;
  function sign(x) { return x > 0 ? '+' : x < 0 ? '−' : ''; }
  function hexA(hex, a) {
    var n = parseInt(String(hex).slice(1), 16);
    return 'rgba(' + (n >> 16 & 255) + ',' + (n >> 8 & 255) + ',' + (n & 255) + ',' + a + ')';
  }
  var DASH = '—';

  // Numbers with a sensible number of significant digits; "—" for null / NaN.
  function fmtNum(x, digits) {
    if (!isNum(x)) return DASH;
    var a = Math.abs(x);
    if (a === 0) return '0';
    if (a >= 1e5) return D.fmt.compact(x);
    if (a < 1e-3) return x.toExponential(1).replace('-', '−');
    var d = digits === undefined ? 3 : digits;
    var s = Number(x.toPrecision(d));
    return (s < 0 ? '−' : '') + String(Math.abs(s));
  }
  function fmtSigned(x, digits) { return isNum(x) ? (x > 0 ? '+' : '') + fmtNum(x, digits) : DASH; }
  // Proportions as percentages (rates) and differences of proportions as percentage points.
  var fmtPct = D.fmt.pct, fmtSignedPct = D.fmt.signedPct;
  function fmtPp(x) { return isNum(x) ? (x > 0 ? '+' : '') + (x * 100).toFixed(1).replace('-', '−') + ' pp' : DASH; }
  function fmtLoss(x, prop) {
    if (!isNum(x)) return DASH;
    var v = prop ? x * 100 : x;
    var unit = prop ? ' pp' : '';
    if (Math.abs(v) < 0.001) return '<0.001' + unit;
    return fmtNum(v, 2) + unit;
  }
  function fmtP(p) {
    if (!isNum(p)) return DASH;
    if (p < 0.0001) return '<0.0001';
    if (p < 0.01) return p.toFixed(4);
    return p.toFixed(3);
  }
  function fmtChance(p) {
    if (!isNum(p)) return DASH;
    if (p > 0.999) return '>99.9%';
    if (p < 0.001) return '<0.1%';
    return (p * 100).toFixed(1) + '%';
  }
  function ciText(ci, f) {
    if (!Array.isArray(ci) || ci.length < 2 || !isNum(ci[0]) || !isNum(ci[1])) return '';
    return '[' + f(ci[0]) + ', ' + f(ci[1]) + ']';
  }
  function isCi(ci) { return Array.isArray(ci) && ci.length >= 2 && isNum(ci[0]) && isNum(ci[1]); }
  function cell(main, sub, cls, title) {
    var td = el('td', 'num' + (cls ? ' ' + cls : ''));
    td.appendChild(el('div', 'v', main));
    if (sub) td.appendChild(el('div', 'ci', sub));
    if (title) td.title = title;
    return td;
  }
  var badge = D.dom.badge;
  function statusBadge(status) {
    var st = String(status || 'unknown');
    var kind = st === 'running' ? 'active' : st === 'paused' || st === 'draft' ? 'disabled' : st === 'stopped' || st === 'ended' ? 'other' : 'other';
    return badge(st, kind);
  }

  // "Nice" axis ticks between lo and hi.
  function niceTicks(lo, hi, want) {
    var span = hi - lo;
    if (!(span > 0)) return [lo];
    var raw = span / (want || 5);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * mag; }).find(function (s) { return s >= raw; }) || 10 * mag;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return out;
  }

  // uPlot charts that follow their box's width: app.js's.
  var Chart = D.chart.Chart, axis = D.chart.axis;

  // x range of a time chart from its data (seconds), at least `minSpan` wide. (uPlot widens a
  // single point by 1000 days, as if its values were milliseconds.)
  function timeRange(u, minSpan) {
    var xs = u.data[0] || [];
    if (!xs.length) { var now = Date.now() / 1000; return [now - minSpan, now]; }
    var mn = xs[0], mx = xs[xs.length - 1];
    if (mx - mn < minSpan) { var mid = (mn + mx) / 2; return [mid - minSpan / 2, mid + minSpan / 2]; }
    var pad = (mx - mn) * 0.02;
    return [mn - pad, mx + pad];
  }

  function legend(box, items) {
    clear(box);
    items.forEach(function (it) {
      var span = el('span');
      var sw = el('span', 'sw' + (it.dot ? ' sw-dot' : '') + (it.dash ? ' sw-dash' : ''));
      sw.style.background = it.color;
      append(span, sw, it.label);
      if (it.value !== undefined) append(span, ' ', el('b', null, it.value));
      box.appendChild(span);
    });
  }

  // ================================================================= Experiments
  var E = {
    active: false,
    timer: null,
    busy: false,
    seq: 0,
    list: [],
    listSig: '',
    sel: null,
    res: null,
    upliftMode: 'relative',
    pscale: 'log',
    seqChart: null
  };

  function armColor(name, control, order) {
    if (name === control) return CONTROL_COLOR;
    var i = order.indexOf(name);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }

  function expShow() {
    E.active = true;
    var m = /^#experiments\/(.+)$/.exec(location.hash || '');
    if (m) { try { E.sel = decodeURIComponent(m[1]); } catch (e) { /* keep */ } }
    if (!E.seqChart) E.seqChart = new Chart($('seq-chart'), 220);
    expTick();
  }
  function expHide() {
    E.active = false;
    clearTimeout(E.timer);
  }
  function expReset() {
    expHide();
    E.list = []; E.listSig = ''; E.res = null; E.sel = null; E.seq++;
    if (E.seqChart) E.seqChart.destroy();
    clear($('exp-list'));
    $('exp-list').appendChild(el('div', 'empty-note', 'Loading…'));
    $('exp-body').hidden = true;
    $('exp-empty').hidden = false;
  }
  function expSchedule() {
    clearTimeout(E.timer);
    if (!E.active) return;
    E.timer = setTimeout(expTick, EXP_EVERY_MS);
  }

  function expTick() {
    if (!E.active) return;
    if (E.busy) { expSchedule(); return; }
    E.busy = true;
    var seq = E.seq;
    D.api('/v1/experiments').then(function (res) {
      if (seq !== E.seq) return null;
      if (res.status === 200 && res.body) renderExpList(res.body);
      else showListError('Could not list experiments (' + res.status + '): ' + D.errMessage(res, 'unexpected answer'));
      if (!E.sel && E.list.length) {
        var first = E.list.find(function (x) { return x.live && x.id !== 'global-holdout'; }) || E.list[0];
        E.sel = first.id;
        markSelected();
      }
      if (!E.sel || (!$('exp-live').checked && E.res && E.res.experiment === E.sel)) return null;
      return loadResults(E.sel, seq);
    }).catch(function (e) {
      if (seq === E.seq) showListError('Cannot reach the server.');
      console.warn(e);
    }).then(function () {
      E.busy = false;
      if (seq === E.seq) expSchedule();
    });
  }

  function showListError(text) {
    var box = $('exp-list');
    clear(box);
    box.appendChild(el('div', 'insp-error', text));
    E.listSig = '';
  }

  function renderExpList(body) {
    var list = arr(body.experiments);
    var problems = arr(body.problems);
    E.list = list;
    var sig = JSON.stringify([list, problems, body.holdout]);
    if (sig === E.listSig) return;
    E.listSig = sig;

    // Refused definition files: prominent, with the field path.
    var pbox = $('exp-problems');
    clear(pbox);
    pbox.hidden = !problems.length;
    if (problems.length) {
      var head = el('div', 'problems-head');
      append(head, el('span', 'problems-icon', '!'),
        el('b', null, problems.length + ' experiment definition' + (problems.length === 1 ? ' was' : 's were') + ' refused'),
        el('span', 'muted small', ' · these experiments are not running; fix the files and they reload'));
      pbox.appendChild(head);
      problems.forEach(function (p) {
        var row = el('div', 'problem');
        row.dataset.problem = String(p.id || p.file || '');
        var file = String(p.file || p.id || '?');
        var loc = el('span', 'loc', file.split('/').pop());
        loc.title = file;
        append(row, loc);
        if (p.path) append(row, el('span', 'problem-path', String(p.path)));
        append(row, el('span', 'problem-msg', String(p.error || 'invalid definition')));
        pbox.appendChild(row);
      });
    }

    var hold = num(body.holdout);
    $('exp-holdout').hidden = !(hold > 0);
    $('exp-holdout').textContent = 'global holdout ' + fmtPct(hold);
    $('exp-count').textContent = list.length ? '· ' + list.length : '';

    var box = $('exp-list');
    clear(box);
    if (!list.length) {
      box.appendChild(el('div', 'empty-note', 'No experiments. Create one with PUT /v1/experiments/{id} or a file in experiments/.'));
      return;
    }
    list.forEach(function (x) {
      var b = el('button', 'exp-item');
      b.type = 'button';
      b.dataset.exp = String(x.id);
      var top = el('span', 'exp-item-top');
      var name = el('span', 'exp-item-name', x.id);
      name.title = String(x.id);
      append(top, name, statusBadge(x.status));
      if (x.live) { var dot = el('span', 'live-dot'); dot.title = 'live: assigning users now'; top.appendChild(dot); }
      b.appendChild(top);
      var arms = arr(x.arms).map(function (a) { return a.name; });
      var sub = arms.length + ' arm' + (arms.length === 1 ? '' : 's') + ' · ' + (x.primary_metric || '—');
      if (arr(x.slots).length) sub += ' · ' + arr(x.slots).join(', ');
      b.appendChild(el('span', 'exp-item-sub', sub));
      if (x.description) b.appendChild(el('span', 'exp-item-desc', x.description));
      b.addEventListener('click', function () { selectExperiment(String(x.id)); });
      box.appendChild(b);
    });
    markSelected();
  }

  function markSelected() {
    document.querySelectorAll('#exp-list .exp-item').forEach(function (b) {
      var on = b.dataset.exp === E.sel;
      b.classList.toggle('sel', on);
      b.setAttribute('aria-current', on ? 'true' : 'false');
    });
  }

  function selectExperiment(id) {
    if (id === E.sel) return;
    E.sel = id;
    E.res = null;
    E.seq++;
    E.busy = false;
    markSelected();
    history.replaceState(null, '', '#experiments/' + encodeURIComponent(id));
    if (E.seqChart) E.seqChart.destroy();
    $('exp-body').hidden = true;
    $('exp-empty').hidden = false;
    clear($('exp-empty'));
    $('exp-empty').appendChild(el('div', 'empty-note', 'Loading ' + id + '…'));
    clearTimeout(E.timer);
    var seq = E.seq;
    E.busy = true;
    loadResults(id, seq).catch(function () { /* shown */ }).then(function () {
      E.busy = false;
      if (seq === E.seq) expSchedule();
    });
  }

  function loadResults(id, seq) {
    return D.api('/v1/experiments/' + encodeURIComponent(id) + '/results').then(function (res) {
      if (seq !== E.seq || id !== E.sel) return;
      if (res.status === 200 && res.body) {
        E.res = res.body;
        renderResults(res.body);
      } else if (res.status === 404) {
        showResultsError('No experiment ' + id + ' (it was deleted?).');
      } else {
        showResultsError('Results failed (' + res.status + '): ' + D.errMessage(res, 'unexpected answer'));
      }
    }, function () {
      if (seq === E.seq) showResultsError('Cannot reach the server.');
    });
  }

  function showResultsError(text) {
    if (E.res && !$('exp-body').hidden) {
      var b = $('exp-error');
      b.textContent = text + ' Showing the last results.';
      b.hidden = false;
      return;
    }
    $('exp-body').hidden = true;
    var box = $('exp-empty');
    box.hidden = false;
    clear(box);
    box.appendChild(el('div', 'insp-error', text));
  }

  // The primary metric's analysis (or null, or {error}).
  function analysisOf(res, name) {
    var m = obj(res.metrics)[name];
    return m && typeof m === 'object' ? m : null;
  }

  function renderResults(r) {
    $('exp-empty').hidden = true;
    $('exp-body').hidden = false;
    $('exp-error').hidden = true;
    var control = String(r.control || '');
    var armsOrder = arr(r.arms).map(function (a) { return String(a.arm); }).filter(function (n) { return n !== control; });
    var colorOf = function (n) { return armColor(n, control, armsOrder); };
    var primary = String(r.primary_metric || '');
    var pa = analysisOf(r, primary);
    var paOk = pa && !pa.error ? pa : null;
    var alpha = paOk && isNum(paOk.alpha) ? paOk.alpha : 0.05;

    // Header
    $('exp-title').textContent = r.experiment || E.sel;
    var st = $('exp-status');
    clear(st);
    st.appendChild(statusBadge(r.status));
    st.appendChild(el('span', 'flag ' + (r.live ? 'on' : ''), r.live ? 'live' : 'not live'));
    var summary = E.list.find(function (x) { return x.id === r.experiment; }) || {};
    $('exp-desc').textContent = summary.description || '';
    $('exp-desc').hidden = !summary.description;
    $('exp-updated').textContent = 'computed ' + D.fmt.time(num(r.computed_at_ms) || Date.now());
    var meta = $('exp-meta');
    clear(meta);
    var chip = function (k, v) { var c = el('span', 'meta-chip'); append(c, el('span', 'k', k), ' ', el('span', 'mono', v)); meta.appendChild(c); };
    chip('primary', primary || DASH);
    chip('guardrails', arr(r.guardrails).join(', ') || 'none');
    chip('control', control || DASH);
    if (arr(summary.slots).length) chip('slots', arr(summary.slots).join(', '));
    chip('alpha', String(alpha));
    chip('SRM p', fmtP(r.srm_p_value));

    // Recommendation banner
    var rec = obj(r.recommendation);
    var action = ['ship', 'stop', 'keep_running'].indexOf(rec.action) >= 0 ? rec.action : 'keep_running';
    var recBox = $('exp-rec');
    recBox.className = 'rec rec-' + action;
    recBox.dataset.action = action;
    var head = action === 'ship' ? 'Ship ' + (rec.arm || 'the variant')
      : action === 'stop' ? 'Stop' + (rec.arm ? ' ' + rec.arm : ' the experiment')
        : 'Keep running';
    $('exp-rec-action').textContent = head;
    $('exp-rec-text').textContent = rec.text || '';

    // SRM
    var srm = $('exp-srm');
    srm.hidden = !r.srm_warning;
    if (r.srm_warning) {
      srm.textContent = 'Sample-ratio mismatch: the arms\' exposures do not match their weights (p = ' + fmtP(r.srm_p_value) +
        '). Assignment or exposure logging is broken; do not trust these results until it is fixed.';
    }

    renderArms(r, pa, control, colorOf, alpha);
    renderUplift(pa, colorOf);
    renderSequential(r, control, colorOf, alpha);
    renderMetrics(r, primary, control);
    renderSegmentsBreakdown(r, primary, control);
    renderWarnings(r);
  }

  function renderArms(r, pa, control, colorOf, alpha) {
    var body = $('exp-arms-body');
    clear(body);
    var ok = pa && !pa.error;
    var prop = ok && pa.metric === 'proportion';
    $('exp-col-value').textContent = ok ? (prop ? 'Rate' : 'Mean') : 'Value';
    $('exp-arms-sub').textContent = '· primary metric ' + (r.primary_metric || DASH) + (ok ? ' (' + pa.metric + ')' : '');
    var exposures = arr(r.arms);
    var total = exposures.reduce(function (t, a) { return t + num(a.exposed); }, 0);
    var wsum = exposures.reduce(function (t, a) { return t + num(a.weight); }, 0) || 1;
    var byName = {};
    if (ok) arr(pa.arms).forEach(function (a) { byName[a.name] = a; });
    var cupedBadge = $('exp-cuped');
    var cu = ok ? pa.cuped : null;
    cupedBadge.hidden = !(cu && isNum(cu.variance_reduction));
    if (cu && isNum(cu.variance_reduction)) {
      cupedBadge.textContent = 'CUPED · variance −' + fmtPct(cu.variance_reduction);
      cupedBadge.title = 'CUPED (pre-exposure activity as covariate), θ = ' + fmtNum(cu.theta);
    }
    if (!exposures.length) {
      var tr0 = el('tr', 'empty');
      var td0 = el('td', null, 'No arms.');
      td0.colSpan = 10;
      body.appendChild(append(tr0, td0));
    }
    exposures.forEach(function (x) {
      var name = String(x.arm);
      var a = byName[name] || {};
      var isControl = name === control;
      var cmp = a.vs_control || null;
      var tr = el('tr');
      tr.dataset.arm = name;
      tr.dataset.exposed = String(num(x.exposed));
      if (isControl) tr.classList.add('is-control');
      // Arm
      var c1 = el('td', 'arm-cell');
      var nm = el('div', 'arm-name');
      var sw = el('span', 'sw-arm');
      sw.style.background = colorOf(name);
      append(nm, sw, el('span', null, name));
      if (isControl) nm.appendChild(el('span', 'tag', 'control'));
      c1.appendChild(nm);
      var vs = arr(x.variants).map(function (v) { return v.slot + ' → ' + v.variant; }).join(' · ');
      if (vs) c1.appendChild(el('div', 'ci mono', vs));
      // Exposed vs expected share
      var share = total > 0 ? num(x.exposed) / total : null;
      var expected = num(x.weight) / wsum;
      var c2 = cell(D.fmt.int(num(x.exposed)), (share === null ? DASH : fmtPct(share)) + ' · exp. ' + fmtPct(expected),
        r.srm_warning ? 'warn' : '', 'weight ' + fmtNum(num(x.weight)));
      // Value with CI
      var c3;
      if (!ok) c3 = cell(DASH);
      else if (prop) c3 = cell(fmtPct(a.rate), ciText(a.rate_ci, function (v) { return fmtPct(v); }), '', isNum(a.conversions) ? D.fmt.int(a.conversions) + ' of ' + D.fmt.int(a.n) + ' converted' : '');
      else {
        c3 = cell(fmtNum(a.mean), ciText(a.mean_ci, fmtNum));
        if (isNum(a.adjusted_mean)) {
          c3.appendChild(el('div', 'ci cuped-line', 'CUPED ' + fmtNum(a.adjusted_mean) + ' ' + ciText(a.adjusted_mean_ci, fmtNum)));
        }
      }
      var cells;
      if (isControl || !cmp) {
        var base = el('td', 'num muted', isControl ? 'baseline' : DASH);
        base.colSpan = 7;
        base.classList.add('baseline');
        cells = [base];
      } else {
        var diffF = prop ? fmtPp : function (v) { return fmtSigned(v); };
        var ciF = prop ? function (v) { return (v * 100).toFixed(1).replace('-', '−'); } : function (v) { return fmtSigned(v); };
        var up = isCi(cmp.ci) ? (cmp.ci[0] > 0 ? 'good' : cmp.ci[1] < 0 ? 'bad' : '') : '';
        var seqSig = isNum(cmp.sequential_p_value) && cmp.sequential_p_value < alpha;
        cells = [
          cell(diffF(cmp.difference), ciText(cmp.ci, ciF) + (prop && isCi(cmp.ci) ? ' pp' : ''), up),
          cell(fmtSignedPct(cmp.relative_uplift), ciText(cmp.relative_ci, function (v) { return fmtSignedPct(v, 0); }), up),
          cell(fmtP(cmp.p_value), '', isNum(cmp.p_value) && cmp.p_value < alpha ? 'sig' : ''),
          cell(fmtP(cmp.sequential_p_value), isCi(cmp.sequential_ci) ? 'CI ' + ciText(cmp.sequential_ci, ciF) : '', seqSig ? 'sig strong' : '',
            'always-valid p-value (running minimum over looks); interval valid at any time'),
          cell(fmtP(cmp.adjusted_p_value), isNum(cmp.bh_adjusted_p_value) ? 'BH ' + fmtP(cmp.bh_adjusted_p_value) : '', '',
            (pa.correction ? pa.correction + '-adjusted' : 'adjusted') + ' for multiple comparisons; BH = Benjamini-Hochberg'),
          cell(fmtChance(cmp.chance_to_beat_control), isNum(cmp.achieved_power) ? 'power ' + fmtPct(cmp.achieved_power, 0) : ''),
          cell(fmtLoss(cmp.expected_loss, prop), '', '', 'expected loss if this arm is shipped' + (prop ? ' (percentage points)' : '') + ': ' + (isNum(cmp.expected_loss) ? String(cmp.expected_loss) : DASH))
        ];
      }
      append(tr, c1, c2, c3);
      cells.forEach(function (c) { tr.appendChild(c); });
      body.appendChild(tr);
    });
    var pw = ok ? pa.power : null;
    if (pw && isNum(pw.required_n_per_arm)) {
      var trp = el('tr', 'power-row');
      var tdp = el('td', 'muted small', 'Power: about ' + D.fmt.int(pw.required_n_per_arm) + ' users per arm are needed to detect the minimum effect' +
        (isNum(pw.achieved_power) ? ' · achieved power ' + fmtPct(pw.achieved_power, 0) : '') + '.');
      tdp.colSpan = 10;
      body.appendChild(append(trp, tdp));
    }
    if (pa && pa.error) {
      var tre = el('tr');
      var tde = el('td', 'rule-err', 'The primary metric could not be analysed: ' + (pa.error.message || pa.error.code || 'error') + (pa.error.path ? ' (at ' + pa.error.path + ')' : ''));
      tde.colSpan = 10;
      body.appendChild(append(tre, tde));
    }
  }

  // Uplift vs control with its interval, one row per non-control arm (HTML/CSS).
  function renderUplift(pa, colorOf) {
    var box = $('uplift-chart');
    clear(box);
    var rel = E.upliftMode === 'relative';
    var ok = pa && !pa.error;
    var prop = ok && pa.metric === 'proportion';
    $('uplift-sub').textContent = rel ? '· relative, 95% CI' : prop ? '· percentage points, 95% CI' : '· absolute, 95% CI';
    var rows = [];
    if (ok) {
      arr(pa.arms).forEach(function (a) {
        if (a.is_control || !a.vs_control) return;
        var v = a.vs_control;
        rows.push({
          name: a.name,
          point: rel ? v.relative_uplift : v.difference,
          ci: rel ? v.relative_ci : v.ci,
          seqCi: rel ? null : v.sequential_ci
        });
      });
    }
    if (!rows.length) {
      box.appendChild(el('div', 'empty-note', ok ? 'No variant to compare yet.' : 'No results for the primary metric yet.'));
      return;
    }
    var fmtV = rel ? function (v) { return fmtSignedPct(v, Math.abs(v) >= 1 ? 0 : 1); }
      : prop ? function (v) { return fmtPp(v); } : function (v) { return fmtSigned(v); };
    var fmtTick = rel ? function (v) { return fmtSignedPct(v, 0); }
      : prop ? function (v) { return (v > 0 ? '+' : '') + (v * 100).toFixed(Math.abs(v) < 0.1 && v !== 0 ? 1 : 0).replace('-', '−'); } : function (v) { return fmtSigned(v, 2); };
    var lo = 0, hi = 0;
    rows.forEach(function (r) {
      [r.point].concat(isCi(r.ci) ? r.ci : []).forEach(function (v) { if (isNum(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    });
    if (hi - lo <= 0) { lo = -0.01; hi = 0.01; }
    var pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    var ticks = niceTicks(lo, hi, 5);
    lo = Math.min(lo, ticks[0]);
    hi = Math.max(hi, ticks[ticks.length - 1]);
    var pos = function (v) { return ((v - lo) / (hi - lo) * 100).toFixed(3) + '%'; };

    var plot = el('div', 'uplift-plot');
    rows.forEach(function (r) {
      var row = el('div', 'uplift-row');
      row.dataset.arm = r.name;
      var lab = el('div', 'uplift-label');
      var sw = el('span', 'sw-arm');
      sw.style.background = colorOf(r.name);
      append(lab, sw, el('span', null, r.name));
      var track = el('div', 'uplift-track');
      ticks.forEach(function (t) {
        var g = el('div', 'uplift-grid' + (t === 0 ? ' zero' : ''));
        g.style.left = pos(t);
        track.appendChild(g);
      });
      var verdict = isCi(r.ci) ? (r.ci[0] > 0 ? 'good' : r.ci[1] < 0 ? 'bad' : 'flat') : 'flat';
      if (isCi(r.ci)) {
        var bar = el('div', 'uplift-ci ' + verdict);
        bar.style.left = pos(r.ci[0]);
        bar.style.width = ((r.ci[1] - r.ci[0]) / (hi - lo) * 100).toFixed(3) + '%';
        bar.title = '95% CI ' + fmtV(r.ci[0]) + ' to ' + fmtV(r.ci[1]);
        track.appendChild(bar);
      }
      if (isNum(r.point)) {
        var pt = el('div', 'uplift-point ' + verdict);
        pt.style.left = pos(r.point);
        pt.title = fmtV(r.point);
        track.appendChild(pt);
      }
      var val = el('div', 'uplift-val');
      append(val, el('b', 'uplift-' + verdict, isNum(r.point) ? fmtV(r.point) : 'undefined'));
      if (isCi(r.ci)) val.appendChild(el('div', 'ci', fmtV(r.ci[0]) + ' … ' + fmtV(r.ci[1])));
      else if (!isNum(r.point)) val.appendChild(el('div', 'ci', rel ? 'control is 0' : ''));
      append(row, lab, track, val);
      plot.appendChild(row);
    });
    var axisRow = el('div', 'uplift-row uplift-axis');
    var ax = el('div', 'uplift-track axis');
    ticks.forEach(function (t) {
      var tk = el('span', 'uplift-tick' + (t === 0 ? ' zero' : ''), fmtTick(t));
      tk.style.left = pos(t);
      ax.appendChild(tk);
    });
    append(axisRow, el('div', 'uplift-label'), ax, el('div', 'uplift-val'));
    plot.appendChild(axisRow);
    box.appendChild(plot);
    var note = el('div', 'uplift-note');
    var key = function (cls, text) { var k = el('span', 'key-item'); append(k, el('span', 'key ' + cls), text); return k; };
    append(note, key('good', 'interval above 0'), key('bad', 'below 0'), key('flat', 'includes 0'),
      el('span', 'key-text', 'fixed-horizon 95% intervals; the recommendation uses the always-valid test.'));
    box.appendChild(note);
  }

  // The always-valid p-value of each variant at each look (uPlot), with the α line.
  function renderSequential(r, control, colorOf, alpha) {
    var hist = arr(r.sequential_history).filter(function (h) { return h && isNum(h.ts); });
    hist.sort(function (a, b) { return a.ts - b.ts; });
    var names = [];
    hist.forEach(function (h) {
      Object.keys(obj(h.sequential_p_value)).forEach(function (k) { if (names.indexOf(k) < 0) names.push(k); });
    });
    var chart = E.seqChart;
    if (!hist.length || !names.length) {
      legend($('seq-legend'), []);
      chart.note('No always-valid p-value yet: it appears once the control and a variant have exposures.');
      return;
    }
    var log = E.pscale === 'log';
    var FLOOR = 1e-12;
    var xs = hist.map(function (h) { return h.ts / 1000; });
    var data = [xs];
    names.forEach(function (n) {
      data.push(hist.map(function (h) {
        var v = obj(h.sequential_p_value)[n];
        return isNum(v) ? (log ? Math.max(FLOOR, v) : v) : null;
      }));
    });
    data.push(xs.map(function () { return alpha; }));
    var minP = 1;
    for (var i = 1; i < data.length - 1; i++) data[i].forEach(function (v) { if (isNum(v) && v < minP) minP = v; });
    var last = hist[hist.length - 1].sequential_p_value || {};
    legend($('seq-legend'), names.map(function (n) {
      return { label: n, color: colorOf(n), value: fmtP(last[n]) };
    }).concat([{ label: 'α = ' + alpha, color: WARN, dash: true }]));
    var few = xs.length < 30;
    var sig = [log ? 'log' : 'lin', names.join(','), few ? 'few' : 'many'].join('|');
    chart.set(sig, function () {
      var series = [{}];
      names.forEach(function (n) {
        series.push({ label: n, stroke: colorOf(n), width: 1.8, spanGaps: true, points: { show: few, size: 5, fill: colorOf(n) } });
      });
      series.push({ label: 'α', stroke: WARN, width: 1, dash: [5, 4], points: { show: false } });
      return {
        padding: [10, 12, 0, 0],
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { size: 6 } },
        scales: {
          x: {
            time: true,
            range: function (u) { return timeRange(u, 60); }
          },
          y: log
            ? { distr: 3, log: 10, range: function () { var e = Math.floor(Math.log10(Math.min(alpha / 10, minP))); return [Math.pow(10, e), 1]; } }
            : { range: [0, 1] }
        },
        axes: [
          axis({ space: 80, values: function (u, vals) { return vals.map(function (v) { return D.fmt.time(v * 1000); }); } }),
          axis({
            size: 52,
            // Log scale: one grid line per decade.
            splits: log ? function (u) {
              var out = [];
              var lo = Math.round(Math.log10(u.scales.y.min)), hi = Math.round(Math.log10(u.scales.y.max));
              var step = Math.max(1, Math.ceil((hi - lo) / 6));
              for (var e = hi; e >= lo; e -= step) out.unshift(Math.pow(10, e));
              return out;
            } : undefined,
            values: function (u, vals) {
              return vals.map(function (v) {
                if (v === null || v === undefined) return '';
                if (!log) return String(Number(v.toFixed(2)));
                var e = Math.round(Math.log10(v));
                if (Math.abs(Math.log10(v) - e) > 1e-6) return '';
                return e === 0 ? '1' : e >= -2 ? String(Math.pow(10, e)) : '1e' + e;
              });
            }
          })
        ],
        series: series
      };
    }, data);
  }

  // Guardrails first, then every other non-primary metric: one row per (metric, variant).
  function renderMetrics(r, primary, control) {
    var body = $('exp-metrics-body');
    clear(body);
    var guard = arr(r.guardrails);
    var names = Object.keys(obj(r.metrics)).filter(function (n) { return n !== primary; });
    names.sort(function (a, b) {
      var ga = guard.indexOf(a) >= 0 ? 0 : 1, gb = guard.indexOf(b) >= 0 ? 0 : 1;
      return ga - gb || (a < b ? -1 : a > b ? 1 : 0);
    });
    if (!names.length) {
      var tr0 = el('tr', 'empty');
      var td0 = el('td', null, 'No other metrics.');
      td0.colSpan = 9;
      body.appendChild(append(tr0, td0));
      return;
    }
    names.forEach(function (name) {
      var a = analysisOf(r, name);
      var isGuard = guard.indexOf(name) >= 0;
      var nameCell = function (span) {
        var td = el('td', 'metric-cell');
        td.rowSpan = span;
        var n = el('div', 'metric-name', name);
        td.appendChild(n);
        var tags = el('div', 'metric-tags');
        if (isGuard) tags.appendChild(el('span', 'tag tag-guard', 'guardrail'));
        if (a && a.metric) tags.appendChild(el('span', 'tag', a.metric));
        if (a && a.cuped && isNum(a.cuped.variance_reduction)) {
          var cu = el('span', 'tag tag-cuped', 'CUPED −' + fmtPct(a.cuped.variance_reduction, 0));
          cu.title = 'variance reduction from the pre-exposure covariate';
          tags.appendChild(cu);
        }
        td.appendChild(tags);
        return td;
      };
      if (!a || a.error) {
        var tr = el('tr');
        tr.dataset.metric = name;
        var td = el('td', 'rule-err', 'could not be analysed: ' + ((a && a.error && (a.error.message || a.error.code)) || 'no data'));
        td.colSpan = 8;
        body.appendChild(append(tr, nameCell(1), td));
        return;
      }
      var prop = a.metric === 'proportion';
      var alpha = isNum(a.alpha) ? a.alpha : 0.05;
      var ctl = arr(a.arms).find(function (x) { return x.is_control; }) || {};
      var value = function (x) {
        if (prop) return fmtPct(x.rate);
        return fmtNum(isNum(x.adjusted_mean) ? x.adjusted_mean : x.mean);
      };
      var others = arr(a.arms).filter(function (x) { return !x.is_control; });
      if (!others.length) others = [{ name: DASH }];
      others.forEach(function (x, i) {
        var tr = el('tr', isGuard ? 'guard-row' : '');
        tr.dataset.metric = name;
        tr.dataset.arm = String(x.name);
        if (i === 0) tr.appendChild(nameCell(others.length));
        var v = x.vs_control || {};
        var verdict = 'no difference yet', vcls = 'muted';
        var seqSig = isNum(v.sequential_p_value) && v.sequential_p_value < alpha;
        if (!isNum(v.p_value) && !isNum(v.sequential_p_value)) { verdict = 'undefined'; vcls = 'faint'; }
        else if (seqSig && isCi(v.ci) && v.ci[1] < 0) { verdict = isGuard ? 'worse — guardrail hit' : 'worse'; vcls = 'bad'; }
        else if (seqSig && isCi(v.ci) && v.ci[0] > 0) { verdict = 'better'; vcls = 'good'; }
        else if (isGuard) { verdict = 'holding'; vcls = 'muted'; }
        var vtd = el('td');
        vtd.appendChild(el('span', 'verdict verdict-' + vcls, verdict));
        append(tr,
          el('td', 'mono', x.name),
          cell(value(ctl), prop ? ciText(ctl.rate_ci, function (q) { return fmtPct(q); }) : ciText(isCi(ctl.adjusted_mean_ci) ? ctl.adjusted_mean_ci : ctl.mean_ci, fmtNum)),
          cell(value(x), prop ? ciText(x.rate_ci, function (q) { return fmtPct(q); }) : ciText(isCi(x.adjusted_mean_ci) ? x.adjusted_mean_ci : x.mean_ci, fmtNum)),
          cell(prop ? fmtPp(v.difference) : fmtSigned(v.difference), ciText(v.ci, prop ? function (q) { return (q * 100).toFixed(1).replace('-', '−'); } : function (q) { return fmtSigned(q); })),
          cell(fmtSignedPct(v.relative_uplift), ciText(v.relative_ci, function (q) { return fmtSignedPct(q, 0); })),
          cell(fmtP(v.p_value), '', isNum(v.p_value) && v.p_value < alpha ? 'sig' : ''),
          cell(fmtP(v.sequential_p_value), '', seqSig ? 'sig strong' : ''),
          vtd);
        body.appendChild(tr);
      });
    });
  }

  function renderSegmentsBreakdown(r, primary, control) {
    var box = $('exp-segments');
    clear(box);
    var by = obj(r.primary_by_segment);
    var segs = Object.keys(by).sort();
    if (!segs.length) {
      box.appendChild(el('div', 'empty-note', 'No per-segment results yet: users are counted in the segment they had when exposed, once segments have been computed.'));
      return;
    }
    var t = el('table', 'table mini seg-break');
    var thead = el('thead');
    var hr = el('tr');
    ['Segment', 'Arm', 'n', 'Value', 'Uplift', 'Relative', 'Always-valid p'].forEach(function (h, i) { hr.appendChild(el('th', i >= 2 ? 'num' : null, h)); });
    thead.appendChild(hr);
    var tb = el('tbody');
    segs.forEach(function (s) {
      var a = by[s];
      if (!a || a.error) {
        var tr = el('tr');
        var td = el('td', 'muted', s + ': ' + ((a && a.error && a.error.message) || 'no analysis'));
        td.colSpan = 7;
        tb.appendChild(append(tr, td));
        return;
      }
      var prop = a.metric === 'proportion';
      var alpha = isNum(a.alpha) ? a.alpha : 0.05;
      var arms = arr(a.arms);
      arms.forEach(function (x, i) {
        var tr = el('tr', i === arms.length - 1 ? 'seg-last' : '');
        tr.dataset.segment = s;
        if (i === 0) { var sc = el('td', 'metric-name', s); sc.rowSpan = arms.length; tr.appendChild(sc); }
        var v = x.vs_control;
        append(tr,
          append(el('td', 'mono'), x.name, x.is_control ? el('span', 'tag', 'control') : null),
          el('td', 'num', D.fmt.int(x.n)),
          el('td', 'num', prop ? fmtPct(x.rate) : fmtNum(x.mean)),
          el('td', 'num', v ? (prop ? fmtPp(v.difference) : fmtSigned(v.difference)) : DASH),
          el('td', 'num', v ? fmtSignedPct(v.relative_uplift) : DASH),
          el('td', 'num' + (v && isNum(v.sequential_p_value) && v.sequential_p_value < alpha ? ' sig strong' : ''), v ? fmtP(v.sequential_p_value) : DASH));
        tb.appendChild(tr);
      });
    });
    box.appendChild(append(t, thead, tb));
  }

  function renderWarnings(r) {
    var box = $('exp-warnings');
    clear(box);
    var seen = {};
    var items = [];
    Object.keys(obj(r.metrics)).forEach(function (m) {
      var a = r.metrics[m];
      if (!a || typeof a !== 'object') return;
      if (a.error) { items.push({ metric: m, code: a.error.code || 'error', message: a.error.message || 'could not be analysed', arm: null, err: true }); return; }
      arr(a.warnings).forEach(function (w) {
        var k = m + '|' + w.code + '|' + w.message + '|' + w.arm;
        if (seen[k]) return;
        seen[k] = 1;
        items.push({ metric: m, code: w.code, message: w.message, arm: w.arm });
      });
    });
    if (r.srm_warning) items.unshift({ metric: r.primary_metric, code: 'srm', message: 'sample-ratio mismatch (p = ' + fmtP(r.srm_p_value) + ')', arm: null, err: true });
    $('exp-warn-count').textContent = items.length ? '· ' + items.length : '';
    if (!items.length) { box.appendChild(el('div', 'empty-note', 'No warnings.')); return; }
    // One entry per (metric, arm), its messages below.
    var groups = [], byKey = {};
    items.forEach(function (w) {
      var k = w.metric + '|' + (w.arm || '');
      if (!byKey[k]) { byKey[k] = { metric: w.metric, arm: w.arm, err: false, items: [] }; groups.push(byKey[k]); }
      byKey[k].items.push(w);
      if (w.err) byKey[k].err = true;
    });
    var ul = el('ul', 'warn-list');
    groups.forEach(function (g) {
      var li = el('li', g.err ? 'err' : '');
      li.dataset.metric = String(g.metric || '');
      li.appendChild(el('div', 'mono warn-metric', (g.metric || '') + (g.arm ? ' · ' + g.arm : '')));
      g.items.forEach(function (w) {
        var line = el('div', 'warn-line');
        line.dataset.code = String(w.code || '');
        append(line, el('span', 'warn-code', w.code || 'warning'), el('span', 'warn-msg', w.message || ''));
        li.appendChild(line);
      });
      ul.appendChild(li);
    });
    box.appendChild(ul);
  }

  function initExperiments() {
    document.querySelectorAll('[data-uplift]').forEach(function (b) {
      b.addEventListener('click', function () {
        E.upliftMode = b.dataset.uplift;
        document.querySelectorAll('[data-uplift]').forEach(function (x) { x.classList.toggle('active', x === b); });
        if (E.res) {
          var pa = analysisOf(E.res, E.res.primary_metric);
          var control = String(E.res.control || '');
          var order = arr(E.res.arms).map(function (a) { return String(a.arm); }).filter(function (n) { return n !== control; });
          renderUplift(pa, function (n) { return armColor(n, control, order); });
        }
      });
    });
    document.querySelectorAll('[data-pscale]').forEach(function (b) {
      b.addEventListener('click', function () {
        E.pscale = b.dataset.pscale;
        document.querySelectorAll('[data-pscale]').forEach(function (x) { x.classList.toggle('active', x === b); });
        if (E.res) renderResults(E.res);
      });
    });
    $('exp-live').addEventListener('change', function () { if ($('exp-live').checked && E.active) expTick(); });
    D.register('experiments', { show: expShow, hide: expHide, reset: expReset });
  }

  // ================================================================= Segments
  var G = {
    active: false,
    timer: null,
    busy: false,
    seq: 0,
    data: null,
    pollUntil: 0,
    pollFrom: null,
    scatter: null,
    sizes: null,
    bic: null,
    profileSig: ''
  };

  function segColor(id) {
    if (id === -1 || id === null || id === undefined) return NOISE_COLOR;
    return PALETTE[num(id) % PALETTE.length];
  }

  function segShow() {
    G.active = true;
    if (!G.scatter) {
      G.scatter = new Chart($('seg-scatter'), 340);
      G.sizes = new Chart($('seg-sizes'), 200);
      G.bic = new Chart($('seg-bic'), 200);
    }
    segTick();
  }
  function segHide() { G.active = false; clearTimeout(G.timer); }
  function segReset() {
    segHide();
    G.data = null; G.seq++; G.pollUntil = 0; G.pollFrom = null; G.profileSig = '';
    [G.scatter, G.sizes, G.bic].forEach(function (c) { if (c) c.destroy(); });
    clear($('seg-cards'));
    clear($('seg-profile'));
    $('seg-refresh').disabled = false;
    $('seg-status').textContent = '';
  }
  function segSchedule() {
    clearTimeout(G.timer);
    if (!G.active) return;
    var polling = G.pollUntil > Date.now();
    G.timer = setTimeout(segTick, polling ? SEG_POLL_MS : SEG_EVERY_MS);
  }

  function segTick() {
    if (!G.active) return;
    if (G.busy) { segSchedule(); return; }
    G.busy = true;
    var seq = G.seq;
    D.api('/v1/segments').then(function (res) {
      if (seq !== G.seq) return;
      if (res.status === 200 && res.body) {
        var d = res.body;
        if (G.pollUntil) {
          if (d.computed_at_ms !== G.pollFrom || (d.last_error && d.last_error !== (G.data && G.data.last_error))) {
            G.pollUntil = 0;
            $('seg-refresh').disabled = false;
            $('seg-status').textContent = d.last_error ? 'Re-clustering failed.' : 'Re-clustered ' + D.fmt.time(num(d.computed_at_ms) || Date.now()) + '.';
          } else if (Date.now() > G.pollUntil) {
            G.pollUntil = 0;
            $('seg-refresh').disabled = false;
            $('seg-status').textContent = 'No new run yet (too few users?).';
          }
        }
        G.data = d;
        renderSegments(d);
      } else {
        showSegError('Could not read segments (' + res.status + '): ' + D.errMessage(res, 'unexpected answer'));
      }
    }, function () {
      if (seq === G.seq) showSegError('Cannot reach the server.');
    }).then(function () {
      G.busy = false;
      if (seq === G.seq) segSchedule();
    });
  }

  function showSegError(text) {
    var b = $('seg-error');
    b.textContent = text;
    b.hidden = false;
  }

  function recluster() {
    var btn = $('seg-refresh');
    btn.disabled = true;
    $('seg-status').textContent = 'Re-clustering…';
    G.pollFrom = G.data ? G.data.computed_at_ms : null;
    D.api('/v1/segments/refresh', 'POST').then(function (res) {
      if (res.status === 202 || res.status === 200) {
        G.pollUntil = Date.now() + SEG_POLL_MAX_MS;
        clearTimeout(G.timer);
        G.timer = setTimeout(segTick, SEG_POLL_MS);
      } else {
        btn.disabled = false;
        $('seg-status').textContent = '';
        showSegError('Re-cluster refused (' + res.status + '): ' + D.errMessage(res, 'unexpected answer'));
      }
    }, function () {
      btn.disabled = false;
      $('seg-status').textContent = '';
      showSegError('Cannot reach the server.');
    });
  }

  function renderSegments(d) {
    var segs = arr(d.segments);
    var err = $('seg-error');
    err.hidden = !d.last_error;
    if (d.last_error) err.textContent = 'Last run failed: ' + (typeof d.last_error === 'string' ? d.last_error : JSON.stringify(d.last_error));
    var sub = [];
    if (d.algo) sub.push(d.algo);
    sub.push(D.fmt.int(num(d.users)) + ' users');
    if (segs.length) sub.push(segs.length + ' segment' + (segs.length === 1 ? '' : 's'));
    if (num(d.noise) > 0) sub.push(D.fmt.int(num(d.noise)) + ' noise');
    if (arr(d.features).length) sub.push(arr(d.features).length + ' features');
    if (d.computed_at_ms) sub.push('computed ' + D.fmt.time(d.computed_at_ms) + ' (' + D.fmt.ago(d.computed_at_ms) + ')');
    $('seg-sub').textContent = '· ' + sub.join(' · ');
    var note = $('seg-note');
    note.textContent = d.note || '';
    note.hidden = !d.note;

    renderCards(d, segs);
    renderScatter(d, segs);
    renderProfile(d, segs);
    renderSizes(d);
    renderBic(d);
  }

  function renderCards(d, segs) {
    var box = $('seg-cards');
    clear(box);
    if (!segs.length) {
      var empty = el('div', 'panel seg-empty');
      empty.appendChild(el('div', 'empty-note', d.note || 'No segments yet.'));
      box.appendChild(empty);
      return;
    }
    var maxShare = segs.reduce(function (m, s) { return Math.max(m, num(s.share)); }, 0) || 1;
    segs.forEach(function (s) {
      var card = el('div', 'seg-card');
      card.dataset.segment = String(s.id);
      card.dataset.size = String(num(s.size));
      card.style.setProperty('--seg-color', segColor(s.id));
      var top = el('div', 'seg-card-top');
      var nm = el('div', 'seg-card-name', s.name || ('segment ' + s.id));
      nm.title = String(s.name || '');
      append(top, nm, el('span', 'seg-card-id mono', '#' + s.id));
      var fig = el('div', 'seg-card-fig');
      append(fig, el('span', 'seg-card-size', D.fmt.int(num(s.size))), el('span', 'seg-card-unit', 'users'), el('span', 'seg-card-share', fmtPct(num(s.share))));
      var bar = el('div', 'seg-card-bar');
      var fill = el('div', 'seg-card-fill');
      fill.style.width = (num(s.share) / maxShare * 100).toFixed(1) + '%';
      bar.appendChild(fill);
      var desc = String(s.description || '');
      // Descriptions may repeat the name before a colon; keep the traits.
      var nmText = String(s.name || '');
      if (nmText && desc.indexOf(nmText + ':') === 0) desc = desc.slice(nmText.length + 1).trim();
      var ds = el('div', 'seg-card-desc', desc);
      ds.title = String(s.description || '');
      // Top traits (largest |z|).
      var traits = arr(s.profile).filter(function (p) { return isNum(p.z) && Math.abs(p.z) >= 0.5; })
        .sort(function (a, b) { return Math.abs(b.z) - Math.abs(a.z); }).slice(0, 3);
      var tr = el('div', 'seg-card-traits');
      traits.forEach(function (p) {
        var t = el('span', 'trait ' + (p.z > 0 ? 'up' : 'down'), (p.z > 0 ? '▲ ' : '▼ ') + p.feature);
        t.title = 'median ' + fmtNum(p.median) + ', z ' + fmtSigned(p.z, 2);
        tr.appendChild(t);
      });
      append(card, top, fig, bar, ds, traits.length ? tr : null);
      box.appendChild(card);
    });
    if (num(d.noise) > 0) {
      var nc = el('div', 'seg-card seg-card-noise');
      nc.dataset.segment = '-1';
      nc.style.setProperty('--seg-color', NOISE_COLOR);
      append(nc, append(el('div', 'seg-card-top'), el('div', 'seg-card-name', 'noise')),
        append(el('div', 'seg-card-fig'), el('span', 'seg-card-size', D.fmt.int(num(d.noise))), el('span', 'seg-card-unit', 'users'),
          el('span', 'seg-card-share', num(d.users) > 0 ? fmtPct(num(d.noise) / num(d.users)) : DASH)),
        el('div', 'seg-card-desc', 'Not close enough to any segment (DBSCAN noise).'));
      box.appendChild(nc);
    }
  }

  // Draws each series' points as filled circles (uPlot mode 2: data [null, [xs, ys], …]).
  function scatterPaths(u, si) {
    var d = u.data[si];
    var p = new Path2D();
    if (!d || !d[0]) return { stroke: p, fill: p };
    var xs = d[0], ys = d[1];
    var r = 3.2 * (window.devicePixelRatio || 1);
    for (var i = 0; i < xs.length; i++) {
      if (!isNum(xs[i]) || !isNum(ys[i])) continue;
      var cx = u.valToPos(xs[i], 'x', true), cy = u.valToPos(ys[i], 'y', true);
      p.moveTo(cx + r, cy);
      p.arc(cx, cy, r, 0, 2 * Math.PI);
    }
    return { stroke: p, fill: p };
  }

  function renderScatter(d, segs) {
    var pts = arr(d.projection);
    if (!pts.length) {
      legend($('scatter-legend'), []);
      G.scatter.note(segs.length ? 'No projection in this run.' : 'The projection appears after the first clustering run.');
      return;
    }
    var ids = segs.map(function (s) { return num(s.id); });
    var names = {};
    segs.forEach(function (s) { names[num(s.id)] = s.name || ('segment ' + s.id); });
    var groups = {};
    var minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    pts.forEach(function (p) {
      if (!Array.isArray(p) || !isNum(p[0]) || !isNum(p[1])) return;
      var id = isNum(p[2]) ? p[2] : -1;
      if (id !== -1 && ids.indexOf(id) < 0) ids.push(id);
      (groups[id] || (groups[id] = [[], []]))[0].push(p[0]);
      groups[id][1].push(p[1]);
      minX = Math.min(minX, p[0]); maxX = Math.max(maxX, p[0]);
      minY = Math.min(minY, p[1]); maxY = Math.max(maxY, p[1]);
    });
    var order = ids.slice();
    if (groups[-1]) order.unshift(-1); // noise drawn first, underneath
    var data = [null];
    order.forEach(function (id) { data.push(groups[id] || [[], []]); });
    legend($('scatter-legend'), order.map(function (id) {
      return { label: id === -1 ? 'noise' : names[id] || ('segment ' + id), color: segColor(id), dot: true, value: D.fmt.int((groups[id] || [[]])[0].length) };
    }));
    var padX = (maxX - minX || 1) * 0.06, padY = (maxY - minY || 1) * 0.08;
    var xr = [minX - padX, maxX + padX], yr = [minY - padY, maxY + padY];
    var sig = order.join(',') + '|' + xr.join(',') + '|' + yr.join(',');
    G.scatter.set(sig, function () {
      var series = [null];
      order.forEach(function (id) {
        var c = segColor(id);
        series.push({
          label: id === -1 ? 'noise' : names[id],
          stroke: hexA(c, id === -1 ? 0.5 : 0.95),
          fill: hexA(c, id === -1 ? 0.25 : 0.55),
          width: 1,
          paths: scatterPaths,
          points: { show: false }
        });
      });
      return {
        mode: 2,
        padding: [10, 14, 0, 0],
        legend: { show: false },
        cursor: { show: false },
        scales: { x: { time: false, range: function () { return xr; } }, y: { range: function () { return yr; } } },
        axes: [
          axis({ label: 'PC 1', labelSize: 18, labelFont: '11px system-ui, sans-serif', values: function (u, v) { return v.map(function (x) { return fmtNum(x, 2); }); } }),
          axis({ label: 'PC 2', labelSize: 18, labelFont: '11px system-ui, sans-serif', size: 44, values: function (u, v) { return v.map(function (x) { return fmtNum(x, 2); }); } })
        ],
        series: series
      };
    }, data);
  }

  // z-scores as a diverging heat table: rows = features, columns = segments.
  function zColor(z) {
    if (!isNum(z) || z === 0) return 'transparent';
    var a = Math.min(1, Math.abs(z) / 2) * 0.75 + 0.08;
    return z > 0 ? 'rgba(240,136,62,' + a.toFixed(3) + ')' : 'rgba(76,154,255,' + a.toFixed(3) + ')';
  }

  function renderProfile(d, segs) {
    var box = $('seg-profile');
    var sig = JSON.stringify(segs.map(function (s) { return [s.id, s.name, s.profile]; }));
    if (sig === G.profileSig) return;
    G.profileSig = sig;
    clear(box);
    if (!segs.length) { box.appendChild(el('div', 'empty-note', 'Profiles appear after the first clustering run.')); return; }
    var features = arr(d.features).slice();
    segs.forEach(function (s) { arr(s.profile).forEach(function (p) { if (features.indexOf(p.feature) < 0) features.push(p.feature); }); });
    var t = el('table', 'table heat');
    var thead = el('thead');
    var hr = el('tr');
    hr.appendChild(el('th', null, 'Feature'));
    segs.forEach(function (s) {
      var th = el('th', 'heat-col');
      var sw = el('span', 'sw-arm');
      sw.style.background = segColor(s.id);
      append(th, sw, el('span', null, s.name || ('segment ' + s.id)));
      th.title = String(s.name || '');
      hr.appendChild(th);
    });
    thead.appendChild(hr);
    var tb = el('tbody');
    var prof = segs.map(function (s) {
      var m = {};
      arr(s.profile).forEach(function (p) { m[p.feature] = p; });
      return m;
    });
    features.forEach(function (f) {
      var tr = el('tr');
      var allFlat = prof.every(function (m) { return !m[f] || !isNum(m[f].z) || Math.abs(m[f].z) < 0.05; });
      if (allFlat) tr.className = 'flat';
      tr.appendChild(el('td', 'mono heat-feature', f));
      prof.forEach(function (m) {
        var p = m[f];
        var td = el('td', 'heat-cell');
        if (!p) { td.textContent = DASH; tr.appendChild(td); return; }
        td.style.background = zColor(p.z);
        var z = el('span', 'heat-z', isNum(p.z) ? fmtSigned(Number(p.z.toFixed(1)), 2) : DASH);
        var med = el('span', 'heat-med', fmtNum(p.median));
        append(td, z, med);
        td.title = f + ': median ' + fmtNum(p.median, 4) + ', z ' + (isNum(p.z) ? fmtSigned(p.z, 3) : DASH);
        tr.appendChild(td);
      });
      tb.appendChild(tr);
    });
    box.appendChild(append(t, thead, tb));
  }

  // Segment sizes at each clustering run: stacked bars, one bar per run (the runs are discrete
  // and may be hours apart, so the x axis is the run, labelled with its time).
  function renderSizes(d) {
    var hist = arr(d.history).filter(function (h) { return h && isNum(h.ts); }).sort(function (a, b) { return a.ts - b.ts; });
    hist = hist.slice(-40);
    if (!hist.length) {
      legend($('sizes-legend'), []);
      G.sizes.note('Sizes are recorded at every clustering run.');
      return;
    }
    var ids = [], names = {};
    hist.forEach(function (h) {
      arr(h.sizes).forEach(function (s) {
        var id = num(s.id);
        if (ids.indexOf(id) < 0) ids.push(id);
        names[id] = s.name || ('segment ' + id);
      });
    });
    ids.sort(function (a, b) { return a - b; });
    var xs = hist.map(function (h, i) { return i; });
    var times = hist.map(function (h) { return h.ts; });
    // cum[k][j]: sizes of segments ids[0..k] at run j.
    var cum = [];
    var acc = xs.map(function () { return 0; });
    ids.forEach(function (id) {
      acc = hist.map(function (h, j) {
        var s = arr(h.sizes).find(function (x) { return num(x.id) === id; });
        return acc[j] + (s ? num(s.size) : 0);
      });
      cum.push(acc);
    });
    // Drawn tallest first, so each smaller stack covers the bottom of the previous one.
    var data = [xs];
    for (var k = ids.length - 1; k >= 0; k--) data.push(cum[k]);
    var total = cum.length ? Math.max.apply(null, cum[cum.length - 1]) : 0;
    var last = hist[hist.length - 1];
    var lastIds = arr(last.sizes).map(function (x) { return num(x.id); });
    var items = arr(last.sizes).map(function (x) {
      return { label: names[num(x.id)], color: segColor(num(x.id)), dot: true, value: D.fmt.int(num(x.size)) };
    });
    var gone = ids.filter(function (id) { return lastIds.indexOf(id) < 0; }).length;
    legend($('sizes-legend'), items);
    if (gone) $('sizes-legend').appendChild(el('span', 'muted', '+ ' + gone + ' earlier segment' + (gone === 1 ? '' : 's')));
    G.sizes.set('bars|' + ids.join(',') + '|' + xs.length, function () {
      var bars = window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.55, 56], align: 0 }) : undefined;
      var series = [{}];
      for (var k = ids.length - 1; k >= 0; k--) {
        series.push({ label: names[ids[k]], fill: segColor(ids[k]), stroke: C.border, width: 1, paths: bars, points: { show: false } });
      }
      return {
        padding: [10, 12, 0, 0],
        legend: { show: false },
        cursor: { show: false },
        scales: {
          x: { time: false, range: function () { return [-0.5, Math.max(xs.length - 0.5, 2.5)]; } },
          y: { range: function () { return [0, Math.max(1, total * 1.15)]; } }
        },
        axes: [
          axis({
            splits: function () { var step = Math.max(1, Math.ceil(xs.length / 6)); return xs.filter(function (x) { return (xs.length - 1 - x) % step === 0; }); },
            values: function (u, vals) { return vals.map(function (v) { return times[v] ? D.fmt.time(times[v]) : ''; }); },
            grid: { show: false }
          }),
          axis({ size: 44, values: function (u, vals) { return vals.map(function (v) { return D.fmt.compact(v); }); } })
        ],
        series: series
      };
    }, data);
  }

  function renderBic(d) {
    var bic = arr(d.bic).filter(function (p) { return Array.isArray(p) && isNum(p[0]) && isNum(p[1]); })
      .sort(function (a, b) { return a[0] - b[0]; });
    if (bic.length < 2) {
      G.bic.note(d.computed_at_ms ? 'No BIC curve: the number of segments is fixed (k) or the algorithm does not use BIC.' : 'The BIC curve appears after the first run when k is chosen automatically.');
      return;
    }
    var best = bic.reduce(function (b, p) { return p[1] < b[1] ? p : b; }, bic[0]);
    var xs = bic.map(function (p) { return p[0]; });
    var data = [xs, bic.map(function (p) { return p[1]; }), bic.map(function (p) { return p[0] === best[0] ? p[1] : null; })];
    G.bic.set('bic|' + xs.join(','), function () {
      return {
        padding: [10, 12, 0, 0],
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { size: 6 } },
        scales: { x: { time: false, range: function (u, mn, mx) { return [mn - 0.3, mx + 0.3]; } } },
        axes: [
          axis({ label: 'k (segments)', labelSize: 18, labelFont: '11px system-ui, sans-serif', incrs: [1], values: function (u, v) { return v.map(function (x) { return Number.isInteger(x) ? String(x) : ''; }); } }),
          axis({ size: 64, values: function (u, v) { return v.map(function (x) { return D.fmt.compact(x); }); } })
        ],
        series: [
          {},
          { label: 'BIC', stroke: C.accent, width: 1.8, points: { show: true, size: 6, fill: C.accent } },
          { label: 'chosen', stroke: GOOD, width: 0, paths: function () { return null; }, points: { show: true, size: 11, fill: GOOD, stroke: GOOD } }
        ]
      };
    }, data);
  }

  function initSegments() {
    $('seg-refresh').addEventListener('click', recluster);
    D.register('segments', { show: segShow, hide: segHide, reset: segReset });
  }

  initExperiments();
  initSegments();
})();

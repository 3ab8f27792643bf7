// trimtab operator dashboard: the Rules lab page. Plain JS, no build step, no editor library:
// a textarea with a line-number gutter. Everything goes through the admin API (app.js sends the
// token); server data is only ever inserted as text.
//
//  - As you type (debounced): POST /v1/rules/check → the problems list and markers in the
//    gutter (errors red, reads of fields that do not exist amber); clicking one puts the caret
//    there.
//  - "start from": GET /v1/rules (the installed rules) and GET /v1/rules/{name} (its source);
//    the diff against the installed version of the rule named in "name" updates as you type.
//  - Dry run: POST /v1/rules/dry-run with a user id or a key (the datalist offers the users of
//    the live tail).
//  - Backtest: POST /v1/rules/backtest; a 202 is polled (GET /v1/rules/backtest/{id}) with its
//    progress and can be cancelled; the result as figures, bars per variant and the histogram
//    of when it fires.
//  - Install: PUT /v1/rules/{name} with the source (compiled first by the server).
(function () {
  'use strict';

  var D = window.trimtabDashboard;
  if (!D) { console.error('lab.js: app.js did not load'); return; }
  var $ = D.dom.$, el = D.dom.el, append = D.dom.append, clear = D.dom.clear;
  var arr = D.val.arr, obj = D.val.obj;
  var CHECK_MS = 300;
  var S = { timer: null, diffTimer: null, seq: 0, installed: {}, poll: null, job: null, problems: [] };

  function source() { return $('lab-source').value; }
  function name() { return $('lab-name').value.trim(); }

  // ---------------------------------------------------------------- editor
  function renderGutter() {
    var lines = source().split('\n').length;
    var marks = {};
    S.problems.forEach(function (p) {
      if (p.line) marks[p.line] = marks[p.line] === 'err' ? 'err' : p.kind;
    });
    var g = $('lab-gutter');
    clear(g);
    for (var i = 1; i <= lines; i++) {
      var s = el('span', marks[i] || null, String(i));
      if (marks[i]) s.title = marks[i] === 'err' ? 'error on this line' : 'warning on this line';
      g.appendChild(s);
      if (i < lines) g.appendChild(document.createTextNode('\n'));
    }
    g.scrollTop = $('lab-source').scrollTop;
  }

  function caretTo(line, column) {
    var ta = $('lab-source');
    var lines = source().split('\n');
    var at = 0;
    for (var i = 0; i < Math.min(line - 1, lines.length); i++) at += lines[i].length + 1;
    at += Math.max(0, (column || 1) - 1);
    ta.focus();
    ta.setSelectionRange(at, at);
  }

  function renderProblems(report) {
    var list = $('lab-problems');
    clear(list);
    S.problems = [];
    arr(report.errors).forEach(function (e) { S.problems.push({ kind: 'err', line: e.line, column: e.column, message: e.message }); });
    arr(report.warnings).forEach(function (w) { S.problems.push({ kind: 'warn', line: w.line, column: w.column, message: w.message }); });
    var status = $('lab-status');
    var errors = arr(report.errors).length, warnings = arr(report.warnings).length;
    if (errors) {
      status.className = 'pill pill-err';
      status.textContent = errors + ' error' + (errors === 1 ? '' : 's');
    } else {
      status.className = 'pill pill-ok';
      status.textContent = 'compiles' + (warnings ? ' · ' + warnings + ' warning' + (warnings === 1 ? '' : 's') : '');
    }
    S.problems.forEach(function (p) {
      var where = p.line ? 'line ' + p.line + (p.column ? ':' + p.column : '') : '';
      var li = el('li', p.kind, (p.kind === 'err' ? 'error ' : 'warning ') + (where ? where + ' — ' : '') + p.message);
      li.dataset.line = p.line || '';
      li.addEventListener('click', function () { if (p.line) caretTo(p.line, p.column); });
      list.appendChild(li);
    });
    if (!S.problems.length) list.appendChild(el('li', 'ok', arr(report.on).length ? 'No problems · runs on ' + report.on.join(', ') : 'No problems'));
    renderGutter();
  }

  function check() {
    var seq = ++S.seq;
    var src = source();
    if (!src.trim()) { renderProblems({ errors: [{ message: 'the rule is empty' }] }); return; }
    D.send('/v1/rules/check', 'POST', JSON.stringify({ source: src })).then(function (res) {
      if (seq !== S.seq) return; // a newer check is on its way
      if (res.status === 200) renderProblems(obj(res.body));
      else renderProblems({ errors: [{ message: D.errMessage(res, 'check failed (' + res.status + ')') }] });
    }).catch(function () {});
  }

  function edited() {
    renderGutter();
    clearTimeout(S.timer);
    S.timer = setTimeout(function () { check(); renderDiff(); }, CHECK_MS);
  }

  // ---------------------------------------------------------------- installed rules and diff
  function loadInstalled() {
    D.api('/v1/rules').then(function (res) {
      if (res.status !== 200) return;
      var sel = $('lab-base');
      var keep = sel.value;
      while (sel.options.length > 1) sel.remove(1);
      arr(obj(res.body).rules).forEach(function (r) {
        var o = el('option', null, r.name);
        o.value = r.name;
        sel.appendChild(o);
      });
      sel.value = keep;
    });
  }

  function fetchSource(rule) {
    if (S.installed[rule] !== undefined) return Promise.resolve(S.installed[rule]);
    return D.api('/v1/rules/' + encodeURIComponent(rule)).then(function (res) {
      S.installed[rule] = res.status === 200 && typeof obj(res.body).source === 'string' ? res.body.source : null;
      return S.installed[rule];
    });
  }

  // A line diff (longest common subsequence; rules are short).
  function diffLines(a, b) {
    var n = a.length, m = b.length, i, j;
    var L = [];
    for (i = 0; i <= n; i++) { L.push(new Array(m + 1).fill(0)); }
    for (i = n - 1; i >= 0; i--) for (j = m - 1; j >= 0; j--) L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    var out = [];
    i = 0; j = 0;
    while (i < n && j < m) {
      if (a[i] === b[j]) { out.push(['same', a[i]]); i++; j++; }
      else if (L[i + 1][j] >= L[i][j + 1]) { out.push(['del', a[i]]); i++; }
      else { out.push(['add', b[j]]); j++; }
    }
    for (; i < n; i++) out.push(['del', a[i]]);
    for (; j < m; j++) out.push(['add', b[j]]);
    return out;
  }

  function renderDiff() {
    var box = $('lab-diff');
    var rule = name();
    fetchSource(rule).then(function (installed) {
      if (rule !== name()) return; // renamed meanwhile: a newer diff is on its way
      clear(box);
      if (installed === null) {
        $('lab-diff-sub').textContent = '· no installed rule named ' + rule;
        return;
      }
      var d = diffLines(installed.split('\n'), source().split('\n'));
      var changed = d.filter(function (x) { return x[0] !== 'same'; }).length;
      $('lab-diff-sub').textContent = changed ? '· ' + changed + ' changed line' + (changed === 1 ? '' : 's') : '· identical';
      d.forEach(function (x) {
        box.appendChild(el('span', x[0], (x[0] === 'add' ? '+ ' : x[0] === 'del' ? '- ' : '  ') + x[1]));
      });
    });
  }

  function startFrom() {
    var rule = $('lab-base').value;
    if (!rule) return;
    fetchSource(rule).then(function (src) {
      if (src === null) return;
      $('lab-source').value = src;
      $('lab-name').value = rule;
      edited();
    });
  }

  // ---------------------------------------------------------------- install
  function install() {
    var rule = name();
    var out = $('lab-install-result');
    out.textContent = 'Installing…';
    D.send('/v1/rules/' + encodeURIComponent(rule), 'PUT', source(), 'text/plain').then(function (res) {
      if (res.status === 200) {
        out.textContent = 'Installed ' + rule + '. It runs on the next event.';
        delete S.installed[rule];
        loadInstalled();
        renderDiff();
      } else {
        out.textContent = 'Not installed: ' + D.errMessage(res, 'error ' + res.status) + (res.body && res.body.error && res.body.error.path ? ' (' + res.body.error.path + ')' : '');
      }
    });
  }

  // ---------------------------------------------------------------- dry run
  function fillUsers() {
    var dl = $('lab-users');
    clear(dl);
    D.recentUsers().forEach(function (k) {
      var o = el('option');
      o.value = k;
      dl.appendChild(o);
    });
  }

  function dryRun() {
    var who = $('lab-user').value.trim();
    var box = $('lab-dry-result');
    clear(box);
    if (!who) { box.appendChild(el('div', 'empty-note', 'Name a user: their id, or a key from the live tail.')); return; }
    var body = { source: source() };
    if (/^[0-9a-f]{32}$/.test(who)) body.key = who; else body.user = who;
    box.appendChild(el('div', 'empty-note', 'Running…'));
    D.send('/v1/rules/dry-run', 'POST', JSON.stringify(body)).then(function (res) {
      clear(box);
      if (res.status !== 200) { box.appendChild(el('div', 'banner banner-err', D.errMessage(res, 'dry run failed (' + res.status + ')'))); return; }
      var r = res.body;
      box.appendChild(el('div', 'small', r.adjustments + ' adjustment' + (r.adjustments === 1 ? '' : 's') + ' · ' + r.errors + ' error' + (r.errors === 1 ? '' : 's') + ' · ' + r.operations + ' operations · the user has ' + r.user_events + ' events'));
      var t = el('table', 'table lab-dry-table');
      var head = el('tr');
      ['event', 'ran', 'would adjust', 'error', 'ops'].forEach(function (h) { head.appendChild(el('th', null, h)); });
      t.appendChild(head);
      arr(r.steps).forEach(function (s) {
        var tr = el('tr');
        var adj = arr(s.adjustments).map(function (a) { return a.slot + ' → ' + a.variant; }).join(', ');
        append(tr, el('td', null, s.type + (s.target ? ' ' + s.target : '')), el('td', null, s.ran ? 'yes' : 'no'),
          el('td', null, adj || '—'), el('td', s.error ? 'err' : null, s.error ? s.error.message : '—'), el('td', 'num', String(s.operations)));
        t.appendChild(tr);
      });
      box.appendChild(t);
    });
  }

  // ---------------------------------------------------------------- backtest
  function bars(rows) {
    var max = Math.max.apply(null, [1].concat(rows.map(function (r) { return r[1]; })));
    var g = el('div', 'lab-bars');
    rows.forEach(function (r) {
      var bar = el('div', 'lab-bar');
      bar.style.width = (100 * r[1] / max) + '%';
      var track = el('div');
      track.appendChild(bar);
      append(g, el('span', 'small', r[0]), track, el('span', 'small num', String(r[1])));
    });
    return g;
  }

  function secs(ms) { return ms === null || ms === undefined ? '∞' : (ms % 1000 === 0 ? ms / 1000 + ' s' : (ms / 1000).toFixed(1) + ' s'); }

  function renderBacktest(view) {
    var prog = obj(view.progress);
    var p = $('lab-bt-progress');
    var box = $('lab-bt-result');
    if (view.state === 'running') {
      p.textContent = 'Running… ' + (prog.users_total ? prog.users_done + ' of ' + prog.users_total + ' users replayed' : prog.records_scanned + ' of ' + prog.records_total + ' records read');
      return;
    }
    $('lab-cancel').hidden = true;
    $('lab-backtest').disabled = false;
    if (view.state === 'failed') { p.textContent = 'Failed: ' + view.error; return; }
    var r = obj(view.result);
    p.textContent = (view.state === 'cancelled' ? 'Cancelled · ' : 'Done · ') + r.events + ' events of ' + r.users + ' users in ' + r.elapsed_ms + ' ms' + (r.truncated ? ' (stopped at max events)' : '');
    clear(box);
    var k = el('div', 'lab-kpis');
    [['users it fires for', r.fired_users + ' of ' + r.users], ['sessions', r.fired_sessions + ' of ' + r.sessions], ['decisions', r.decisions],
      ['runs / failed', obj(r.rule_runs).runs + ' / ' + obj(r.rule_runs).failures]].forEach(function (x) {
      var d = el('div', 'small muted', x[0]);
      d.insertBefore(el('b', null, String(x[1])), d.firstChild);
      k.appendChild(d);
    });
    box.appendChild(k);
    if (obj(r.rule_runs).last_error) box.appendChild(el('div', 'banner banner-err', 'last error: ' + r.rule_runs.last_error.message));
    if (arr(r.by_variant).length) {
      box.appendChild(el('div', 'small muted', 'sessions per variant'));
      box.appendChild(bars(arr(r.by_variant).map(function (c) { return [c.slot + ' = ' + c.variant, c.sessions]; })));
      box.appendChild(el('div', 'small muted', 'first firing, from the session\u2019s first event'));
      var lower = 0;
      box.appendChild(bars(arr(r.time_to_fire).map(function (b) {
        var label = b.le_ms === null ? '≥ ' + secs(lower) : secs(lower) + ' – ' + secs(b.le_ms);
        lower = b.le_ms === null ? lower : b.le_ms;
        return [label, b.sessions];
      })));
    }
    arr(r.conflicts).forEach(function (c) {
      box.appendChild(el('div', 'banner', 'conflict: ' + c.rule + ' also decides ' + c.slot + ' in ' + c.sessions + ' of these sessions'));
    });
  }

  function pollJob() {
    if (!S.job) return;
    D.api('/v1/rules/backtest/' + S.job).then(function (res) {
      if (res.status !== 200) return;
      renderBacktest(res.body);
      if (res.body.state === 'running') S.poll = setTimeout(pollJob, 500);
    });
  }

  function backtest() {
    var body = { source: source(), name: name() || 'candidate' };
    var sample = parseFloat($('lab-sample').value);
    if (sample > 0 && sample < 1) body.sample = sample;
    $('lab-backtest').disabled = true;
    clear($('lab-bt-result'));
    $('lab-bt-progress').textContent = 'Starting…';
    D.send('/v1/rules/backtest', 'POST', JSON.stringify(body)).then(function (res) {
      if (res.status === 200 || res.status === 202) {
        S.job = res.body.id;
        renderBacktest(res.body);
        if (res.status === 202) { $('lab-cancel').hidden = false; S.poll = setTimeout(pollJob, 500); }
      } else {
        $('lab-backtest').disabled = false;
        $('lab-bt-progress').textContent = 'Not started: ' + D.errMessage(res, 'error ' + res.status);
      }
    });
  }

  function cancel() {
    if (S.job) D.send('/v1/rules/backtest/' + S.job, 'DELETE', '').then(function (res) { if (res.status === 200) renderBacktest(res.body); });
  }

  // ---------------------------------------------------------------- page
  var wired = false;
  function wire() {
    if (wired) return;
    wired = true;
    var ta = $('lab-source');
    ta.addEventListener('input', edited);
    ta.addEventListener('scroll', function () { $('lab-gutter').scrollTop = ta.scrollTop; });
    ta.addEventListener('keydown', function (ev) {
      if (ev.key === 'Tab' && !ev.shiftKey && !ev.ctrlKey && !ev.metaKey) {
        ev.preventDefault();
        var s = ta.selectionStart;
        ta.setRangeText('    ', s, ta.selectionEnd, 'end');
        edited();
      }
    });
    $('lab-name').addEventListener('input', function () { clearTimeout(S.diffTimer); S.diffTimer = setTimeout(renderDiff, CHECK_MS); });
    $('lab-base').addEventListener('change', startFrom);
    $('lab-install').addEventListener('click', install);
    $('lab-dry-run').addEventListener('click', dryRun);
    $('lab-user').addEventListener('focus', fillUsers);
    $('lab-backtest').addEventListener('click', backtest);
    $('lab-cancel').addEventListener('click', cancel);
  }

  D.register('lab', {
    show: function () { wire(); loadInstalled(); fillUsers(); edited(); },
    hide: function () { clearTimeout(S.poll); },
    reset: function () { clearTimeout(S.poll); S.installed = {}; S.job = null; }
  });
})();

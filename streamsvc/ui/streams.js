// streamsvc live streams dashboard (/ui/streams): reads the Server-Sent
// Events of GET /status/streams with fetch() (EventSource cannot send the
// Authorization header that protected metrics need), parses the frames
// itself, and shows a table of open streams and an SVG chart of the last
// five minutes. The latest snapshot is kept in window.streamsvcLast.
'use strict';

(() => {
  const {getToken, humanSize, wireTokenForm} = window.streamsvcUI;
  const FEED = '/status/streams';
  const RETRY_MS = 2000;
  const STALL_MS = 10000;       // the server sends every second: silence this long is a dead link
  const MAX_BUFFER = 1 << 20;   // a "frame" this long is not our feed
  const WINDOW_S = 300;         // the chart's span
  const MAX_POINTS = 300;

  const $ = (id) => document.getElementById(id);
  const statusLine = $('status');
  const totalRate = $('total-rate');
  const activeCount = $('active');
  const table = $('streams');
  const tbody = table && table.tBodies[0];
  const noStreams = $('no-streams');
  const chart = $('chart');
  const tokenForm = $('token-form');
  const tokenInput = $('token');
  const tokenForget = $('token-forget');
  const tokenStatus = $('token-status');
  if (!statusLine || !tbody || !chart) return;

  // ---------- helpers ----------

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children);
    return node;
  }

  // Rates in decimal megabytes a second, as labelled.
  function humanRate(bytesPerSecond) {
    const mb = (Number(bytesPerSecond) || 0) / 1e6;
    return `${mb.toFixed(mb < 10 ? 2 : 1)} MB/s`;
  }

  function errorText(status, body, statusText) {
    try {
      const data = JSON.parse(body);
      if (data && typeof data.error === 'string' && data.error) return `${data.error} (${status})`;
    } catch { /* not JSON */ }
    return `${status} ${statusText || 'error'}`;
  }

  // Percent-encoded paths are shown decoded where that is safe (decodeURI
  // keeps %2F and the like encoded); the raw path is the title.
  function readablePath(path) {
    try { return decodeURI(path); } catch { return path; }
  }

  function setStatus(state, text, detail) {
    statusLine.dataset.state = state;
    statusLine.textContent = text;
    statusLine.title = detail || '';
  }

  // ---------- token ----------

  function showTokenState() {
    if (!tokenStatus) return;
    const has = Boolean(getToken());
    tokenStatus.textContent = has ? 'token saved' : '';
    tokenStatus.classList.remove('error');
    if (tokenForget) tokenForget.disabled = !has;
    if (tokenInput) tokenInput.placeholder = has ? 'token saved' : 'token (if metrics are protected)';
  }

  wireTokenForm(tokenForm, tokenInput, tokenForget, () => { showTokenState(); connect(); });

  // ---------- the feed ----------

  let controller = null;   // the current connection's; a newer one supersedes it
  let retryTimer = null;

  async function connect() {
    clearTimeout(retryTimer);
    if (controller) controller.abort();
    const mine = new AbortController();
    controller = mine;
    let watchdog = null;
    const alive = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => mine.abort(), STALL_MS);
    };
    try {
      alive();
      const token = getToken();
      const response = await fetch(FEED, {
        headers: token ? {Authorization: 'Bearer ' + token} : {},
        cache: 'no-store',
        signal: mine.signal,
      });
      if (response.status === 401 || response.status === 403) {
        const body = await response.text().catch(() => '');
        const text = errorText(response.status, body, response.statusText);
        setStatus('refused', 'token refused', text);
        if (tokenStatus) {
          tokenStatus.textContent = `token refused: ${text}`;
          tokenStatus.classList.add('error');
        }
        // The same token would be refused again: wait for Save or Forget.
        return;
      }
      if (!response.ok || !response.body) {
        throw new Error(`${response.status} ${response.statusText}`);
      }
      setStatus('connected', 'connected');
      await readFrames(response.body.getReader(), alive);
      throw new Error('the stream ended');
    } catch (error) {
      if (mine !== controller) return;  // superseded (a token change): not ours to retry
      setStatus('reconnecting', 'reconnecting…', error && error.message);
      retryTimer = setTimeout(connect, RETRY_MS);
    } finally {
      clearTimeout(watchdog);
    }
  }

  // SSE framing: frames end with a blank line; lines end with \n, \r\n or \r.
  async function readFrames(reader, alive) {
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      alive();
      let text = buffer + decoder.decode(value, {stream: true});
      // A \r at the very end may be the first half of a \r\n: keep it raw.
      const carry = text.endsWith('\r') ? '\r' : '';
      if (carry) text = text.slice(0, -1);
      text = text.replace(/\r\n?/g, '\n');
      let end;
      while ((end = text.indexOf('\n\n')) >= 0) {
        frame(text.slice(0, end));
        text = text.slice(end + 2);
      }
      buffer = text + carry;
      if (buffer.length > MAX_BUFFER) throw new Error('unexpected data from the feed');
    }
  }

  function frame(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;  // comments keep the link warm
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length || (event !== 'streams' && event !== 'message')) return;
    let snapshot;
    try { snapshot = JSON.parse(data.join('\n')); } catch { return; }
    if (snapshot && Array.isArray(snapshot.streams)) show(snapshot);
  }

  // ---------- the table ----------

  const history = [];  // {t, rate, active}, oldest first

  function show(snapshot) {
    window.streamsvcLast = snapshot;  // for browser tests and the console
    const streams = snapshot.streams;
    const active = Number.isFinite(snapshot.active) ? snapshot.active : streams.length;
    totalRate.textContent = humanRate(snapshot.total_rate);
    activeCount.textContent = String(active);
    updateTable(streams);

    const t = Number(snapshot.time) || Date.now() / 1000;
    // A clock that went back (another worker, a restart): forget the "future".
    while (history.length && history[history.length - 1].t >= t) history.pop();
    history.push({t, rate: Number(snapshot.total_rate) || 0, active});
    while (history.length > MAX_POINTS || (history.length && history[0].t < t - WINDOW_S)) history.shift();
    drawChart();
  }

  function newRow(id) {
    const row = document.createElement('tr');
    row.dataset.id = id;
    const bar = el('progress', 'length');
    bar.max = 1;
    const paused = el('progress', 'paused');
    paused.max = 1;
    row.append(
      el('td', 'kind'), el('td', 'path'), el('td', 'client'), el('td', 'sent num'),
      el('td', 'progress', bar, el('span', 'percent')),
      el('td', 'rate num'),
      el('td', 'paused', el('span', 'share'), paused),
      el('td', 'throttled'));
    tbody.append(row);
    return row;
  }

  function updateTable(streams) {
    const rows = new Map(Array.from(tbody.rows, (row) => [row.dataset.id, row]));
    const seen = new Set();
    for (const s of streams) {
      if (!s || s.id == null) continue;
      const id = String(s.id);
      seen.add(id);
      const row = rows.get(id) || newRow(id);
      const cell = (name) => row.querySelector(`td.${name}`);
      const sent = Number(s.bytes_sent) || 0;
      const path = String(s.path ?? '');

      cell('kind').textContent = String(s.kind ?? '');
      cell('path').textContent = readablePath(path);
      cell('path').title = path;
      cell('client').textContent = String(s.client ?? '');
      cell('sent').textContent = humanSize(sent);
      cell('sent').title = `${sent} bytes`;

      const bar = row.querySelector('progress.length');
      const percent = row.querySelector('td.progress .percent');
      const length = Number(s.length);
      if (s.length != null && length > 0) {
        bar.hidden = false;
        bar.max = length;
        bar.value = Math.min(sent, length);
        percent.textContent = `${Math.min(100, (sent / length) * 100).toFixed(1)}%`;
        cell('progress').title = `of ${humanSize(length)}`;
      } else {
        bar.hidden = true;
        percent.textContent = '—';
        cell('progress').title = 'length not known';
      }

      cell('rate').textContent = humanRate(s.rate);
      const share = Math.min(1, Math.max(0, Number(s.paused_share) || 0));
      row.querySelector('td.paused .share').textContent = `${Math.round(share * 100)}%`;
      row.querySelector('progress.paused').value = share;
      cell('throttled').textContent = s.throttled ? 'yes' : 'no';
      row.classList.toggle('is-throttled', Boolean(s.throttled));
      row.classList.toggle('is-paused', share >= 0.5);
      if (Number(s.started)) row.title = `open since ${new Date(s.started * 1000).toLocaleTimeString()}`;
    }
    for (const [id, row] of rows) if (!seen.has(id)) row.remove();
    if (noStreams) noStreams.hidden = tbody.rows.length > 0;
  }

  // ---------- the chart ----------

  const SVG = 'http://www.w3.org/2000/svg';
  const W = 800, H = 240;
  const PAD = {left: 58, right: 58, top: 30, bottom: 28};
  const plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text != null) node.textContent = text;
    chart.append(node);
    return node;
  }

  // The smallest of 1, 2, 3, 4, 6, 8 times a power of ten that is >= value
  // (their quarters are round numbers, as the axis labels).
  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 3, 4, 6, 8, 10]) if (step * power >= value * (1 - 1e-9)) return step * power;
    return 10 * power;
  }

  const trim = (n) => String(Number(n.toFixed(2)));

  function drawChart() {
    chart.replaceChildren();
    const now = history.length ? history[history.length - 1].t : Date.now() / 1000;
    const start = now - WINDOW_S;
    const rateMax = niceCeiling(Math.max(1, ...history.map((p) => p.rate / 1e6)));
    // A multiple of 4, so that each of the 4 grid steps is a whole number of streams.
    const countMax = 4 * Math.ceil(Math.max(1, ...history.map((p) => p.active)) / 4);
    const x = (t) => PAD.left + ((t - start) / WINDOW_S) * plotW;
    const yRate = (r) => PAD.top + plotH - (r / 1e6 / rateMax) * plotH;
    const yCount = (c) => PAD.top + plotH - (c / countMax) * plotH;

    for (let i = 0; i <= 4; i += 1) {
      const y = PAD.top + plotH - (i / 4) * plotH;
      svg('line', {class: i ? 'grid' : 'axis', x1: PAD.left, x2: PAD.left + plotW, y1: y, y2: y});
      svg('text', {class: 'rate', x: PAD.left - 6, y: y + 4, 'text-anchor': 'end'}, trim((rateMax * i) / 4));
      svg('text', {class: 'count', x: PAD.left + plotW + 6, y: y + 4}, String((countMax * i) / 4));
    }
    for (let minutes = 5; minutes >= 0; minutes -= 1) {
      const xm = x(now - minutes * 60);
      svg('line', {class: 'grid', x1: xm, x2: xm, y1: PAD.top, y2: PAD.top + plotH});
      svg('text', {x: xm, y: H - 8, 'text-anchor': 'middle'}, minutes ? `−${minutes} min` : 'now');
    }
    svg('line', {class: 'axis', x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: PAD.top + plotH});
    svg('line', {class: 'axis', x1: PAD.left + plotW, x2: PAD.left + plotW, y1: PAD.top, y2: PAD.top + plotH});
    svg('text', {class: 'title rate', x: PAD.left - 6, y: 16, 'text-anchor': 'end'}, 'MB/s');
    svg('text', {class: 'title count', x: W - 6, y: 16, 'text-anchor': 'end'}, 'streams');
    svg('text', {class: 'title rate', x: PAD.left + plotW / 2 - 10, y: 16, 'text-anchor': 'end'}, '── total throughput');
    svg('text', {class: 'title count', x: PAD.left + plotW / 2 + 10, y: 16}, '‐ ‐ active streams');

    if (!history.length) {
      svg('text', {x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, 'text-anchor': 'middle'}, 'waiting for data…');
      return;
    }
    // One path a line; a gap in the data (a reconnect) breaks it.
    const line = (y) => history.map((p, i) => {
      const jump = i === 0 || p.t - history[i - 1].t > 5;
      return `${jump ? 'M' : 'L'}${x(p.t).toFixed(1)},${y(p).toFixed(1)}`;
    }).join('');
    svg('path', {class: 'line rate', d: line((p) => yRate(p.rate))});
    svg('path', {class: 'line count', d: line((p) => yCount(p.active))});
    const last = history[history.length - 1];
    svg('circle', {class: 'dot rate', cx: x(last.t), cy: yRate(last.rate), r: 3});
    svg('circle', {class: 'dot count', cx: x(last.t), cy: yCount(last.active), r: 3});
  }

  // ---------- start ----------

  showTokenState();
  drawChart();
  connect();
})();

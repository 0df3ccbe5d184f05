// streamsvc folder listing (/files/<dir>/): the server streams the rows in
// directory order; this script shows times in local time, sorts (folders
// first), filters, and, with a Bearer token kept in sessionStorage, offers
// uploads (file input or drag and drop), new folders, delete and signed links.
// No framework, no inline anything (the page's CSP is script-src 'self').
'use strict';

(() => {
  const {getToken, humanSize, wireTokenForm} = window.streamsvcUI;
  const SIGN_SECONDS = 3600;
  const PARALLEL_UPLOADS = 2;  // more only splits the same bandwidth

  const table = document.getElementById('listing');
  const tbody = table && table.tBodies[0];
  const tools = document.getElementById('tools');
  if (!tbody || !tools) return;  // not a listing page
  // The folder's URL path, percent-encoded by the server and ending in "/".
  let base = document.body.dataset.path || location.pathname;
  if (!base.endsWith('/')) base += '/';

  // ---------- small helpers ----------

  // el('button', {class: 'x', type: 'button'}, 'text', child...): children
  // that are strings become text nodes, so names are never parsed as HTML.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === 'class') node.className = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('aria-') || !(key in node)) node.setAttribute(key, value);
      else node[key] = value;
    }
    node.append(...children);
    return node;
  }

  function authHeaders() {
    const token = getToken();
    return token ? {Authorization: 'Bearer ' + token} : {};
  }

  // As the server's hrefs (Python's quote(name, safe="")): encodeURIComponent
  // leaves !'()* alone, the server encodes them; both name the same path.
  function encodeName(name) {
    return encodeURIComponent(name).replace(/[!'()*]/g,
      (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
  }

  function humanDuration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return '';
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}:${String(s % 60).padStart(2, '0')}`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
  }

  // The message of a {"error": "..."} answer, else its status line.
  function errorText(status, body, statusText) {
    try {
      const data = JSON.parse(body);
      if (data && typeof data.error === 'string' && data.error) return `${data.error} (${status})`;
    } catch { /* not JSON */ }
    return status ? `${status} ${statusText || 'error'}` : 'network error';
  }

  // ---------- the tools: token, filter, uploads, new folder ----------

  const tokenInput = el('input', {id: 'token', type: 'password', autocomplete: 'off',
    spellcheck: false, placeholder: 'token', 'aria-label': 'Bearer token'});
  const tokenForget = el('button', {id: 'token-forget', type: 'button'}, 'Forget');
  const tokenStatus = el('span', {id: 'token-status', role: 'status'});
  const tokenForm = el('form', {id: 'token-form'},
    el('label', {htmlFor: 'token'}, 'Token'), tokenInput,
    el('button', {id: 'token-save', type: 'submit'}, 'Save'), tokenForget, tokenStatus);

  const filter = el('input', {id: 'filter', type: 'search', placeholder: 'Filter names',
    'aria-label': 'Filter names'});
  const shownCount = el('span', {id: 'shown-count', class: 'note'});
  const filterTool = el('div', {class: 'tool'}, filter, shownCount);

  const uploadInput = el('input', {id: 'upload-input', type: 'file', multiple: true});
  const folderName = el('input', {id: 'new-folder-name', type: 'text', placeholder: 'New folder name',
    'aria-label': 'New folder name'});
  const folderForm = el('form', {id: 'folder-form'}, folderName,
    el('button', {id: 'new-folder', type: 'submit'}, 'New folder'));
  const writeTools = el('div', {id: 'write-tools', class: 'tool needs-token'},
    el('label', {htmlFor: 'upload-input'}, 'Upload'), uploadInput, folderForm);

  const message = el('p', {id: 'message', role: 'status'});
  tools.append(filterTool, writeTools, tokenForm, message);

  const uploads = el('ul', {id: 'uploads', 'aria-label': 'Uploads'});
  table.before(uploads);

  function say(text, isError) {
    message.textContent = text;
    message.classList.toggle('error', Boolean(isError));
  }

  function showTokenState() {
    const has = Boolean(getToken());
    document.body.classList.toggle('has-token', has);
    tokenForget.disabled = !has;
    tokenInput.placeholder = has ? 'token saved' : 'token';
    tokenStatus.textContent = has ? 'token saved' : 'no token: read only';
    tokenStatus.classList.remove('error');
  }

  // 401/403 on anything: the token (or its absence) is the likely cause.
  function refused(status, text) {
    if (status !== 401 && status !== 403) return false;
    tokenStatus.textContent = `token refused: ${text}`;
    tokenStatus.classList.add('error');
    return true;
  }

  wireTokenForm(tokenForm, tokenInput, tokenForget, showTokenState);

  // fetch() with the token; never throws: {ok, status, data, error}.
  async function call(method, url) {
    let response;
    try {
      response = await fetch(url, {method, headers: authHeaders(), cache: 'no-store'});
    } catch {
      return {ok: false, status: 0, data: null, error: 'network error'};
    }
    const body = await response.text().catch(() => '');
    let data = null;
    try { data = JSON.parse(body); } catch { /* empty or not JSON */ }
    const error = response.ok ? '' : errorText(response.status, body, response.statusText);
    if (!response.ok) refused(response.status, error);
    return {ok: response.ok, status: response.status, data, error};
  }

  // ---------- times, sorting, filtering, rows ----------

  const timeFormat = new Intl.DateTimeFormat(undefined, {year: 'numeric', month: '2-digit',
    day: '2-digit', hour: '2-digit', minute: '2-digit'});

  function localTime(node) {
    const when = new Date(node.dateTime);
    if (isNaN(when)) return;
    node.title = when.toISOString().replace(/\.\d+Z$/, 'Z');  // the exact UTC time on hover
    node.textContent = timeFormat.format(when);
  }

  const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: 'base'});
  const sortKeys = {
    name: (row) => row.dataset.name || '',
    size: (row) => Number(row.dataset.size) || 0,
    mtime: (row) => Number(row.dataset.mtime) || 0,
  };
  const sort = {key: null, direction: 1};  // key null: directory order, folders first

  function sortRows() {
    const rows = Array.from(tbody.rows);
    const {key, direction} = sort;
    rows.sort((a, b) => {
      const folders = Number(b.classList.contains('dir')) - Number(a.classList.contains('dir'));
      if (folders || !key) return folders;  // Array.sort is stable: ties keep their order
      const x = sortKeys[key](a), y = sortKeys[key](b);
      const order = key === 'name' ? collator.compare(x, y) : x - y;
      return direction * (order || collator.compare(a.dataset.name || '', b.dataset.name || ''));
    });
    const fragment = document.createDocumentFragment();
    for (const row of rows) fragment.append(row);  // moves them; their listeners stay
    tbody.append(fragment);
  }

  const headers = Array.from(table.querySelectorAll('thead th[data-key]'))
    .filter((th) => th.dataset.key in sortKeys);
  function sortBy(key) {
    sort.direction = sort.key === key ? -sort.direction : 1;
    sort.key = key;
    for (const th of headers) {
      if (th.dataset.key === key) th.setAttribute('aria-sort', sort.direction > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
    sortRows();
  }
  for (const th of headers) {
    th.tabIndex = 0;
    th.title = 'Sort';
    th.addEventListener('click', () => sortBy(th.dataset.key));
    th.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sortBy(th.dataset.key); }
    });
  }

  function applyFilter() {
    const query = filter.value.trim().toLocaleLowerCase();
    let shown = 0;
    for (const row of tbody.rows) {
      const hide = Boolean(query) && !(row.dataset.name || '').toLocaleLowerCase().includes(query);
      row.hidden = hide;
      if (!hide) shown += 1;
    }
    shownCount.textContent = query ? `${shown} of ${tbody.rows.length} shown` : '';
  }
  filter.addEventListener('input', applyFilter);
  filter.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') { filter.value = ''; applyFilter(); }
  });

  // The per-file buttons (shown only with a token, by CSS on body.has-token).
  function decorate(row) {
    let cell = row.querySelector('td.actions');
    if (!cell) cell = row.appendChild(el('td', {class: 'actions'}));
    if (!row.classList.contains('file') || cell.querySelector('button.delete')) return;
    cell.append(
      el('button', {type: 'button', class: 'sign needs-token',
        title: `Make a link anyone can use for ${SIGN_SECONDS / 3600} h`}, 'Link'),
      el('button', {type: 'button', class: 'delete needs-token', title: 'Delete this file'}, 'Delete'));
  }

  const footer = document.querySelector('footer[data-count]');
  function recount(delta) {
    if (!footer) return;
    const count = Math.max(0, (Number(footer.dataset.count) || 0) + delta);
    footer.dataset.count = String(count);
    footer.textContent = `${count} ${count === 1 ? 'entry' : 'entries'}`;
  }

  function findRow(href) {
    for (const row of tbody.rows) if (row.dataset.href === href) return row;
    return null;
  }

  // A row for what was just uploaded or made, as the server would list it
  // (rather than a reload, which would cut off the uploads still running).
  function addRow(kind, name, size) {
    const href = encodeName(name) + (kind === 'dir' ? '/' : '');
    let row = findRow(href);
    if (!row) {
      row = el('tr', {class: kind},
        el('td', {}, el('a', {href}, kind === 'dir' ? name + '/' : name)),
        el('td'), el('td', {}, el('time')), el('td', {class: 'actions'}));
      tbody.append(row);
      recount(1);
    }
    const now = new Date();
    Object.assign(row.dataset, {name, size: size == null ? '' : String(size),
      mtime: String(now.getTime() / 1000), href});
    row.cells[1].textContent = size == null ? '' : humanSize(size);
    const time = row.querySelector('time');
    if (time) { time.dateTime = now.toISOString().replace(/\.\d+Z$/, 'Z'); localTime(time); }
    decorate(row);
    sortRows();
    applyFilter();
    row.classList.remove('fresh');
    void row.offsetWidth;  // restart the highlight animation
    row.classList.add('fresh');
  }

  // ---------- delete and signed links ----------

  async function deleteRow(row, button) {
    const name = row.dataset.name || '';
    if (!window.confirm(`Delete “${name}”?`)) return;
    button.disabled = true;
    const answer = await call('DELETE', base + row.dataset.href);
    button.disabled = false;
    if (answer.ok || answer.status === 404) {
      row.remove();
      recount(-1);
      applyFilter();
      say(answer.ok ? `Deleted “${name}”.` : `“${name}” was already gone.`);
    } else {
      say(`Could not delete “${name}”: ${answer.error}`, true);
    }
  }

  async function signRow(row, button) {
    const name = row.dataset.name || '';
    button.disabled = true;
    const answer = await call('POST', `${base}${row.dataset.href}?sign=${SIGN_SECONDS}`);
    button.disabled = false;
    if (!answer.ok || !answer.data || typeof answer.data.url !== 'string') {
      say(`Could not make a link to “${name}”: ${answer.error || 'unexpected answer'}`, true);
      return;
    }
    const url = new URL(answer.data.url, location.href).href;
    let field = row.querySelector('input.signed-url');
    if (!field) {
      field = el('input', {type: 'text', class: 'signed-url', readOnly: true,
        'aria-label': `Signed link to ${name}`});
      field.addEventListener('focus', () => field.select());
      button.after(field);
    }
    field.value = url;
    const expires = Number(answer.data.expires);
    const until = expires ? ` until ${timeFormat.format(new Date(expires * 1000))}` : '';
    field.title = `Anyone with this link can download the file${until}`;
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(url); copied = true; } catch { /* no permission */ }
    }
    field.focus({preventScroll: true});
    field.select();
    say(copied ? `Link to “${name}” copied (valid${until}).` : `Link to “${name}” ready to copy (valid${until}).`);
  }

  tbody.addEventListener('click', (event) => {
    const button = event.target.closest('button');
    const row = button && button.closest('tr');
    if (!row || !tbody.contains(row)) return;
    if (button.classList.contains('delete')) deleteRow(row, button);
    else if (button.classList.contains('sign')) signRow(row, button);
  });

  // ---------- new folder ----------

  folderForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = folderName.value.trim();
    if (!name) { folderName.focus(); say('Type a name for the new folder first.'); return; }
    if (name.includes('/') || name === '.' || name === '..') {
      say('A folder name cannot contain “/” or be “.” or “..”.', true);
      return;
    }
    const answer = await call('PUT', base + encodeName(name) + '/');
    if (!answer.ok) { say(`Could not make the folder “${name}”: ${answer.error}`, true); return; }
    folderName.value = '';
    addRow('dir', name, null);
    say(answer.status === 201 ? `Made the folder “${name}”.` : `The folder “${name}” was there already.`);
  });

  // ---------- uploads ----------
  //
  // Every upload is resumable (the IETF resumable upload draft, interop
  // version 8, as streamsvc-client put --retries speaks it): an empty
  // creation (PUT with Upload-Complete: ?0) whose answer names the upload
  // (/uploads/<id>), kept in localStorage before a byte of the file goes;
  // then one PATCH with the file. A cut connection is retried with backoff
  // from the server's offset (HEAD); a page closed or reloaded mid-way
  // resumes when the same file (name, size, modification time) is chosen
  // again for the same folder. Cancel deletes the upload on the server.

  const INTEROP_VERSION = '8';
  const RETRIES = 5;         // cuts in a row before giving up (backoff 1, 2, 4, 8, 16 s)
  const MAX_CONFLICTS = 3;   // 409s (the server still finishing a cut append) asked again
  const RECORD_PREFIX = 'streamsvc.upload:';
  const RECORD_DAYS = 7;     // records older than this are dropped unasked

  const queue = [];    // jobs waiting for a free slot
  let running = 0;
  const active = new Set();  // the record keys of the uploads running

  // ----- the records of uploads in progress (localStorage) -----

  function recordKey(target, file) {
    return RECORD_PREFIX + JSON.stringify([target, file.size, file.lastModified]);
  }
  function recall(key) {
    try {
      const record = JSON.parse(localStorage.getItem(key) || 'null');
      return record && typeof record.upload === 'string' ? record : null;
    } catch { return null; }
  }
  function remember(key, record) {
    try { localStorage.setItem(key, JSON.stringify(record)); } catch { /* storage full or off: no resume after a reload */ }
  }
  function forget(key) {
    try { localStorage.removeItem(key); } catch { /* storage off */ }
  }
  // The records of uploads into this folder: [key, record].
  function recordsHere() {
    const here = [];
    const folder = new URL(base, location.href).href;
    let keys = [];
    try { keys = Object.keys(localStorage); } catch { return here; }
    for (const key of keys) {
      if (!key.startsWith(RECORD_PREFIX)) continue;
      const record = recall(key);
      if (!record || Date.now() - (record.saved || 0) > RECORD_DAYS * 86400e3) { forget(key); continue; }
      const target = String(record.target || '');
      if (target.startsWith(folder) && !target.slice(folder.length).includes('/')) here.push([key, record]);
    }
    return here;
  }

  // ----- the requests -----

  function resumableHeaders(extra) {
    return Object.assign({'Upload-Draft-Interop-Version': INTEROP_VERSION}, authHeaders(), extra);
  }

  // The server's offset of an upload: {status, offset, complete}; status 200 when known, 0: no answer.
  async function askOffset(upload) {
    let response;
    try {
      response = await fetch(upload, {method: 'HEAD', headers: resumableHeaders(), cache: 'no-store'});
    } catch {
      return {status: 0};
    }
    const offset = Number(response.headers.get('Upload-Offset'));
    if (!response.ok || !Number.isSafeInteger(offset)) return {status: response.ok ? 502 : response.status};
    return {status: 200, offset, complete: response.headers.get('Upload-Complete') === '?1'};  // (the answer is a 204)
  }

  // The upload made on the server, nothing of the file sent yet: {upload} or {error}.
  async function create(target, file) {
    let response;
    try {
      response = await fetch(target, {method: 'PUT', cache: 'no-store', body: '',
        headers: resumableHeaders({'Upload-Complete': '?0', 'Upload-Length': String(file.size)})});
    } catch {
      return {error: 'network error'};
    }
    const body = await response.text().catch(() => '');
    const location = response.headers.get('Location');
    if (response.status !== 201 || !location) {
      const text = response.ok ? 'the server does not take resumable uploads' : errorText(response.status, body, response.statusText);
      refused(response.status, text);
      return {error: text};
    }
    return {upload: new URL(location, target).href};
  }

  // One PATCH with the file from offset: {status, text} once answered (status 0: cut).
  function append(job, offset) {
    return new Promise((resolve) => {
      const {file} = job;
      const xhr = new XMLHttpRequest();
      job.xhr = xhr;
      xhr.open('PATCH', job.upload);
      const headers = resumableHeaders({'Content-Type': 'application/partial-upload', 'Upload-Offset': String(offset),
        'Upload-Complete': '?1', 'Upload-Length': String(file.size)});
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      xhr.upload.addEventListener('progress', (event) => progress(job, offset + event.loaded));
      xhr.addEventListener('load', () => resolve({status: xhr.status, text: xhr.responseText, statusText: xhr.statusText}));
      xhr.addEventListener('error', () => resolve({status: 0}));
      xhr.addEventListener('abort', () => resolve({status: 0, aborted: true}));
      xhr.send(file.slice(offset));  // a Blob: the browser streams it from disk
    });
  }

  // A wait that Cancel cuts short.
  function pause(job, seconds) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => { job.wake = null; resolve(); }, seconds * 1000);
      job.wake = () => { clearTimeout(timer); job.wake = null; resolve(); };
    });
  }

  // ----- the jobs -----

  function upload(files) {
    if (!files.length) return;
    if (!getToken()) {
      tokenStatus.textContent = 'save a token first to upload';
      tokenStatus.classList.add('error');
      tokenInput.focus();
      return;
    }
    for (const file of files) queue.push(newJob(file));
    pump();
  }

  // The row of one upload: name, progress bar, percent, rate, time left, Cancel, message.
  function uploadItem(name, size, cancelled) {
    // An earlier, finished row of the same name would pass for this one.
    for (const old of uploads.querySelectorAll('li.upload')) {
      if (old.dataset.name === name && old.matches('.done, .failed, .cancelled, .interrupted')) old.remove();
    }
    const parts = {
      progress: el('progress', {max: Math.max(size, 1), value: 0, 'aria-label': `Upload of ${name}`}),
      percent: el('span', {class: 'percent'}, '0%'),
      rate: el('span', {class: 'rate'}),
      eta: el('span', {class: 'eta'}),
      message: el('span', {class: 'message'}),
    };
    const cancel = el('button', {type: 'button', class: 'cancel'}, 'Cancel');
    cancel.addEventListener('click', cancelled);
    parts.item = el('li', {class: 'upload', dataset: {name}},
      el('span', {class: 'name', title: humanSize(size)}, name),
      parts.progress, parts.percent, parts.rate, parts.eta, cancel, parts.message);
    uploads.append(parts.item);
    return parts;
  }

  function newJob(file) {
    const job = {file, state: 'queued', xhr: null, samples: [], upload: null, key: null, wake: null};
    Object.assign(job, uploadItem(file.name, file.size, () => cancelJob(job)));
    job.message.textContent = 'queued';
    return job;
  }

  function pump() {
    while (running < PARALLEL_UPLOADS && queue.length) start(queue.shift());
  }

  function start(job) {
    const {file} = job;
    let target;
    try { target = new URL(base + encodeName(file.name), location.href).href; } catch {  // a lone surrogate in the name
      finish(job, 'failed', 'this file name cannot be put in a URL');
      return;
    }
    job.state = 'running';
    running += 1;
    job.message.textContent = '';
    run(job, target).catch((error) => finish(job, 'failed', String(error)));
  }

  const over = (job) => job.state !== 'running';

  async function run(job, target) {
    const {file} = job;
    job.key = recordKey(target, file);
    active.add(job.key);
    let offset = 0;
    const record = recall(job.key);
    if (record) {
      const known = await askOffset(record.upload);
      if (over(job)) return;
      if (known.status === 200 && known.complete) { forget(job.key); completed(job, 'done: completed earlier'); return; }
      if (known.status === 200) {
        job.upload = record.upload;
        offset = known.offset;
        job.item.dataset.resumedFrom = String(offset);
        job.message.textContent = `resumed at ${humanSize(offset)} (${percentOf(offset, file.size)})`;
      } else if (known.status === 404) {
        forget(job.key);  // expired or cancelled: afresh
      } else {
        finish(job, 'failed', known.status ? errorText(known.status, '', '') : 'network error: choose the file again to resume');
        return;
      }
    }
    if (!job.upload) {
      const made = await create(target, file);
      if (over(job)) { if (made.upload) discard(made.upload); return; }
      if (!made.upload) { finish(job, 'failed', made.error); return; }
      job.upload = made.upload;
      remember(job.key, {upload: job.upload, target, name: file.name, size: file.size,
        lastModified: file.lastModified, saved: Date.now()});
    }
    job.started = performance.now();
    job.sent = offset;
    let cuts = 0, conflicts = 0, wait = 1;
    for (;;) {
      job.samples = [[performance.now(), offset]];
      progress(job, offset);
      const answer = await append(job, offset);
      job.xhr = null;
      if (over(job)) return;
      if (answer.status >= 200 && answer.status < 300) {  // 201 made, 204 replaced
        forget(job.key);
        completed(job, answer.status === 204 ? 'done: replaced the file' : 'done');
        return;
      }
      const retry = answer.status === 0 || [502, 503, 504].includes(answer.status);
      if (answer.status === 409 && conflicts < MAX_CONFLICTS) {
        conflicts += 1;  // the server still finishing a cut append (its fsync): ask again
      } else if (!retry) {
        const text = errorText(answer.status, answer.text, answer.statusText);
        if (!refused(answer.status, text) && answer.status < 500) forget(job.key);  // the server ended the upload
        finish(job, 'failed', text);
        return;
      } else if (cuts === RETRIES) {
        finish(job, 'interrupted', `interrupted at ${percentOf(job.progress.value, file.size)}: ` +
          'choose the same file again to resume');
        return;
      } else {
        cuts += 1;
      }
      job.message.textContent = `connection lost: resuming in ${wait} s`;
      job.rate.textContent = job.eta.textContent = '';
      await pause(job, wait);
      if (over(job)) return;
      wait = Math.min(wait * 2, 30);
      const known = await askOffset(job.upload);
      if (over(job)) return;
      if (known.status === 404) { forget(job.key); finish(job, 'failed', 'the server no longer has this upload: choose the file again'); return; }
      if (known.status === 200 && known.complete) { forget(job.key); completed(job, 'done'); return; }
      if (known.status !== 200) continue;  // the server still unreachable: the next try asks again
      offset = known.offset;
      job.item.dataset.resumedFrom = String(offset);
      job.message.textContent = `resumed at ${humanSize(offset)} (${percentOf(offset, file.size)})`;
    }
  }

  function percentOf(bytes, total) {
    return total ? `${Math.floor((bytes / total) * 100)}%` : '100%';
  }

  function completed(job, text) {
    const {file} = job;
    progress(job, file.size);
    job.progress.value = job.progress.max;  // full, even for an empty file
    const seconds = (performance.now() - (job.started || performance.now())) / 1000;
    const sent = file.size - (job.sent || 0);
    if (seconds > 0 && sent > 0) job.rate.textContent = `${(sent / seconds / 1e6).toFixed(1)} MB/s`;  // on average
    finish(job, 'done', text);
    addRow('file', file.name, file.size);
  }

  // An upload the page gives up: gone from the server (its partial data
  // with it). Right after an abort the server may still be ending the cut
  // append, and answers 409 until then: asked again a few times.
  async function discard(upload) {
    for (let tries = 0; tries < 10; tries += 1) {
      let status = 0;
      try {
        status = (await fetch(upload, {method: 'DELETE', headers: resumableHeaders(), cache: 'no-store'})).status;
      } catch { /* no answer: try again */ }
      if (status && status !== 409) return;
      await new Promise((resolve) => setTimeout(resolve, 500 * (tries + 1)));
    }
  }

  // Rate over the last few seconds, so a stall shows soon.
  function progress(job, loaded) {
    const now = performance.now();
    job.samples.push([now, loaded]);
    while (job.samples.length > 2 && now - job.samples[0][0] > 3000) job.samples.shift();
    const [t0, loaded0] = job.samples[0];
    const total = job.file.size;
    job.progress.value = Math.min(loaded, Math.max(total, 1));
    job.percent.textContent = percentOf(loaded, total);
    if (now - t0 > 250) {
      const rate = ((loaded - loaded0) * 1000) / (now - t0);  // bytes per second
      job.rate.textContent = `${(rate / 1e6).toFixed(rate < 1e7 ? 2 : 1)} MB/s`;
      job.eta.textContent = rate > 0 && loaded < total ? humanDuration((total - loaded) / rate) : '';
    }
  }

  function cancelJob(job) {
    if (job.state === 'running') {
      if (job.xhr) job.xhr.abort();
      if (job.wake) job.wake();
      if (job.upload) discard(job.upload);  // (run() sees the state and stops)
      if (job.key) forget(job.key);
      finish(job, 'cancelled', 'cancelled: nothing kept');
    } else if (job.state === 'queued') {
      queue.splice(queue.indexOf(job), 1);
      finish(job, 'cancelled', 'cancelled');
    } else if (job.state === 'interrupted') {  // given up on, still resumable: now not
      job.state = 'cancelled';
      discardShown(job, job.upload, job.key);
    }
  }

  // An interrupted row's Cancel: the upload gone from the server and the record.
  function discardShown(shown, upload, key) {
    discard(upload);
    forget(key);
    shown.item.classList.replace('interrupted', 'cancelled');
    shown.message.textContent = 'cancelled: nothing kept';
  }

  function finish(job, state, text) {
    if (job.state !== 'queued' && job.state !== 'running') return;  // already over
    if (job.state === 'running') { running -= 1; active.delete(job.key); }
    job.state = state;
    job.eta.textContent = '';
    job.message.textContent = text;
    job.item.classList.add(state);  // done, failed, interrupted or cancelled
    pump();
  }

  // The uploads into this folder that an earlier page left unfinished:
  // shown at the server's offset until the same file is chosen again.
  async function showInterrupted() {
    if (!getToken()) return;
    for (const [key, record] of recordsHere()) {
      const known = await askOffset(record.upload);
      if (known.status === 404 || (known.status === 200 && known.complete)) { forget(key); continue; }
      if (known.status !== 200) continue;
      const size = Number(record.size) || 0;
      if (active.has(key)) continue;  // chosen again meanwhile
      const shown = uploadItem(String(record.name), size, () => discardShown(shown, record.upload, key));
      shown.progress.value = Math.min(known.offset, Math.max(size, 1));
      shown.percent.textContent = percentOf(known.offset, size);
      shown.message.textContent = 'interrupted: choose the same file again to resume';
      shown.item.classList.add('interrupted');
      shown.item.dataset.offset = String(known.offset);
    }
  }

  uploadInput.addEventListener('change', () => {
    const files = Array.from(uploadInput.files || []);
    uploadInput.value = '';  // so the same file can be chosen again
    upload(files);
  });

  // Drag and drop anywhere on the page. Without preventDefault a dropped
  // file would replace the page (the browser opens it).
  let dragDepth = 0;  // dragenter/dragleave fire for every child crossed
  const carriesFiles = (event) => Boolean(event.dataTransfer) &&
    Array.from(event.dataTransfer.types || []).includes('Files');
  document.addEventListener('dragenter', (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    document.body.classList.add('dragging');
  });
  document.addEventListener('dragover', (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  });
  document.addEventListener('dragleave', (event) => {
    if (!carriesFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) document.body.classList.remove('dragging');
  });
  document.addEventListener('drop', (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    document.body.classList.remove('dragging');
    const files = [], folders = [];
    const items = Array.from(event.dataTransfer.items || []);
    for (const item of items) {
      if (item.kind !== 'file') continue;
      // A dropped folder arrives as a File that cannot be read: skip it.
      const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      if (entry && entry.isDirectory) { folders.push(entry.name); continue; }
      const file = item.getAsFile();
      if (file) files.push(file);
    }
    if (!items.length) files.push(...Array.from(event.dataTransfer.files || []));
    if (folders.length) say(`Folders are not uploaded (${folders.join(', ')}): drop the files inside them.`, true);
    upload(files);
  });

  // Leaving the page stops what is still uploading (until the same file is chosen again).
  window.addEventListener('beforeunload', (event) => {
    if (running || queue.length) { event.preventDefault(); event.returnValue = ''; }
  });

  // ---------- on load ----------

  for (const node of tbody.querySelectorAll('time')) localTime(node);
  for (const row of tbody.rows) decorate(row);
  sortRows();  // folders first, otherwise as the server sent them
  showTokenState();
  showInterrupted();
})();

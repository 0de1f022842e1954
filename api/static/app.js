// revtune dashboard: a dependency-free single-page app over the /v1 REST API.
// Views: "#/" (jobs table + submit form) and "#/jobs/<id>" (one job's curves and learned hyperparameters).
// Charts are Chart.js instances (vendored); tests read them back with Chart.getChart(canvas).
'use strict';

(function () {
  const KEY_STORAGE = 'revtune.apiKey';
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const JOB_POLL_MS = 1000;
  const LIST_POLL_MS = 2000;
  // Hyperparameters are re-fetched at most this often while a job runs: they can hold thousands of values.
  const HYPER_REFRESH_MS = 3000;
  const PALETTE = ['#2f5fd0', '#d0462f', '#1f8a4c', '#b8770b', '#7b3fc4', '#0f8b9a', '#c23b7a', '#5b6b1e',
    '#8a5a2b', '#4a4a4a', '#3f8fd0', '#d08a2f'];
  const MAX_IMAGES = 40;
  const MAX_KERNEL_TILES = 64;
  // A meta-iteration whose objective or a loss was not finite (the API gives null): a gap in the
  // curves, a red cross at the chart's foot and a light red band.
  const DIVERGED = '#c23b30';
  const MARK_Y = 0.04;
  // The initial values (the snapshot at meta_iter 0): dashed grey reference lines.
  const INITIAL_COLOR = '#737987';
  const INITIAL_LABEL = 'initial (meta-iteration 0)';
  const INITIAL_DASH = [6, 4];
  const EXPORT_FORMATS = { npz: 'npz', optax: 'npz', pytorch: 'pt' };
  const WHICH_HELP = 'best = the hyperparameters the best-scoring meta-iteration evaluated; '
    + 'last = the values after the final update, which no meta-iteration evaluated; '
    + 'a number k = the values at meta_iter k, as GET /v1/jobs/{id}/hyperparameters?meta_iter=k reads them';

  const view = document.getElementById('view');
  const notice = document.getElementById('notice');
  const keyInput = document.getElementById('api-key');
  // Every poller and chart belongs to one render generation; navigating bumps it so stale loops stop.
  let generation = 0;
  const charts = {};
  // The jobs ticked in the jobs table for comparison, in the order they were ticked.
  const selectedJobs = new Set();
  window.revtuneDashboard = { charts, state: {} };

  keyInput.value = localStorage.getItem(KEY_STORAGE) || '';
  keyInput.addEventListener('change', () => {
    const key = keyInput.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key); else localStorage.removeItem(KEY_STORAGE);
    route();
  });

  class ApiError extends Error {
    constructor(status, detail) {
      super(formatDetail(detail) || `HTTP ${status}`);
      this.status = status;
      this.detail = detail;
    }
  }

  function formatDetail(detail) {
    if (Array.isArray(detail)) {
      return detail.map((e) => {
        const loc = (e.loc || []).filter((p, i) => !(i === 0 && ['body', 'query', 'path'].includes(p)));
        return `${loc.join('.') || '(request)'}: ${e.msg}`;
      }).join('\n');
    }
    return detail == null ? '' : String(detail);
  }

  function authHeaders(extra) {
    const headers = { Accept: 'application/json', ...extra };
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  // fetch, and an ApiError carrying the API's detail for any answer but 2xx.
  async function send(method, path, init) {
    let res;
    try {
      res = await fetch(path, { method, ...init });
    } catch (e) {
      throw new ApiError(0, `cannot reach the server: ${e.message}`);
    }
    if (!res.ok) {
      let payload = null;
      try { payload = await res.json(); } catch (e) { payload = null; }
      const err = new ApiError(res.status, payload && payload.detail !== undefined ? payload.detail : res.statusText);
      if (res.status === 401 || res.status === 403) {
        showNotice(`${err.message} — enter an API key at the top right.`);
      }
      throw err;
    }
    return res;
  }

  // A JSON call; a FormData body goes as multipart (the browser writes its boundary).
  async function api(method, path, body) {
    const headers = authHeaders();
    const init = { headers };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await send(method, path, init);
    if (res.status === 204) return null;
    try { return await res.json(); } catch (e) { return null; }
  }

  // "Delete failed (409): job … is running: cancel it first …": what the API said, with its status;
  // a 422's problems one a line, each naming its field.
  function failure(what, e) {
    return `${what}${e.status ? ` (${e.status})` : ''}:${Array.isArray(e.detail) ? '\n' : ' '}${e.message}`;
  }

  // A file the API sends (e.g. an export): fetched with the API key header, which a plain link
  // cannot send, then saved through an object URL under the name its Content-Disposition gives.
  async function downloadFile(path, fallbackName) {
    const res = await send('GET', path, { headers: authHeaders({ Accept: '*/*' }) });
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: fileNameOf(res.headers.get('Content-Disposition')) || fallbackName, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    return link.download;
  }

  function fileNameOf(disposition) {
    if (!disposition) return null;
    const star = disposition.match(/filename\*\s*=\s*(?:UTF-8'[^']*')?([^;]+)/i);
    const plain = disposition.match(/filename\s*=\s*"?([^";]+)"?/i);
    let name = plain ? plain[1].trim() : null;
    if (star) {
      try { name = decodeURIComponent(star[1].trim().replace(/^"|"$/g, '')); } catch (e) { /* keep the plain one */ }
    }
    return name ? name.split(/[\\/]/).pop() : null;
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return '–';
    if (typeof x !== 'number') return String(x);
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(3);
    return Number(x.toPrecision(4)).toString();
  }

  function when(stamp) { return stamp ? stamp.slice(0, 19).replace('T', ' ') : '–'; }

  function statusBadge(status) { return el('span', { class: `status ${status}`, 'data-status': status }, status); }

  // A library run the service records (origin external): its client runs it, no worker. A list: empty
  // for other jobs, so that it can be spread into replaceChildren.
  function originBadge(job) {
    if (job.origin !== 'external') return [];
    return [el('span', { class: 'origin-badge', title: 'a library run recorded by its client (no worker runs it)' }, 'external')];
  }


  // A job's warnings (docs/API.md, "Warnings"): a mark for the jobs table, a list for the job page.
  function warningMark(job) {
    const warnings = job.warnings || [];
    if (!warnings.length) return null;
    return el('span', { class: 'warn-mark', 'data-warnings': warnings.length, title: warnings.map((w) => w.message).join('\n') },
      `⚠ ${warnings.length}`);
  }

  function warningItems(job) {
    return (job.warnings || []).map((w) => el('li', { 'data-code': w.code },
      el('code', {}, w.code), w.meta_iter == null ? '' : ` (from meta-iteration ${w.meta_iter})`, ': ', w.message));
  }

  function progressBar(job) {
    const total = Math.max(job.meta_iterations || 1, 1);
    const pct = Math.min(100, (100 * job.meta_iter) / total);
    return el('span', { class: 'progress-wrap' },
      el('span', { class: 'progress' }, el('span', { style: `width:${pct.toFixed(1)}%` })),
      el('span', { class: 'progress-text', 'data-progress': `${job.meta_iter}/${job.meta_iterations}` },
        `${job.meta_iter}/${job.meta_iterations}`));
  }

  function destroyCharts() {
    for (const [name, chart] of Object.entries(charts)) {
      chart.destroy();
      delete charts[name];
    }
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  // ---------------------------------------------------------------- routing

  function route() {
    generation += 1;
    destroyCharts();
    showNotice('');
    view.replaceChildren();
    const m = location.hash.match(/^#\/jobs\/([^/?#]+)/);
    const c = location.hash.match(/^#\/compare\/([^?#]*)/);
    if (m) renderJob(decodeURIComponent(m[1]), generation);
    else if (c) renderCompare(c[1].split(',').filter(Boolean).map(decodeURIComponent), generation);
    else renderHome(generation);
  }

  window.addEventListener('hashchange', route);

  // ---------------------------------------------------------------- home: jobs table and submit form

  function renderHome(gen) {
    const statusFilter = el('select', { id: 'status-filter' },
      ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => el('option', { value: s }, s || 'all')));
    const compare = el('button', { id: 'compare-jobs', class: 'secondary', type: 'button', disabled: true,
      title: 'tick two or more jobs in the first column' }, 'Compare selected');
    const tbody = el('tbody');
    const table = el('table', { class: 'jobs', id: 'jobs-table' },
      el('thead', {}, el('tr', {}, el('th', { title: 'select jobs to compare' }, ''),
        ['name', 'status', 'progress', 'best objective', 'created', 'id'].map((h) => el('th', {}, h)))),
      tbody);
    const jobsCard = el('section', { class: 'card' },
      el('div', { class: 'row' }, el('h2', {}, 'Jobs'), el('span', { class: 'muted' }, 'status'), statusFilter, compare),
      table, el('p', { class: 'muted', id: 'jobs-empty', hidden: true }, 'No jobs yet: submit one below.'));
    view.append(el('h1', {}, 'Tuning jobs'), jobsCard, submitForm(), datasetsCard(gen));

    statusFilter.addEventListener('change', () => refresh());
    compare.addEventListener('click', () => {
      location.hash = `#/compare/${[...selectedJobs].map(encodeURIComponent).join(',')}`;
    });

    function showSelection() {
      compare.disabled = selectedJobs.size < 2;
      compare.textContent = selectedJobs.size ? `Compare ${selectedJobs.size} selected` : 'Compare selected';
    }

    function toggle(id, on) {
      if (on) selectedJobs.add(id); else selectedJobs.delete(id);
      showSelection();
    }

    async function refresh() {
      if (gen !== generation) return;
      try {
        const q = statusFilter.value ? `&status=${encodeURIComponent(statusFilter.value)}` : '';
        const page = await api('GET', `/v1/jobs?limit=50${q}`);
        if (gen !== generation) return;
        tbody.replaceChildren(...page.items.map((job) => jobRow(job, toggle)));
        document.getElementById('jobs-empty').hidden = page.items.length > 0;
      } catch (e) {
        if (gen === generation && e.status !== 401 && e.status !== 403) showNotice(`Could not list jobs: ${e.message}`);
      }
    }

    showSelection();
    (async function poll() {
      while (gen === generation) {
        await refresh();
        await sleep(LIST_POLL_MS);
      }
    })();
  }

  function jobRow(job, toggle) {
    const best = job.best ? fmt(job.best.objective) : '–';
    const pick = el('input', { type: 'checkbox', class: 'select-job', 'data-job-id': job.id, checked: selectedJobs.has(job.id),
      title: 'compare this job with the others ticked', onchange: (ev) => toggle(job.id, ev.target.checked) });
    return el('tr', { 'data-job-id': job.id },
      el('td', {}, pick),
      el('td', {}, el('a', { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.name), ...originBadge(job)),
      el('td', {}, statusBadge(job.status), warningMark(job)),
      el('td', {}, progressBar(job)),
      el('td', { class: 'num' }, best),
      el('td', { class: 'num' }, when(job.created_at)),
      el('td', { class: 'muted' }, job.id));
  }

  function bytes(n) {
    if (n == null) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let k = 0;
    while (n >= 1024 && k < units.length - 1) { n /= 1024; k += 1; }
    return `${k ? n.toFixed(1) : n} ${units[k]}`;
  }

  // The tenant's uploaded datasets (docs/API.md, "Datasets"): listed with a delete button each, and
  // an upload form; what the API refuses is shown as it says it (a 422 names the field).
  function datasetsCard(gen) {
    const tbody = el('tbody');
    const table = el('table', { class: 'jobs', id: 'datasets-table' },
      el('thead', {}, el('tr', {}, ['name', 'rows', 'example shape', 'target', 'tasks', 'size', 'created', 'id', ''].map((h) => el('th', {}, h)))),
      tbody);
    const empty = el('p', { class: 'muted', id: 'datasets-empty', hidden: true }, 'No datasets uploaded yet.');
    const listErrors = el('pre', { class: 'errors', id: 'datasets-errors' });
    const file = el('input', { type: 'file', id: 'dataset-file', accept: '.npz' });
    const name = el('input', { type: 'text', id: 'dataset-name', placeholder: 'name', maxlength: 100 });
    const upload = el('button', { id: 'upload-dataset', type: 'submit' }, 'Upload');
    const uploadErrors = el('pre', { class: 'errors', id: 'upload-errors' });
    const uploaded = el('span', { class: 'muted', id: 'upload-result' });
    const form = el('form', { id: 'upload-form' },
      el('div', { class: 'row' }, el('span', { class: 'muted', title: 'X, y or X_train, y_train, X_valid, y_valid[, X_test, y_test]; '
        + 'a multi-task one adds task ids' }, 'upload an .npz'), file, el('span', { class: 'muted' }, 'named'), name, upload, uploaded),
      uploadErrors);

    file.addEventListener('change', () => {
      const f = file.files[0];
      // a display name from the file's: the API takes letters, digits, space, _ . - (no paths)
      if (f && !name.value) name.value = f.name.replace(/\.npz$/i, '').replace(/[^A-Za-z0-9 _.-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 100);
    });

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      uploadErrors.textContent = '';
      uploaded.textContent = '';
      const f = file.files[0];
      if (!f) {
        uploadErrors.textContent = 'Choose an .npz file to upload.';
        return;
      }
      const body = new FormData();
      body.append('file', f);
      body.append('name', name.value.trim());
      upload.disabled = true;
      try {
        const ds = await api('POST', '/v1/datasets', body);
        uploaded.textContent = `uploaded ${ds.name}: use it in a spec as "dataset": {"id": "${ds.id}", ...}`;
        uploaded.dataset.datasetId = ds.id;
        form.reset();
        await refresh();
      } catch (e) {
        uploadErrors.textContent = failure('The upload was refused', e);
      } finally {
        upload.disabled = false;
      }
    });

    async function remove(ds) {
      listErrors.textContent = '';
      if (!window.confirm(`Delete dataset ${ds.name} (${ds.id}) and its file?`)) return;
      try {
        await api('DELETE', `/v1/datasets/${encodeURIComponent(ds.id)}`);
      } catch (e) {
        listErrors.textContent = failure(`Could not delete ${ds.name}`, e);
      }
      await refresh();
    }

    function row(ds) {
      const rows = ds.layout === 'splits'
        ? `train ${ds.n_train}, valid ${ds.n_valid}, test ${ds.n_test}` : `${ds.n_rows != null ? ds.n_rows : ds.n_train}`;
      const target = ds.target === 'real' ? `real, ${ds.n_outputs} output${ds.n_outputs === 1 ? '' : 's'}` : `${ds.n_classes} classes`;
      return el('tr', { 'data-dataset-id': ds.id },
        el('td', {}, ds.name), el('td', { class: 'num' }, rows),
        el('td', { class: 'num' }, ds.example_shape ? `[${ds.example_shape.join(', ')}]` : `[${ds.n_features}]`),
        el('td', {}, target), el('td', { class: 'num' }, ds.n_tasks), el('td', { class: 'num' }, bytes(ds.size_bytes)),
        el('td', { class: 'num' }, when(ds.created_at)), el('td', { class: 'muted' }, ds.id),
        el('td', {}, el('button', { class: 'danger delete-dataset', type: 'button', onclick: () => remove(ds) }, 'Delete')));
    }

    async function refresh() {
      try {
        const body = await api('GET', '/v1/datasets');
        if (gen !== generation) return;
        tbody.replaceChildren(...body.items.map(row));
        empty.hidden = body.items.length > 0;
        table.hidden = !body.items.length;
      } catch (e) {
        if (gen === generation && e.status !== 401 && e.status !== 403) listErrors.textContent = failure('Could not list datasets', e);
      }
    }

    refresh();
    return el('section', { class: 'card', id: 'datasets-card' }, el('h2', {}, 'Datasets'), table, empty, listErrors, form);
  }

  function submitForm() {
    const templateSelect = el('select', { id: 'template-select' }, el('option', { value: '' }, 'loading templates…'));
    const formatSelect = el('select', { id: 'spec-format' }, el('option', { value: 'json' }, 'JSON'), el('option', { value: 'yaml' }, 'YAML'));
    const textarea = el('textarea', { class: 'spec', id: 'spec-text', spellcheck: 'false' });
    const errors = el('pre', { class: 'errors', id: 'submit-errors' });
    const submit = el('button', { id: 'submit-job', type: 'submit' }, 'Submit job');
    let format = 'json';

    function parseSpec() {
      const text = textarea.value;
      const spec = format === 'json' ? JSON.parse(text) : jsyaml.load(text);
      if (!spec || typeof spec !== 'object' || Array.isArray(spec)) throw new Error('the spec must be a mapping of fields');
      return spec;
    }

    function showSpec(spec) {
      textarea.value = format === 'json' ? JSON.stringify(spec, null, 2) : jsyaml.dump(spec, { lineWidth: 100 });
    }

    formatSelect.addEventListener('change', () => {
      errors.textContent = '';
      let spec;
      try {
        spec = textarea.value.trim() ? parseSpec() : null;
      } catch (e) {
        formatSelect.value = format;
        errors.textContent = `Fix the ${format.toUpperCase()} before switching: ${e.message}`;
        return;
      }
      format = formatSelect.value;
      if (spec) showSpec(spec);
    });

    templateSelect.addEventListener('change', async () => {
      errors.textContent = '';
      if (!templateSelect.value) return;
      try {
        showSpec(await api('GET', `/v1/templates/${encodeURIComponent(templateSelect.value)}`));
      } catch (e) {
        errors.textContent = `Could not load template: ${e.message}`;
      }
    });

    const form = el('form', { class: 'card', id: 'submit-form' },
      el('h2', {}, 'Submit a job'),
      el('div', { class: 'row' }, el('span', { class: 'muted' }, 'start from template'), templateSelect,
        el('span', { class: 'muted' }, 'edit as'), formatSelect),
      el('p', {}, textarea), errors, el('div', { class: 'row' }, submit));

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      errors.textContent = '';
      let spec;
      try {
        spec = parseSpec();
      } catch (e) {
        errors.textContent = `The spec is not valid ${format.toUpperCase()}: ${e.message}`;
        return;
      }
      submit.disabled = true;
      try {
        const job = await api('POST', '/v1/jobs', spec);
        location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (e) {
        errors.textContent = e.status === 422 ? `The server refused the spec:\n${e.message}` : e.message;
      } finally {
        submit.disabled = false;
      }
    });

    (async () => {
      try {
        const body = await api('GET', '/v1/templates');
        const items = Array.isArray(body) ? body : body.items;
        const names = items.map((t) => (typeof t === 'string' ? t : t.name));
        templateSelect.replaceChildren(el('option', { value: '' }, '(choose)'), ...names.map((n) => el('option', { value: n }, n)));
        if (names.length) {
          templateSelect.value = names[0];
          templateSelect.dispatchEvent(new Event('change'));
        }
      } catch (e) {
        templateSelect.replaceChildren(el('option', { value: '' }, 'no templates'));
      }
    })();
    return form;
  }

  // ---------------------------------------------------------------- job page

  function renderJob(id, gen) {
    const state = { job: null, after: null, steps: [], hyperAt: 0, hyperMetaIter: null, polling: true, initial: new Map() };
    window.revtuneDashboard.state = state;
    const title = el('h1', {}, 'job ', id);
    const summary = el('div', { class: 'summary', id: 'job-summary' });
    const errorBox = el('pre', { class: 'errors', id: 'job-error' });
    const actionError = el('pre', { class: 'errors', id: 'job-action-error' });
    const warningList = el('ul', {});
    const warningBox = el('section', { class: 'card warnings', id: 'job-warnings', hidden: true },
      el('h2', {}, 'Warnings'), warningList);
    const cancel = el('button', { class: 'danger', id: 'cancel-job', disabled: true }, 'Cancel');
    const remove = el('button', { class: 'danger', id: 'delete-job', title: 'delete the job with its steps, hyperparameters and checkpoint' }, 'Delete');
    const live = el('span', { class: 'muted', id: 'poll-state', 'data-polling': 'on' }, 'live');
    const specView = el('pre', { class: 'spec-view', id: 'spec-view' });
    const hyperGrid = el('div', { class: 'charts', id: 'hyper-charts' });
    const curveNote = el('p', { class: 'diverged-note', id: 'curve-diverged', hidden: true });
    const hypergradNote = el('p', { class: 'diverged-note', id: 'hypergrad-missing', hidden: true });
    const curveCard = chartCard('curve', 'Meta-learning curve', 'objective and losses after each meta-iteration');
    const hypergradCard = chartCard('hypergrad', 'Hypergradient norm', '‖∂objective/∂hyperparameters‖ per meta-iteration (log scale)');
    curveCard.append(curveNote);
    hypergradCard.append(hypergradNote);

    cancel.addEventListener('click', async () => {
      cancel.disabled = true;
      try {
        state.job = await api('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`);
        drawSummary();
      } catch (e) {
        errorBox.textContent = `Cancel failed: ${e.message}`;
      }
    });

    remove.addEventListener('click', async () => {
      actionError.textContent = '';
      const name = state.job ? `${state.job.name} (${id})` : id;
      if (!window.confirm(`Delete job ${name} with its steps, hyperparameters and checkpoint? This cannot be undone.`)) return;
      remove.disabled = true;
      try {
        await api('DELETE', `/v1/jobs/${encodeURIComponent(id)}`);
        selectedJobs.delete(id);
        location.hash = '#/';
      } catch (e) {
        actionError.textContent = failure('Delete failed', e);  // 409 while queued or running: the API says to cancel first
      } finally {
        remove.disabled = false;
      }
    });

    view.append(
      el('div', { class: 'row' }, el('a', { href: '#/' }, '← all jobs')),
      title,
      el('section', { class: 'card' }, summary, errorBox, el('div', { class: 'row' }, cancel, remove, live), actionError),
      warningBox,
      el('div', { class: 'charts', id: 'curve-charts' }, curveCard, hypergradCard),
      el('h2', { style: 'margin-top:1rem' }, 'Learned hyperparameters'),
      el('p', { class: 'muted', id: 'hyper-meta-iter' }, 'waiting for the first meta-iteration…'),
      hyperGrid,
      downloadCard(id, state),
      el('details', { class: 'card' }, el('summary', {}, 'spec'), specView));

    charts.curve = new Chart(document.querySelector('#chart-curve canvas'), {
      type: 'line',
      data: { labels: [], datasets: [...['objective', 'train_loss', 'valid_loss', 'test_loss'].map((k, i) => ({
        label: k, data: [], borderColor: PALETTE[i], backgroundColor: PALETTE[i], borderWidth: k === 'objective' ? 2.5 : 1.5,
        pointRadius: isolatedRadius, spanGaps: false })),
      markerDataset('diverged', 'diverged: the objective or a loss was not finite (a gap in the curves)')] },
      options: withMarks(lineOptions('meta-iteration', null)),
      plugins: [divergedBands],
    });
    charts.hypergrad = new Chart(document.querySelector('#chart-hypergrad canvas'), {
      type: 'line',
      data: { labels: [], datasets: [{ label: 'hypergradient norm', data: [], borderColor: PALETTE[4], backgroundColor: PALETTE[4],
        pointRadius: isolatedRadius, spanGaps: false },
      markerDataset('not finite', 'no finite hypergradient norm at this meta-iteration (a gap in the line)')] },
      options: withMarks(lineOptions('meta-iteration', null, 'logarithmic')),
      plugins: [divergedBands],
    });

    function drawSummary() {
      const job = state.job;
      title.replaceChildren(job.name, ' ', statusBadge(job.status), ...originBadge(job));
      const best = job.best ? `${fmt(job.best.objective)} (meta-iteration ${job.best.meta_iter})` : '–';
      const cells = [
        ['status', statusBadge(job.status)], ['progress', progressBar(job)], ['best objective', best],
        ['training', trainingOf(job.spec)], ['meta-optimizer', metaOf(job.spec)],
        ['objective', job.spec && job.spec.objective], ['validation', validationOf(job.spec)],
        ['created', when(job.created_at)], ['started', when(job.started_at)], ['finished', when(job.finished_at)],
        ['id', job.id],
      ];
      summary.replaceChildren(...cells.map(([k, v]) => el('div', {}, el('span', {}, k), v == null ? '–' : v)));
      if (job.spec && job.spec.dataset && job.spec.dataset.resplit) {
        document.querySelector('#chart-curve .caption').textContent =
          'objective and losses after each meta-iteration; train and valid on that meta-iteration\'s own re-split';
      }
      errorBox.textContent = job.error || '';
      warningList.replaceChildren(...warningItems(job));
      warningBox.hidden = !warningList.children.length;
      cancel.disabled = TERMINAL.has(job.status);
      if (!specView.textContent) specView.textContent = JSON.stringify(job.spec, null, 2);
    }

    async function fetchSteps() {
      for (;;) {
        const q = state.after === null ? '' : `?after=${state.after}`;
        const page = await api('GET', `/v1/jobs/${encodeURIComponent(id)}/steps${q}`);
        if (gen !== generation) return;
        if (page.items.length) {
          state.steps.push(...page.items);
          state.after = page.items[page.items.length - 1].meta_iter;
          drawCurves();
        }
        if (page.next_after === null || page.next_after === undefined || !page.items.length) return;
      }
    }

    // The curves over all the steps so far: a later step can tell that a loss is reported at all,
    // and so that an earlier null was a divergence.
    function drawCurves() {
      const steps = state.steps;
      const labels = steps.map((s) => s.meta_iter);
      const diverged = divergedSteps(steps);
      const normed = steps.some((s) => s.hypergrad_norm != null);
      const noNorm = steps.map((s, i) => s.hypergrad_norm == null && (diverged[i] || normed));
      fillCurves(charts.curve, labels, (key) => steps.map((s) => s[key]), diverged);
      fillCurves(charts.hypergrad, labels, () => steps.map((s) => s.hypergrad_norm), noNorm);
      const bad = labels.filter((_, i) => diverged[i]);
      showMarks(curveNote, bad, (list) => `✕ diverged at meta-iteration${bad.length > 1 ? 's' : ''} ${list}: `
        + 'the objective or a loss was not finite; left as gaps in the curves, not bridged.');
      const missing = labels.filter((_, i) => noNorm[i]);
      showMarks(hypergradNote, missing, (list) => (missing.length === steps.length
        ? `✕ no finite hypergradient norm yet (meta-iteration${missing.length > 1 ? 's' : ''} ${list}).`
        : `✕ ${missing.length} of ${steps.length} meta-iterations had no finite norm (${list}): gaps in the line.`));
    }

    async function fetchHyper() {
      state.hyperAt = Date.now();
      const index = await api('GET', `/v1/jobs/${encodeURIComponent(id)}/hyperparameters`);
      if (gen !== generation) return;
      const values = await Promise.all(index.items.map((h) => Promise.all([
        api('GET', `/v1/jobs/${encodeURIComponent(id)}/hyperparameters/${encodeURIComponent(h.name)}?format=json&meta_iter=${index.meta_iter}`),
        initialOf(h),
      ]).then(([v, initial]) => Object.assign(v, { learned: h.learned, initial }))));
      if (gen !== generation) return;
      state.hyperMetaIter = index.meta_iter;
      // The values after the latest update, which no meta-iteration has trained with yet; the best
      // objective's are snapshot best.meta_iter (download which=best).
      const best = state.job && state.job.best ? state.job.best.meta_iter : null;
      const bestNote = best == null || best === index.meta_iter ? ''
        : `; the best objective's values are snapshot ${best} (download with which = best)`;
      document.getElementById('hyper-meta-iter').textContent =
        `after meta-iteration ${index.meta_iter}${state.job && !TERMINAL.has(state.job.status) ? ' (updating)' : ''}`
        + ` (the latest values, not yet evaluated${bestNote})`;
      const model = modelContext(state.job && state.job.spec, index);
      model.jobId = id;  // example_weight reads its examples back by the job's rows
      for (const hp of values) drawHyper(hyperGrid, hp, model);
    }

    // A learned hyperparameter's initial value, for the reference line on its chart: the snapshot
    // at meta_iter 0, which the worker stores for the jobs it runs from now on. Asked once per name;
    // null where there is none (404: a job from before, or a value not drawn as a chart).
    function initialOf(h) {
      if (!h.learned || !charted(h.axes || []) || isExampleWeights(h)) return Promise.resolve(null);
      if (!state.initial.has(h.name)) {
        const path = `/v1/jobs/${encodeURIComponent(id)}/hyperparameters/${encodeURIComponent(h.name)}?format=json&meta_iter=0`;
        state.initial.set(h.name, api('GET', path).catch((e) => {
          if (e.status !== 404) state.initial.delete(h.name);  // ask again next time
          return null;
        }));
      }
      return state.initial.get(h.name);
    }

    (async function poll() {
      while (gen === generation) {
        try {
          state.job = await api('GET', `/v1/jobs/${encodeURIComponent(id)}`);
          if (gen !== generation) return;
          drawSummary();
          await fetchSteps();
          const done = TERMINAL.has(state.job.status);
          const stale = state.hyperMetaIter !== state.job.meta_iter && Date.now() - state.hyperAt > HYPER_REFRESH_MS;
          if (state.job.meta_iter > 0 && (done || stale)) await fetchHyper();
          if (done) {
            state.polling = false;
            live.textContent = `${state.job.status}: polling stopped`;
            live.dataset.polling = 'stopped';
            return;
          }
        } catch (e) {
          if (gen !== generation) return;
          if (e.status === 404) {
            errorBox.textContent = `No job ${id} (or it belongs to another API key).`;
            live.dataset.polling = 'stopped';
            return;
          }
          errorBox.textContent = `Polling failed, retrying: ${e.message}`;
        }
        await sleep(JOB_POLL_MS);
      }
    })();
  }

  // Which steps diverged: a null objective, or a null loss that other steps report (test_loss is null
  // at every step of a job without test examples, which is no divergence).
  function divergedSteps(steps) {
    const reported = ['train_loss', 'valid_loss', 'test_loss'].filter((k) => steps.some((s) => s[k] != null));
    return steps.map((s) => s.objective == null || reported.some((k) => s[k] == null));
  }

  function fillCurves(chart, labels, valuesOf, marked) {
    chart.data.labels = labels;
    for (const d of chart.data.datasets) {
      if (d.revtuneRole === 'diverged') {
        d.data = marked.map((m) => (m ? MARK_Y : null));
        d.legendHidden = !marked.some(Boolean);  // in the legend once there is a mark to explain
      } else {
        d.data = valuesOf(d.label);
      }
    }
    chart.update('none');
  }

  function showMarks(note, iters, text) {
    note.hidden = !iters.length;
    note.dataset.metaIters = iters.join(',');
    if (!iters.length) { note.textContent = ''; return; }
    const list = iters.length > 12 ? `${iters.slice(0, 12).join(', ')}, … (${iters.length} in all)` : iters.join(', ');
    note.textContent = text(list);
  }

  // The red crosses at a chart's foot (on their own hidden 0..1 axis, whatever the chart's scale).
  function markerDataset(label, tooltip) {
    return { label, data: [], revtuneRole: 'diverged', tooltipText: tooltip, yAxisID: 'marks', showLine: false,
      pointStyle: 'crossRot', pointRadius: 7, pointHoverRadius: 8, pointBorderWidth: 2.5, borderColor: DIVERGED,
      backgroundColor: DIVERGED, legendPointStyle: 'crossRot', clip: false };
  }

  function withMarks(options) {
    options.scales.marks = { type: 'linear', axis: 'y', display: false, min: 0, max: 1 };
    return options;
  }

  // A light red band over each marked meta-iteration, under the lines.
  const divergedBands = {
    id: 'divergedBands',
    beforeDatasetsDraw(chart) {
      const index = chart.data.datasets.findIndex((d) => d.revtuneRole === 'diverged');
      const n = chart.data.labels.length;
      if (index < 0 || !n || !chart.isDatasetVisible(index)) return;
      const { ctx, chartArea: area, scales: { x } } = chart;
      const half = n > 1 ? Math.abs(x.getPixelForValue(1) - x.getPixelForValue(0)) / 2 : area.width / 2;
      ctx.save();
      ctx.fillStyle = 'rgba(194, 59, 48, 0.12)';
      chart.data.datasets[index].data.forEach((v, i) => {
        if (v == null) return;
        const px = x.getPixelForValue(i);
        const left = Math.max(area.left, px - half);
        const right = Math.min(area.right, px + half);
        ctx.fillRect(left, area.top, right - left, area.bottom - area.top);
      });
      ctx.restore();
    },
  };

  // A point with a gap on both sides is drawn as a dot: a line through radius-0 points would hide it.
  function isolatedRadius(ctx) {
    const data = ctx.dataset.data;
    const i = ctx.dataIndex;
    if (i === undefined || data[i] == null) return 0;
    return (i === 0 || data[i - 1] == null) && (i === data.length - 1 || data[i + 1] == null) ? 3 : 0;
  }

  // The download control: which values (best, last or a meta-iteration) in which format, through
  // GET /v1/jobs/{id}/export, fetched with the API key and saved from an object URL.
  function downloadCard(id, state) {
    const which = el('select', { id: 'download-which', title: WHICH_HELP },
      el('option', { value: 'best' }, 'best'), el('option', { value: 'last' }, 'last'), el('option', { value: 'meta_iter' }, 'meta-iteration…'));
    const iter = el('input', { type: 'number', id: 'download-meta-iter', min: 0, step: 1, hidden: true, placeholder: 'k',
      title: 'the values at this meta_iter (0: the initial values, where stored)', style: 'width:6rem' });
    const to = el('select', { id: 'download-to', title: 'npz: numpy arrays by name; optax: for an optax training loop; pytorch: for a PyTorch one' },
      Object.keys(EXPORT_FORMATS).map((f) => el('option', { value: f }, f)));
    const go = el('button', { id: 'download-job', type: 'button', class: 'secondary' }, 'Download');
    const errors = el('pre', { class: 'errors', id: 'download-errors' });
    which.addEventListener('change', () => { iter.hidden = which.value !== 'meta_iter'; });
    go.addEventListener('click', async () => {
      errors.textContent = '';
      const choice = which.value === 'meta_iter' ? iter.value.trim() : which.value;
      if (!/^(best|last|\d+)$/.test(choice)) {
        errors.textContent = 'Enter the meta-iteration whose values to download (a whole number, 0 or more).';
        return;
      }
      const path = `/v1/jobs/${encodeURIComponent(id)}/export?which=${encodeURIComponent(choice)}&to=${encodeURIComponent(to.value)}`;
      const name = `${(state.job && state.job.name) || id}-${choice}-${to.value}.${EXPORT_FORMATS[to.value]}`;
      go.disabled = true;
      try {
        go.dataset.saved = await downloadFile(path, name);
      } catch (e) {
        errors.textContent = failure('Download failed', e);
      } finally {
        go.disabled = false;
      }
    });
    return el('section', { class: 'card', id: 'job-download' },
      el('div', { class: 'row' }, el('h2', {}, 'Download hyperparameters'),
        el('span', { class: 'muted' }, 'which'), which, iter, el('span', { class: 'help', title: WHICH_HELP }, '?'),
        el('span', { class: 'muted' }, 'as'), to, go),
      errors);
  }

  // ---------------------------------------------------------------- compare: "#/compare/<id>,<id>,..."

  // Two or more jobs side by side: their meta-learning curves (the objective per meta-iteration) on
  // one chart, and a hyperparameter they share after each one's latest stored meta-iteration (a
  // schedule along the step axis for a chosen layer, or a value per layer), one colour per job.
  function renderCompare(ids, gen) {
    const legend = el('ul', { class: 'compare-legend', id: 'compare-legend' });
    const errorBox = el('pre', { class: 'errors', id: 'compare-error' });
    const nameSelect = el('select', { id: 'compare-hyper' });
    const layerSelect = el('select', { id: 'compare-layer', hidden: true });
    const hyperNote = el('p', { class: 'caption', id: 'compare-hyper-note' });
    const curveCard = chartCard('compare-curve', 'Meta-learning curves',
      'the objective after each meta-iteration, one colour per job; gaps where it was not finite');
    const hyperCard = el('div', { class: 'chart-card', id: 'chart-compare-hyper' },
      el('div', { class: 'row' }, el('h2', {}, 'Learned hyperparameter'), nameSelect, layerSelect),
      el('div', { class: 'chart-box' }, el('canvas')), hyperNote);
    view.append(
      el('div', { class: 'row' }, el('a', { href: '#/' }, '← all jobs')),
      el('h1', {}, `Compare ${ids.length} jobs`),
      el('section', { class: 'card' }, legend, errorBox),
      el('div', { class: 'charts', id: 'compare-charts' }, curveCard, hyperCard));
    if (ids.length < 2) errorBox.textContent = 'Tick two or more jobs in the jobs table, then "Compare selected".';

    async function allSteps(id) {
      const steps = [];
      for (let after = null; ;) {
        const page = await api('GET', `/v1/jobs/${encodeURIComponent(id)}/steps${after === null ? '' : `?after=${after}`}`);
        steps.push(...page.items);
        if (page.next_after == null || !page.items.length) return steps;
        after = page.items[page.items.length - 1].meta_iter;
      }
    }

    async function load(id) {
      const enc = encodeURIComponent(id);
      const [job, steps, index] = await Promise.all([
        api('GET', `/v1/jobs/${enc}`), allSteps(id), api('GET', `/v1/jobs/${enc}/hyperparameters`)]);
      return { job, steps, index, values: new Map() };
    }

    (async () => {
      const settled = await Promise.allSettled(ids.map(load));
      if (gen !== generation) return;
      const runs = settled.filter((r) => r.status === 'fulfilled').map((r) => r.value);
      const failed = settled.map((r, i) => (r.status === 'rejected' ? failure(`Could not read job ${ids[i]}`, r.reason) : null)).filter(Boolean);
      if (failed.length) errorBox.textContent = failed.join('\n');
      const names = runs.map((r) => r.job.name);
      runs.forEach((r, j) => {
        r.color = PALETTE[j % PALETTE.length];
        r.label = names.filter((n) => n === r.job.name).length > 1 ? `${r.job.name} (${r.job.id.slice(0, 8)})` : r.job.name;
      });
      legend.replaceChildren(...runs.map((r) => el('li', { 'data-job-id': r.job.id },
        el('span', { class: 'swatch', style: `background:${r.color}` }), el('a', { href: `#/jobs/${encodeURIComponent(r.job.id)}` }, r.label),
        ' ', statusBadge(r.job.status), ' ', el('span', { class: 'muted' },
          `best ${r.job.best ? `${fmt(r.job.best.objective)} at meta-iteration ${r.job.best.meta_iter}` : '–'}, ${r.job.meta_iter}/${r.job.meta_iterations} meta-iterations`))));
      drawCurves(runs);
      offerShared(runs);
    })();

    function drawCurves(runs) {
      const n = Math.max(0, ...runs.map((r) => (r.steps.length ? r.steps[r.steps.length - 1].meta_iter + 1 : 0)));
      const labels = Array.from({ length: n }, (_, k) => k);
      const datasets = runs.map((r) => {
        const data = labels.map(() => null);
        for (const s of r.steps) data[s.meta_iter] = s.objective;
        return { label: r.label, data, borderColor: r.color, backgroundColor: r.color, borderWidth: 2, pointRadius: isolatedRadius, spanGaps: false };
      });
      charts.compareCurve = new Chart(document.querySelector('#chart-compare-curve canvas'),
        { type: 'line', data: { labels, datasets }, options: lineOptions('meta-iteration', 'objective') });
    }

    // The hyperparameters every job has, with the same axes, that a chart can overlay.
    function offerShared(runs) {
      const byName = runs.map((r) => new Map(r.index.items.map((h) => [h.name, h])));
      const shared = runs.length ? runs[0].index.items.filter((h) => {
        const axes = h.axes || [];
        return (charted(axes) || !axes.length)
          && byName.every((m) => m.has(h.name) && (m.get(h.name).axes || []).join(',') === axes.join(','));
      }).map((h) => h.name) : [];
      nameSelect.replaceChildren(...shared.map((n) => el('option', { value: n }, n)));
      if (!shared.length) {
        nameSelect.hidden = true;
        hyperNote.textContent = runs.length > 1 ? 'These jobs share no hyperparameter to overlay (the same name with the same axes).' : '';
        return;
      }
      if (shared.includes('learning_rate')) nameSelect.value = 'learning_rate';
      nameSelect.addEventListener('change', () => drawShared(runs, true));
      layerSelect.addEventListener('change', () => drawShared(runs, false));
      drawShared(runs, true);
    }

    function valueOf(r, name) {
      if (!r.values.has(name)) {
        r.values.set(name, api('GET', `/v1/jobs/${encodeURIComponent(r.job.id)}/hyperparameters/${encodeURIComponent(name)}?format=json`));
      }
      return r.values.get(name);
    }

    async function drawShared(runs, nameChanged) {
      const name = nameSelect.value;
      let values;
      try {
        values = await Promise.all(runs.map((r) => valueOf(r, name)));
      } catch (e) {
        if (gen === generation) hyperNote.textContent = failure(`Could not read ${name}`, e);
        return;
      }
      if (gen !== generation || nameSelect.value !== name) return;
      const axes = values[0].axes || [];
      const stepAxis = axes.indexOf('step');
      const across = stepAxis >= 0 ? (axes.length === 2 ? axes[1 - stepAxis] : null) : axes[0] || null;
      // the labels of the other axis that every job has (the layers they share)
      const common = across ? labelsFor(values[0], across).filter((l) => values.every((v) => labelsFor(v, across).includes(l))) : [];
      if (nameChanged) {
        layerSelect.replaceChildren(...common.map((l) => el('option', { value: l }, l)));
        layerSelect.hidden = !(stepAxis >= 0 && across);
      }
      const at = `after meta-iteration ${values.map((v) => v.meta_iter).join(', ')} (each job's latest stored)`;
      let config;
      if (stepAxis >= 0) {
        const layer = layerSelect.value;
        const steps = Math.max(...values.map((v) => v.shape[stepAxis]));
        const datasets = values.map((v, j) => {
          const k = across ? labelsFor(v, across).indexOf(layer) : -1;
          const data = Array.from({ length: v.shape[stepAxis] }, (_, t) => (!across ? v.values[t] : stepAxis === 0 ? v.values[t][k] : v.values[k][t]));
          return { label: runs[j].label, data: across && k < 0 ? [] : data, borderColor: runs[j].color, backgroundColor: runs[j].color,
            borderWidth: 1.75, pointRadius: isolatedRadius, spanGaps: false };
        });
        config = { type: 'line', data: { labels: Array.from({ length: steps }, (_, t) => t), datasets },
          options: lineOptions('step', across ? `${name}, ${layer}` : name) };
        hyperNote.textContent = `${name}${across ? ` of ${across} ${layer}` : ''} along the training steps, ${at}`;
      } else {
        const labels = across ? common : [name];
        const datasets = values.map((v, j) => ({
          label: runs[j].label, backgroundColor: runs[j].color, borderColor: runs[j].color,
          data: across ? labels.map((l) => v.values[labelsFor(v, across).indexOf(l)]) : [Number(v.values)],
        }));
        config = { type: 'bar', data: { labels, datasets }, options: lineOptions(across || '', name) };
        hyperNote.textContent = `${name}${across ? ` per ${across}` : ''}, ${at}`;
      }
      hyperCard.dataset.hyper = name;
      hyperCard.dataset.layer = stepAxis >= 0 && across ? layerSelect.value : '';
      upsertChart('chart-compare-hyper', config);
    }
  }

  // How the job validates: one split, or a new one every meta-iteration (dataset.resplit).
  function validationOf(spec) {
    if (!spec || !spec.dataset) return null;
    return spec.dataset.resplit ? 're-split every meta-iteration' : 'one fixed split';
  }

  // The optimizer that trains the model (training.optimizer, reversed exactly), told apart from the
  // one that tunes the hyperparameters (meta.optimizer).
  const TRAINING_OPTIMIZERS = { sgd_momentum: 'SGD with momentum', adam: 'Adam', adamw: 'AdamW' };

  function trainingOf(spec) {
    if (!spec || !spec.training) return null;
    const name = spec.training.optimizer || 'sgd_momentum';
    const span = el('span', { 'data-training-optimizer': name }, TRAINING_OPTIMIZERS[name] || name);
    return el('span', {}, span, `, ${spec.training.steps} steps`);
  }

  function metaOf(spec) {
    if (!spec) return null;
    const meta = spec.meta || {};
    return `${meta.optimizer || 'adam'}, step ${meta.learning_rate != null ? meta.learning_rate : 0.04}`;
  }

  function chartCard(name, title, caption) {
    return el('div', { class: 'chart-card', id: `chart-${name}` },
      el('h2', {}, title), el('div', { class: 'chart-box' }, el('canvas')), caption ? el('p', { class: 'caption' }, caption) : null);
  }

  function lineOptions(xTitle, yTitle, yType) {
    return {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: 'nearest', intersect: false },
      plugins: {
        legend: { position: 'bottom', labels: { usePointStyle: true, pointStyle: 'line', generateLabels: legendLabels } },
        tooltip: { callbacks: { label: tooltipLabel } },
      },
      scales: {
        x: { title: { display: true, text: xTitle }, ticks: { maxTicksLimit: 11 } },
        y: { type: yType || 'linear', title: { display: !!yTitle, text: yTitle || '' } },
      },
    };
  }

  // Chart.js's legend, less the datasets marked legendHidden, with a dataset's own legendText and
  // legendPointStyle (the red cross of the diverged marks) where it gives them.
  function legendLabels(chart) {
    return Chart.defaults.plugins.legend.labels.generateLabels(chart)
      .filter((item) => !chart.data.datasets[item.datasetIndex].legendHidden)
      .map((item) => {
        const d = chart.data.datasets[item.datasetIndex];
        if (d.legendPointStyle) item.pointStyle = d.legendPointStyle;
        if (d.legendText) item.text = d.legendText;
        return item;
      });
  }

  function tooltipLabel(ctx) {
    return ctx.dataset.tooltipText || `${ctx.dataset.label}: ${fmt(ctx.parsed.y)}`;
  }

  // ---------------------------------------------------------------- hyperparameter rendering

  const HYPER_TITLES = {
    learning_rate: 'Learning-rate schedule',
    momentum: 'Momentum schedule',
    beta1: 'Adam beta1 schedule',
    beta2: 'Adam beta2 schedule',
    weight_decay: 'Weight decay (AdamW)',
    init_scale: 'Initial weight scales',
    l2: 'L2 penalties',
    training_data: 'Learned training examples',
    sharing: 'Sharing across tasks (T)',
    example_weight: 'Example weights',
  };

  function labelsFor(hp, axis) {
    const i = hp.axes.indexOf(axis);
    const n = hp.shape[i];
    const given = hp.labels && hp.labels[axis];
    return Array.from({ length: n }, (_, j) => (given && given[j] !== undefined ? String(given[j]) : `${axis} ${j}`));
  }

  function product(sizes) { return sizes.reduce((a, b) => a * b, 1); }

  // What the page knows of the job's model to draw its hyperparameters: its kind, the shape of one
  // input example and the shape of each parameter array, for labels (the listing's example_shape and
  // parameter_shapes, as the engine builds them; null for an upload since deleted).
  const CONV_KINDS = new Set(['cnn', 'cnn1d']);

  function modelContext(spec, index) {
    const model = (spec && spec.model) || {};
    const example = Array.isArray(index.example_shape) ? index.example_shape : null;
    const shapes = { ...(index.parameter_shapes || {}) };
    // a multi-task net's arrays hold one slice per task: label them by a task's slice
    if (model.kind === 'multitask_mlp') for (const k of Object.keys(shapes)) shapes[k] = shapes[k].slice(1);
    return { kind: model.kind, example, shapes };
  }

  // "conv0.W (3x3, 1→8)", "conv1.W (5-tap, 16→16)", "conv0.b (8)", "layer0.W (64→32)": the raw
  // name, by which the API addresses the array, then its sizes where the page knows them.
  function arrayLabel(name, model) {
    const shape = model && model.shapes[name];
    if (!shape) return name;
    if (shape.length === 1) return `${name} (${shape[0]})`;
    const flow = shape.slice(-2).join('→');
    if (shape.length === 2) return `${name} (${flow})`;
    const taps = shape.slice(0, -2);
    return `${name} (${taps.length === 1 ? `${taps[0]}-tap` : taps.join('x')}, ${flow})`;
  }

  // The picture that axis i of hp holds, { height, width, channels }, or null. Only an axis that
  // enumerates the features of one input example is one: training_data's "feature", and the "in" axis
  // of a dense model's first layer (a convolutional model's dense layers take feature maps, not
  // pixels); and only for examples with two spatial axes (an 8x8x1 digit, not a 40-point MNIST-1D
  // sequence). Without an example shape (older jobs), a square axis of at least 8x8 is one.
  function pictureOf(hp, i, model) {
    const axis = hp.axes[i];
    const array = hp.name.slice(hp.name.indexOf('.') + 1);
    if (axis !== 'feature' && !(axis === 'in' && array === 'layer0.W' && !CONV_KINDS.has(model.kind))) return null;
    const n = hp.shape[i];
    if (!model.example) {
      const s = Math.round(Math.sqrt(n));
      return s >= 8 && s * s === n ? { height: s, width: s, channels: 1 } : null;
    }
    if (model.example.length < 2 || model.kind === 'cnn1d') return null;
    const [height, width, ...rest] = model.example;
    const channels = product(rest);
    return height * width * channels === n ? { height, width, channels } : null;
  }

  // A convolution's kernel-shaped value: axes (row, col, in, out), or (tap, in, out) in 1-D.
  function isKernel(axes) {
    const key = axes.join(',');
    return key === 'row,col,in,out' || key === 'tap,in,out';
  }

  function flatten(values) { return Array.isArray(values) ? values.flat(Infinity) : [values]; }

  function drawHyper(grid, hp, model) {
    const name = hp.name;
    const cardId = `hyper-${name.replace(/[^A-Za-z0-9_-]/g, '-')}`;
    let card = document.getElementById(cardId);
    // Per-weight kinds come as one array per parameter array, named "<kind>.<array>" (e.g. l2.layer0.W).
    const dot = name.indexOf('.');
    const kind = dot < 0 ? name : name.slice(0, dot);
    const base = HYPER_TITLES[kind] || kind;
    const title = `${dot < 0 ? base : `${base}: ${arrayLabel(name.slice(dot + 1), model)}`}${hp.learned ? '' : ' (fixed)'}`;
    const axes = hp.axes || [];
    const stepAxis = axes.indexOf('step');
    const caption = `shape [${hp.shape.join(', ')}], axes [${axes.join(', ')}]`;

    // the initial values where the job has them (a snapshot at meta_iter 0) and they fit this one
    const initial = hp.initial && sameShape(hp.initial.shape, hp.shape) ? hp.initial : null;
    const reference = initial ? `; dashed grey: ${INITIAL_LABEL}` : '';

    if (isExampleWeights(hp)) {
      card = drawExampleWeights(grid, card, cardId, title, hp, model);
    } else if (stepAxis >= 0 && axes.length <= 2) {
      card = ensureChartCard(grid, card, cardId, title, caption + reference);
      drawSchedule(cardId, hp, stepAxis, model, initial);
    } else if (axes.length === 1) {
      card = ensureChartCard(grid, card, cardId, title, caption + reference);
      drawBars(cardId, hp, model, initial);
    } else if (axes.length === 0) {
      card = replaceCard(grid, card, cardId, title, caption, el('div', { class: 'scalar' }, fmt(num(hp.values))));
    } else if (kind === 'sharing' && axes.length === 2 && hp.shape[0] === hp.shape[1]) {
      card = replaceCard(grid, card, cardId, title, caption, drawSharing(hp));
    } else if (isKernel(axes)) {
      card = replaceCard(grid, card, cardId, title, caption, drawKernels(hp));
    } else {
      card = replaceCard(grid, card, cardId, title, caption, drawImagesOrSummary(hp, model));
    }
    card.dataset.metaIter = hp.meta_iter;
  }

  // A value drawn as a chart: a schedule over steps (per layer or not), or one value per layer.
  function charted(axes) {
    return (axes.includes('step') && axes.length <= 2) || axes.length === 1;
  }

  function sameShape(a, b) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((n, i) => n === b[i]);
  }

  function ensureChartCard(grid, card, cardId, title, caption) {
    if (card && card.querySelector('canvas.chart')) {
      card.querySelector('.caption').textContent = caption;
      return card;
    }
    const fresh = el('div', { class: 'chart-card', id: cardId },
      el('h2', {}, title), el('div', { class: 'chart-box' }, el('canvas', { class: 'chart' })), el('p', { class: 'caption' }, caption));
    if (card) card.replaceWith(fresh); else grid.append(fresh);
    return fresh;
  }

  function replaceCard(grid, card, cardId, title, caption, body) {
    if (charts[cardId]) { charts[cardId].destroy(); delete charts[cardId]; }
    const fresh = el('div', { class: 'chart-card', id: cardId }, el('h2', {}, title), body, el('p', { class: 'caption' }, caption));
    if (card) card.replaceWith(fresh); else grid.append(fresh);
    return fresh;
  }

  function upsertChart(cardId, config) {
    return upsertChartOn(cardId, document.querySelector(`#${cardId} canvas`), config);
  }

  // One line per layer over steps, like Figure 2 of the paper (biases dashed), each labelled with its
  // array's name and sizes; the initial schedule, where known, as dashed grey reference lines (one
  // line when every layer started alike, else one per layer in its colour).
  function drawSchedule(cardId, hp, stepAxis, model, initial) {
    const steps = hp.shape[stepAxis];
    const xs = Array.from({ length: steps }, (_, t) => t);
    const other = hp.axes.length === 1 ? null : hp.axes[1 - stepAxis];
    const names = other ? labelsFor(hp, other) : [hp.name];
    const seriesOf = (values) => names.map((name, j) => ({
      name,
      label: !other ? hp.name : other === 'layer' ? arrayLabel(name, model) : name,
      data: !other ? values : xs.map((t) => (stepAxis === 0 ? values[t][j] : values[j][t])),
    }));
    const datasets = seriesOf(hp.values).map((s, j) => ({
      label: s.label, data: s.data, borderColor: PALETTE[j % PALETTE.length], backgroundColor: PALETTE[j % PALETTE.length],
      borderWidth: 1.5, pointRadius: isolatedRadius, borderDash: /(^|[._])(b|bias)$/i.test(s.name) ? [5, 3] : [],
    }));
    if (initial) {
      const start = seriesOf(initial.values);
      const alike = start.every((s) => s.data.every((x, t) => x === start[0].data[t]));
      (alike ? start.slice(0, 1) : start).forEach((s, j) => datasets.push({
        label: alike ? INITIAL_LABEL : `${s.label}: initial`, data: s.data, revtuneRole: 'initial',
        borderColor: alike ? INITIAL_COLOR : PALETTE[j % PALETTE.length], backgroundColor: alike ? INITIAL_COLOR : PALETTE[j % PALETTE.length],
        borderWidth: 1.25, pointRadius: 0, borderDash: INITIAL_DASH,
        legendHidden: !alike && j > 0, legendText: alike ? null : `${INITIAL_LABEL}, per layer`,
      }));
    }
    const options = lineOptions('step', hp.name);
    if (initial) options.scales.y.grace = '5%';  // a flat initial line off the chart's edge
    upsertChart(cardId, { type: 'line', data: { labels: xs, datasets }, options });
  }

  // One bar per layer; the initial values, where known, as a dashed grey step line across the bars.
  function drawBars(cardId, hp, model, initial) {
    const axis = hp.axes[0];
    const names = labelsFor(hp, axis).map((name) => (axis === 'layer' ? arrayLabel(name, model) : name));
    const colors = names.map((_, j) => PALETTE[j % PALETTE.length]);
    const options = lineOptions(axis, hp.name);
    options.plugins.legend.display = !!initial;
    const datasets = [{ label: hp.name, data: hp.values, backgroundColor: colors, legendHidden: true }];
    if (initial) {
      // no line from bar to bar: barLevels draws a dash across each bar at its initial value
      datasets.push({ type: 'line', label: INITIAL_LABEL, data: initial.values, revtuneRole: 'initial', showLine: false,
        borderColor: INITIAL_COLOR, backgroundColor: INITIAL_COLOR, borderWidth: 1.5, borderDash: INITIAL_DASH, pointRadius: 0, fill: false });
    }
    upsertChart(cardId, { type: 'bar', data: { labels: names, datasets }, options, plugins: [barLevels] });
  }

  // Over a bar chart, a dashed line across each bar at the level its 'initial' dataset gives.
  const barLevels = {
    id: 'barLevels',
    afterDatasetsDraw(chart) {
      const index = chart.data.datasets.findIndex((d) => d.revtuneRole === 'initial');
      if (index < 0 || !chart.isDatasetVisible(index)) return;
      const bars = chart.getDatasetMeta(0).data;
      const { ctx, scales: { y } } = chart;
      const d = chart.data.datasets[index];
      ctx.save();
      // on a white underlay, to show on any bar's colour
      for (const [color, width, dash] of [['#ffffff', 4, []], [d.borderColor, 2, d.borderDash]]) {
        ctx.strokeStyle = color;
        ctx.lineWidth = width;
        ctx.setLineDash(dash);
        d.data.forEach((v, i) => {
          if (v == null || !bars[i]) return;
          const py = y.getPixelForValue(v);
          ctx.beginPath();
          ctx.moveTo(bars[i].x - bars[i].width / 2, py);
          ctx.lineTo(bars[i].x + bars[i].width / 2, py);
          ctx.stroke();
        });
      }
      ctx.restore();
    },
  };

  // A value as a number; the API gives a non-finite one as null, which must not read as 0.
  function num(x) { return x === null || x === undefined ? NaN : Number(x); }

  // Over the finite values; `missing` counts the others.
  function range(flat) {
    let lo = Infinity; let hi = -Infinity; let sum = 0; let n = 0;
    for (const x of flat) {
      if (!Number.isFinite(x)) continue;
      lo = Math.min(lo, x); hi = Math.max(hi, x); sum += x; n += 1;
    }
    return { lo, hi, mean: sum / n, missing: flat.length - n };
  }

  const NOT_FINITE_RGBA = [194, 59, 48, 255];  // a non-finite value's pixel: red

  // A weight matrix that is not pictures (e.g. penalties on a hidden layer's weights): one heatmap,
  // rows along the first axis; anything else is summarised in numbers.
  function heatmapOrSummary(hp, flat) {
    const { lo, hi, mean, missing } = range(flat);
    const stats = `${flat.length} values: min ${fmt(lo)}, mean ${fmt(mean)}, max ${fmt(hi)}`
      + `${missing ? `; ${missing} not finite (red)` : ''}`;
    if (hp.shape.length !== 2) return el('p', { class: 'muted' }, stats);
    return el('div', { class: 'matrix', 'data-matrix-rows': hp.shape[0], 'data-matrix-cols': hp.shape[1] }, heatmap(flat, hp.shape[0], hp.shape[1], lo, hi, 'heatmap'),
      el('p', { class: 'muted' }, `${hp.axes[0]} down, ${hp.axes[1]} across; black ${fmt(lo)} to white ${fmt(hi)}. ${stats}`));
  }

  // A rows x cols grid of grey cells, black at lo and white at hi, drawn one pixel per value and zoomed.
  function heatmap(flat, rows, cols, lo, hi, cls) {
    const zoom = Math.max(1, Math.min(12, Math.floor(360 / Math.max(rows, cols))));
    const canvas = el('canvas', { width: cols, height: rows, class: cls,
      style: `width:${cols * zoom}px;height:${rows * zoom}px;image-rendering:pixelated` });
    const ctx = canvas.getContext('2d');
    const img = ctx.createImageData(cols, rows);
    const span = hi - lo || 1;
    flat.forEach((x, p) => {
      const g = Math.round((255 * (Math.min(hi, Math.max(lo, x)) - lo)) / span);
      img.data.set(Number.isFinite(x) ? [g, g, g, 255] : NOT_FINITE_RGBA, 4 * p);
    });
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  // A tasks x tasks sharing matrix T, and beside it what the paper draws: the correlation of the tasks'
  // weights under the prior it implies, T T^T normalised to unit diagonal, on a fixed -1..1 scale.
  function drawSharing(hp) {
    const T = hp.values.map((row) => row.map(Number));
    const n = T.length;
    const cov = T.map((a) => T.map((b) => a.reduce((sum, x, k) => sum + x * b[k], 0)));
    const corr = cov.map((row, i) => row.map((c, j) => c / Math.sqrt(cov[i][i] * cov[j][j])));
    const tasks = labelsFor(hp, hp.axes[0]);
    const within = corr.flatMap((row, i) => row.filter((_, j) => j !== i));
    const { lo, hi, mean } = range(within);
    const view = el('div', { class: 'sharing' },
      el('figure', {}, heatmapOrSummary(hp, flatten(hp.values).map(num))),
      el('figure', {}, heatmap(corr.flat(), n, n, -1, 1, 'heatmap correlation'),
        el('p', { class: 'muted' },
          `Correlation of the tasks' weights, T Tᵀ normalised (the paper's figure): black -1, grey 0, white 1. `
          + `Between different tasks: min ${fmt(lo)}, mean ${fmt(mean)}, max ${fmt(hi)}. Tasks in order: ${tasks.join(', ')}.`)));
    return view;
  }

  // Shades of grey for a value's pictures, black at its minimum and white at its maximum; penalties
  // spread over orders of magnitude, so positive values that do are shaded by their logarithm.
  function greyScale(flat) {
    const { lo, hi, missing } = range(flat);
    const log = lo > 0 && hi / lo > 100;
    const shade = log ? Math.log10 : (x) => x;
    const span = shade(hi) - shade(lo) || 1;
    return {
      grey: (x) => Math.round((255 * (shade(x) - shade(lo))) / span),
      text: `black ${fmt(lo)} to white ${fmt(hi)}${log ? ' (log scale)' : ''}${missing ? `, ${missing} not finite (red)` : ''}`,
    };
  }

  // A height x width grey picture, zoomed; value(p) is its p-th pixel in row-major order.
  function picture(height, width, zoom, value, grey, heightZoom = zoom) {
    const canvas = el('canvas', { width, height, style: `width:${width * zoom}px;height:${height * heightZoom}px` });
    const ctx = canvas.getContext('2d');
    const img = ctx.createImageData(width, height);
    for (let p = 0; p < width * height; p += 1) {
      const x = value(p);
      const g = grey(x);
      img.data.set(Number.isFinite(x) ? [g, g, g, 255] : NOT_FINITE_RGBA, 4 * p);
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  // Weight-shaped values with an axis of input pixels (pictureOf): one picture per index of the other
  // axes and per channel (a training example, or the penalties on the weights into one unit). Any other
  // matrix, hidden-layer weights among them, is one heatmap.
  function drawImagesOrSummary(hp, model) {
    const flat = flatten(hp.values).map(num);
    const shape = hp.shape;
    let imgAxis = -1;
    for (let i = shape.length - 1; i >= 0; i -= 1) if (pictureOf(hp, i, model)) { imgAxis = i; break; }
    if (imgAxis < 0) return heatmapOrSummary(hp, flat);
    const { height, width, channels } = pictureOf(hp, imgAxis, model);
    const strides = shape.map((_, i) => product(shape.slice(i + 1)));
    const count = (flat.length / shape[imgAxis]) * channels;
    const otherAxes = shape.map((_, i) => i).filter((i) => i !== imgAxis);
    const otherName = otherAxes.length === 1 ? hp.axes[otherAxes[0]] : null;
    const names = otherName ? labelsFor(hp, otherName) : null;
    const scale = greyScale(flat);
    const zoom = Math.max(2, Math.round(84 / Math.max(height, width)));
    const shown = Math.min(count, MAX_IMAGES);
    const box = el('div', { class: 'images', 'data-image-axis': hp.axes[imgAxis], 'data-image-height': height,
      'data-image-width': width, 'data-image-channels': channels, 'data-image-side': height === width ? height : null,
      'data-image-count': shown });
    for (let k = 0; k < shown; k += 1) {
      // k enumerates the other axes in row-major order, then the channels; decode it into a base offset.
      const c = k % channels;
      const index = Math.floor(k / channels);
      let rem = index; let base = c * strides[imgAxis];
      for (let a = otherAxes.length - 1; a >= 0; a -= 1) {
        const ax = otherAxes[a];
        base += (rem % shape[ax]) * strides[ax];
        rem = Math.floor(rem / shape[ax]);
      }
      const canvas = picture(height, width, zoom, (p) => flat[base + p * channels * strides[imgAxis]], scale.grey);
      const caption = [names ? names[index] : null, channels > 1 ? `channel ${c}` : null].filter((x) => x !== null);
      box.append(el('figure', {}, canvas, caption.join(' · ') || null));
    }
    const more = count > MAX_IMAGES ? ` (first ${MAX_IMAGES} of ${count})` : '';
    return el('div', {}, box, el('p', { class: 'muted' }, `${height}×${width} pictures, ${scale.text}${more}`));
  }

  // A convolution's kernel-shaped value (isKernel): one k x k tile (a strip of k taps in 1-D) per pair
  // of input and output channels, a row of tiles per input channel and a column per output channel, all
  // on one grey scale.
  function drawKernels(hp) {
    const flat = flatten(hp.values).map(num);
    const [cIn, cOut] = hp.shape.slice(-2);
    const taps = hp.shape.slice(0, -2);
    const [height, width] = taps.length === 2 ? taps : [1, taps[0]];
    const total = cIn * cOut;
    const shown = Math.min(total, MAX_KERNEL_TILES);
    const scale = greyScale(flat);
    const zoom = Math.max(2, Math.round(30 / width));
    const box = el('div', { class: 'kernels', 'data-kernel-size': taps.join('x'), 'data-kernel-count': shown,
      'data-kernel-total': total, style: `grid-template-columns:repeat(${Math.min(cOut, shown)}, max-content)` });
    for (let t = 0; t < shown; t += 1) {
      const i = Math.floor(t / cOut);
      const o = t % cOut;
      // C order (taps..., in, out): tap p of the kernel from in-channel i to out-channel o
      const tile = picture(height, width, zoom, (p) => flat[(p * cIn + i) * cOut + o], scale.grey,
        height === 1 ? 10 : zoom);
      box.append(el('figure', { title: `in ${i} → out ${o}`, 'data-in': i, 'data-out': o }, tile));
    }
    const more = total > shown ? `; +${total - shown} more (the first ${shown} of ${total} channel pairs shown)` : '';
    const kernels = taps.length === 2 ? `${height}×${width} kernels` : `${width}-tap kernels`;
    return el('div', {}, box, el('p', { class: 'muted' },
      `${kernels}, ${cIn}→${cOut} channels: a row per input channel, a column per output channel; ${scale.text}${more}`));
  }

  // ---------------------------------------------------------------- example weights (issue 20)

  // example_weight with granularity "example": one weight per training example, learned on the
  // validation loss, so the examples it sinks are the ones to distrust (mislabelled). The card shows
  // how the weights spread (a histogram, the known-noisy ones stacked in red), how well ranking by
  // weight finds the noisy ones where the job knows them (ROC and its AUC), and the lowest-weighted
  // examples themselves, read back from the dataset through GET /v1/jobs/{id}/training-examples
  // by the rows that label the "example" axis. Granularity "class" is one bar per class (drawBars).
  const LOWEST_EXAMPLES = 24;
  const WEIGHT_BINS = 30;
  const CLEAN_COLOR = '#2f5fd0';
  const NOISY_COLOR = '#d0462f';
  // The examples already read, by row, for one job at a time: a running job's page redraws the card
  // after every meta-iteration, and asks only for the rows it has not seen.
  let exampleCache = { jobId: null, shape: null, rows: new Map() };

  function isExampleWeights(hp) {
    const axes = hp.axes || [];
    return hp.name === 'example_weight' && axes.length === 1 && axes[0] === 'example';
  }

  // The per-example "noisy" labels as booleans, or null where the job does not know them.
  function noisyOf(hp, n) {
    const given = hp.labels && hp.labels.noisy;
    return Array.isArray(given) && given.length === n ? given.map((v) => v === true || v === 1) : null;
  }

  function drawExampleWeights(grid, card, cardId, title, hp, model) {
    if (!card || !card.classList.contains('example-weights')) {
      for (const key of [`${cardId}-hist`, `${cardId}-roc`, cardId]) {
        if (charts[key]) { charts[key].destroy(); delete charts[key]; }
      }
      const fresh = el('div', { class: 'chart-card example-weights', id: cardId },
        el('h2', {}, title),
        el('div', { class: 'example-weight-charts' },
          el('figure', { class: 'weight-hist' }, el('div', { class: 'chart-box' }, el('canvas', { id: `${cardId}-hist` })),
            el('figcaption', { class: 'caption' })),
          el('figure', { class: 'weight-roc' }, el('div', { class: 'chart-box' }, el('canvas', { id: `${cardId}-roc` })),
            el('figcaption', { class: 'caption auc' }))),
        el('h3', {}, `The ${LOWEST_EXAMPLES} most down-weighted examples`),
        el('div', { class: 'lowest-examples' }),
        el('p', { class: 'caption examples-note' }),
        el('p', { class: 'caption' }));
      if (card) card.replaceWith(fresh); else grid.append(fresh);
      card = fresh;
    }
    card.querySelector('h2').textContent = title;
    const weights = flatten(hp.values).map(num);
    const noisy = noisyOf(hp, weights.length);
    const { lo, hi, missing } = range(weights);
    const sorted = weights.filter(Number.isFinite).sort((a, b) => a - b);
    const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : NaN;
    const known = noisy ? noisy.filter(Boolean).length : 0;
    card.lastElementChild.textContent = `${weights.length} weights, one per training example: min ${fmt(lo)}, median ${fmt(median)}, `
      + `max ${fmt(hi)}${missing ? `, ${missing} not finite` : ''}`
      + `${noisy ? `; ${known} known noisy (${fmt((100 * known) / weights.length)}%)` : '; which labels are noisy is not known'}`;
    drawWeightHistogram(card, cardId, weights, noisy);
    drawDetection(card, cardId, weights, noisy);
    drawLowestExamples(card, hp, model, weights, noisy);
    return card;
  }

  // Counts per bin, log-spaced where the weights are positive (they are log-parametrised, so a sunk
  // weight is orders of magnitude below the rest); the known-noisy ones stacked on the others.
  function drawWeightHistogram(card, cardId, weights, noisy) {
    const finite = weights.filter(Number.isFinite);
    const { lo, hi } = range(finite);
    const log = finite.length > 0 && lo > 0 && hi > lo;
    const bins = finite.length && hi > lo ? WEIGHT_BINS : 1;
    const t = log ? Math.log : (x) => x;
    const a = t(lo); const b = t(hi);
    const edges = Array.from({ length: bins + 1 }, (_, k) => (log ? Math.exp(a + ((b - a) * k) / bins) : lo + ((hi - lo) * k) / bins));
    const binOf = (x) => (bins === 1 ? 0 : Math.min(bins - 1, Math.max(0, Math.floor(((t(x) - a) / (b - a)) * bins))));
    const clean = new Array(bins).fill(0);
    const flagged = new Array(bins).fill(0);
    weights.forEach((w, i) => {
      if (!Number.isFinite(w)) return;
      if (noisy && noisy[i]) flagged[binOf(w)] += 1; else clean[binOf(w)] += 1;
    });
    const labels = edges.slice(0, bins).map((e, k) => (bins === 1 ? fmt(e) : `${fmt(e)}–${fmt(edges[k + 1])}`));
    const datasets = noisy
      ? [{ label: 'clean', data: clean, backgroundColor: CLEAN_COLOR, revtuneNoisy: false },
        { label: 'known noisy (mislabelled)', data: flagged, backgroundColor: NOISY_COLOR, revtuneNoisy: true }]
      : [{ label: 'examples', data: clean, backgroundColor: CLEAN_COLOR }];
    const options = lineOptions(`learned weight${log ? ' (log-spaced bins)' : ''}`, 'examples');
    options.scales.x.stacked = true;
    options.scales.y.stacked = true;
    options.scales.x.ticks.maxRotation = 60;
    options.plugins.legend.display = !!noisy;
    options.plugins.legend.labels.usePointStyle = false;
    upsertChartOn(`${cardId}-hist`, card.querySelector('.weight-hist canvas'), { type: 'bar', data: { labels, datasets }, options });
    const canvas = card.querySelector('.weight-hist canvas');
    canvas.dataset.log = String(log);
    card.querySelector('.weight-hist figcaption').textContent = `How the learned weights spread${log ? ' (bins equal on a log scale)' : ''}`
      + `${noisy ? '; red: the examples known to be mislabelled' : ''}.`;
  }

  // The ROC of flagging examples lowest weight first: after each weight (ties together), the share
  // of the noisy examples found against the share of the clean ones flagged with them. Its area is
  // the chance that a noisy example weighs less than a clean one (ties count half).
  function rocCurve(weights, noisy) {
    const order = weights.map((_, i) => i).filter((i) => Number.isFinite(weights[i])).sort((i, j) => weights[i] - weights[j]);
    const positives = order.filter((i) => noisy[i]).length;
    const negatives = order.length - positives;
    if (!positives || !negatives) return null;
    const points = [{ x: 0, y: 0 }];
    let tp = 0; let fp = 0; let auc = 0;
    for (let k = 0; k < order.length;) {
      let dtp = 0; let dfp = 0; let end = k;
      while (end < order.length && weights[order[end]] === weights[order[k]]) {
        if (noisy[order[end]]) dtp += 1; else dfp += 1;
        end += 1;
      }
      auc += (dfp / negatives) * ((2 * tp + dtp) / (2 * positives));
      tp += dtp; fp += dfp; k = end;
      points.push({ x: fp / negatives, y: tp / positives });
    }
    return { points, auc, positives, negatives };
  }

  function drawDetection(card, cardId, weights, noisy) {
    const figure = card.querySelector('.weight-roc');
    const caption = figure.querySelector('figcaption');
    const roc = noisy ? rocCurve(weights, noisy) : null;
    figure.querySelector('.chart-box').hidden = !roc;
    if (!roc) {
      if (charts[`${cardId}-roc`]) { charts[`${cardId}-roc`].destroy(); delete charts[`${cardId}-roc`]; }
      delete caption.dataset.auc;
      caption.textContent = noisy
        ? 'No detection curve: the examples are all noisy or all clean.'
        : 'No detection curve: which labels are noisy is known only for a spec\'s dataset.label_noise or an upload\'s noisy mask.';
      return;
    }
    const datasets = [
      { label: `lowest weight first (AUC ${roc.auc.toFixed(3)})`, data: roc.points, showLine: true, pointRadius: 0,
        borderColor: NOISY_COLOR, backgroundColor: NOISY_COLOR, borderWidth: 2 },
      { label: 'chance', data: [{ x: 0, y: 0 }, { x: 1, y: 1 }], showLine: true, pointRadius: 0, revtuneRole: 'chance',
        borderColor: INITIAL_COLOR, backgroundColor: INITIAL_COLOR, borderWidth: 1.25, borderDash: INITIAL_DASH },
    ];
    const options = lineOptions('false-positive rate (clean examples flagged)', 'true-positive rate (noisy found)');
    options.scales.x = { ...options.scales.x, type: 'linear', min: 0, max: 1 };
    options.scales.y = { ...options.scales.y, min: 0, max: 1 };
    options.plugins.tooltip.callbacks.label = (ctx) => `${ctx.dataset.label}: ${fmt(ctx.parsed.x)} flagged, ${fmt(ctx.parsed.y)} found`;
    upsertChartOn(`${cardId}-roc`, figure.querySelector('canvas'), { type: 'scatter', data: { datasets }, options });
    caption.dataset.auc = roc.auc.toFixed(4);
    caption.textContent = `Finding the ${roc.positives} noisy among ${roc.positives + roc.negatives} by flagging the lowest weights first: `
      + `AUC ${roc.auc.toFixed(3)} (0.5 is chance, 1 finds every noisy example before any clean one).`;
  }

  // A chart on a given canvas, updated in place when it exists (a running job redraws every update).
  function upsertChartOn(key, canvas, config) {
    const existing = charts[key];
    if (existing && existing.canvas === canvas && existing.config.type === config.type) {
      existing.data.labels = config.data.labels;
      existing.data.datasets = config.data.datasets;
      existing.options = config.options;
      existing.update('none');
      return existing;
    }
    if (existing) existing.destroy();
    charts[key] = new Chart(canvas, config);
    return charts[key];
  }

  // The lowest-weighted examples, each captioned with its given label, weight and row (and marked
  // when known noisy); the pictures follow once GET /v1/jobs/{id}/training-examples has them.
  function drawLowestExamples(card, hp, model, weights, noisy) {
    const box = card.querySelector('.lowest-examples');
    const note = card.querySelector('.examples-note');
    const rowLabels = hp.labels && Array.isArray(hp.labels.example) ? hp.labels.example : null;
    const given = hp.labels && Array.isArray(hp.labels.label) ? hp.labels.label : null;
    const order = weights.map((_, i) => i).filter((i) => Number.isFinite(weights[i]))
      .sort((i, j) => weights[i] - weights[j]).slice(0, LOWEST_EXAMPLES);
    const rows = order.map((i) => (rowLabels ? Number(rowLabels[i]) : null));
    const figures = order.map((i, k) => {
      const bad = noisy ? noisy[i] : null;
      const label = given ? given[i] : null;
      return el('figure', { class: bad ? 'noisy' : null, 'data-index': i, 'data-row': rows[k], 'data-label': label,
        'data-weight': weights[i], 'data-noisy': bad === null ? null : String(bad),
        title: `training example ${i}${rows[k] == null ? '' : `, row ${rows[k]} of the dataset`}${bad ? ': known mislabelled' : ''}` },
      el('div', { class: 'thumb' }),
      el('figcaption', {}, label == null ? '' : `label ${label} · `, `w ${fmt(weights[i])}`,
        rows[k] == null ? '' : ` · row ${rows[k]}`, bad ? el('span', { class: 'noisy-mark' }, ' ✕ noisy') : null));
    });
    box.replaceChildren(...figures);
    box.dataset.count = figures.length;
    const key = rows.join(',');
    box.dataset.rows = key;
    if (!rowLabels || !model.jobId) {
      note.textContent = 'The examples\' rows are not labelled, so their pictures cannot be read back.';
      return;
    }
    if (exampleCache.jobId !== model.jobId) exampleCache = { jobId: model.jobId, shape: null, rows: new Map() };
    const cache = exampleCache;
    const missing = [...new Set(rows.filter((r) => !cache.rows.has(r)))];
    const ready = missing.length
      ? api('GET', `/v1/jobs/${encodeURIComponent(model.jobId)}/training-examples?rows=${missing.join(',')}`).then((body) => {
        cache.shape = body.example_shape;
        for (const item of body.items) cache.rows.set(item.row, item.x);
      })
      : Promise.resolve();
    ready.then(() => {
      if (!box.isConnected || box.dataset.rows !== key) return;  // redrawn since
      const shape = cache.shape || model.example || [];
      const values = rows.map((r) => flatten(cache.rows.get(r)).map(num));
      const { lo, hi } = range(values.flat());
      const image = isImageShape(shape, model.kind);
      figures.forEach((figure, k) => figure.querySelector('.thumb').replaceChildren(exampleThumb(values[k], shape, image, lo, hi)));
      box.dataset.drawn = figures.length;
      box.dataset.exampleShape = shape.join('x');
      note.textContent = image
        ? `Each as the dataset holds it (uncentred), black ${fmt(lo)} to white ${fmt(hi)}${product(shape.slice(2)) === 3 ? ' (RGB)' : product(shape.slice(2)) > 1 ? ' (channel 0)' : ''}.`
        : 'Each as the dataset holds it (uncentred), drawn as a line over its values.';
    }).catch((e) => {
      if (box.isConnected && box.dataset.rows === key) note.textContent = failure('The examples could not be read', e);
    });
  }

  // Whether examples of this shape are pictures: (H, W, C) always; (H, W) unless it reads as a
  // sequence, (L, C), which the dataset's shape alone does not tell apart: a cnn1d job's, or one far
  // longer than wide (MNIST-1D-like [40, 2]). Features, (d), never are.
  function isImageShape(shape, kind) {
    if (shape.length === 3) return true;
    if (shape.length !== 2 || kind === 'cnn1d') return false;
    const [short, long] = [Math.min(...shape), Math.max(...shape)];
    return short >= 4 && short * 4 >= long;
  }

  // One example: a picture (grey, or RGB for three channels), else a small line over its values (a
  // sequence's channels one line each, a feature vector one line).
  function exampleThumb(flat, shape, image, lo, hi) {
    const span = hi - lo || 1;
    if (image) {
      const [height, width, ...rest] = shape;
      const channels = product(rest);
      const zoom = Math.max(2, Math.round(56 / Math.max(height, width)));
      if (channels !== 3) {
        return picture(height, width, zoom, (p) => flat[p * channels], (x) => Math.round((255 * (Math.min(hi, Math.max(lo, x)) - lo)) / span));
      }
      const canvas = el('canvas', { width, height, style: `width:${width * zoom}px;height:${height * zoom}px` });
      const ctx = canvas.getContext('2d');
      const img = ctx.createImageData(width, height);
      for (let p = 0; p < width * height; p += 1) {
        const rgb = [0, 1, 2].map((c) => Math.round((255 * (Math.min(hi, Math.max(lo, flat[3 * p + c])) - lo)) / span));
        img.data.set([...rgb, 255], 4 * p);
      }
      ctx.putImageData(img, 0, 0);
      return canvas;
    }
    const length = shape.length ? shape[0] : flat.length;
    const channels = Math.max(1, Math.round(flat.length / Math.max(length, 1)));
    const [w, h] = [84, 40];
    const canvas = el('canvas', { class: 'sparkline', width: w, height: h });
    const ctx = canvas.getContext('2d');
    const own = range(flat);
    const ownSpan = own.hi - own.lo || 1;
    for (let c = 0; c < channels; c += 1) {
      ctx.strokeStyle = PALETTE[c % PALETTE.length];
      ctx.lineWidth = 1.25;
      ctx.beginPath();
      for (let t = 0; t < length; t += 1) {
        const x = (w - 2) * (length > 1 ? t / (length - 1) : 0.5) + 1;
        const y = h - 2 - ((h - 4) * (flat[t * channels + c] - own.lo)) / ownSpan;
        if (t === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      }
      ctx.stroke();
    }
    return canvas;
  }

  route();
})();

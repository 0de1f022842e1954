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

  const view = document.getElementById('view');
  const notice = document.getElementById('notice');
  const keyInput = document.getElementById('api-key');
  // Every poller and chart belongs to one render generation; navigating bumps it so stale loops stop.
  let generation = 0;
  const charts = {};
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

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = `Bearer ${key}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, `cannot reach the server: ${e.message}`);
    }
    if (res.status === 204) return null;
    let payload = null;
    try { payload = await res.json(); } catch (e) { payload = null; }
    if (!res.ok) {
      const err = new ApiError(res.status, payload && payload.detail !== undefined ? payload.detail : res.statusText);
      if (res.status === 401 || res.status === 403) {
        showNotice(`${err.message} — enter an API key at the top right.`);
      }
      throw err;
    }
    return payload;
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
    if (m) renderJob(decodeURIComponent(m[1]), generation);
    else renderHome(generation);
  }

  window.addEventListener('hashchange', route);

  // ---------------------------------------------------------------- home: jobs table and submit form

  function renderHome(gen) {
    const statusFilter = el('select', { id: 'status-filter' },
      ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => el('option', { value: s }, s || 'all')));
    const tbody = el('tbody');
    const table = el('table', { class: 'jobs', id: 'jobs-table' },
      el('thead', {}, el('tr', {}, ['name', 'status', 'progress', 'best objective', 'created', 'id'].map((h) => el('th', {}, h)))),
      tbody);
    const jobsCard = el('section', { class: 'card' },
      el('div', { class: 'row' }, el('h2', {}, 'Jobs'), el('span', { class: 'muted' }, 'status'), statusFilter),
      table, el('p', { class: 'muted', id: 'jobs-empty', hidden: true }, 'No jobs yet: submit one below.'));
    view.append(el('h1', {}, 'Tuning jobs'), jobsCard, submitForm());

    statusFilter.addEventListener('change', () => refresh());

    async function refresh() {
      if (gen !== generation) return;
      try {
        const q = statusFilter.value ? `&status=${encodeURIComponent(statusFilter.value)}` : '';
        const page = await api('GET', `/v1/jobs?limit=50${q}`);
        if (gen !== generation) return;
        tbody.replaceChildren(...page.items.map(jobRow));
        document.getElementById('jobs-empty').hidden = page.items.length > 0;
      } catch (e) {
        if (gen === generation && e.status !== 401 && e.status !== 403) showNotice(`Could not list jobs: ${e.message}`);
      }
    }

    (async function poll() {
      while (gen === generation) {
        await refresh();
        await sleep(LIST_POLL_MS);
      }
    })();
  }

  function jobRow(job) {
    const best = job.best ? fmt(job.best.objective) : '–';
    return el('tr', { 'data-job-id': job.id },
      el('td', {}, el('a', { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.name), ...originBadge(job)),
      el('td', {}, statusBadge(job.status), warningMark(job)),
      el('td', {}, progressBar(job)),
      el('td', { class: 'num' }, best),
      el('td', { class: 'num' }, when(job.created_at)),
      el('td', { class: 'muted' }, job.id));
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
    const state = { job: null, after: null, steps: [], hyperAt: 0, hyperMetaIter: null, polling: true };
    window.revtuneDashboard.state = state;
    const title = el('h1', {}, 'job ', id);
    const summary = el('div', { class: 'summary', id: 'job-summary' });
    const errorBox = el('pre', { class: 'errors', id: 'job-error' });
    const warningList = el('ul', {});
    const warningBox = el('section', { class: 'card warnings', id: 'job-warnings', hidden: true },
      el('h2', {}, 'Warnings'), warningList);
    const cancel = el('button', { class: 'danger', id: 'cancel-job', disabled: true }, 'Cancel');
    const live = el('span', { class: 'muted', id: 'poll-state', 'data-polling': 'on' }, 'live');
    const specView = el('pre', { class: 'spec-view', id: 'spec-view' });
    const hyperGrid = el('div', { class: 'charts', id: 'hyper-charts' });

    cancel.addEventListener('click', async () => {
      cancel.disabled = true;
      try {
        state.job = await api('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`);
        drawSummary();
      } catch (e) {
        errorBox.textContent = `Cancel failed: ${e.message}`;
      }
    });

    view.append(
      el('div', { class: 'row' }, el('a', { href: '#/' }, '← all jobs')),
      title,
      el('section', { class: 'card' }, summary, errorBox, el('div', { class: 'row' }, cancel, live)),
      warningBox,
      el('div', { class: 'charts', id: 'curve-charts' },
        chartCard('curve', 'Meta-learning curve', 'objective and losses after each meta-iteration'),
        chartCard('hypergrad', 'Hypergradient norm', '‖∂objective/∂hyperparameters‖ per meta-iteration (log scale)')),
      el('h2', { style: 'margin-top:1rem' }, 'Learned hyperparameters'),
      el('p', { class: 'muted', id: 'hyper-meta-iter' }, 'waiting for the first meta-iteration…'),
      hyperGrid,
      el('details', { class: 'card' }, el('summary', {}, 'spec'), specView));

    charts.curve = new Chart(document.querySelector('#chart-curve canvas'), {
      type: 'line',
      data: { labels: [], datasets: ['objective', 'train_loss', 'valid_loss', 'test_loss'].map((k, i) => ({
        label: k, data: [], borderColor: PALETTE[i], backgroundColor: PALETTE[i], borderWidth: k === 'objective' ? 2.5 : 1.5,
        pointRadius: 0, spanGaps: true })) },
      options: lineOptions('meta-iteration', null),
    });
    charts.hypergrad = new Chart(document.querySelector('#chart-hypergrad canvas'), {
      type: 'line',
      data: { labels: [], datasets: [{ label: 'hypergradient norm', data: [], borderColor: PALETTE[4], backgroundColor: PALETTE[4], pointRadius: 0 }] },
      options: lineOptions('meta-iteration', null, 'logarithmic'),
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
          appendSteps(page.items);
        }
        if (page.next_after === null || page.next_after === undefined || !page.items.length) return;
      }
    }

    function appendSteps(items) {
      const curve = charts.curve;
      const hg = charts.hypergrad;
      for (const s of items) {
        curve.data.labels.push(s.meta_iter);
        curve.data.datasets.forEach((d) => d.data.push(s[d.label]));
        hg.data.labels.push(s.meta_iter);
        hg.data.datasets[0].data.push(s.hypergrad_norm);
      }
      curve.update('none');
      hg.update('none');
    }

    async function fetchHyper() {
      state.hyperAt = Date.now();
      const index = await api('GET', `/v1/jobs/${encodeURIComponent(id)}/hyperparameters`);
      if (gen !== generation) return;
      const values = await Promise.all(index.items.map((h) =>
        api('GET', `/v1/jobs/${encodeURIComponent(id)}/hyperparameters/${encodeURIComponent(h.name)}?format=json&meta_iter=${index.meta_iter}`)
          .then((v) => Object.assign(v, { learned: h.learned }))));
      if (gen !== generation) return;
      state.hyperMetaIter = index.meta_iter;
      document.getElementById('hyper-meta-iter').textContent =
        `after meta-iteration ${index.meta_iter}${state.job && !TERMINAL.has(state.job.status) ? ' (updating)' : ''}`;
      const model = modelContext(state.job && state.job.spec, index);
      for (const hp of values) drawHyper(hyperGrid, hp, model);
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
      plugins: { legend: { position: 'bottom', labels: { usePointStyle: true, pointStyle: 'line' } } },
      scales: {
        x: { title: { display: true, text: xTitle }, ticks: { maxTicksLimit: 11 } },
        y: { type: yType || 'linear', title: { display: !!yTitle, text: yTitle || '' } },
      },
    };
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

    if (stepAxis >= 0 && axes.length <= 2) {
      card = ensureChartCard(grid, card, cardId, title, caption);
      drawSchedule(cardId, hp, stepAxis, model);
    } else if (axes.length === 1) {
      card = ensureChartCard(grid, card, cardId, title, caption);
      drawBars(cardId, hp, model);
    } else if (axes.length === 0) {
      card = replaceCard(grid, card, cardId, title, caption, el('div', { class: 'scalar' }, fmt(Number(hp.values))));
    } else if (kind === 'sharing' && axes.length === 2 && hp.shape[0] === hp.shape[1]) {
      card = replaceCard(grid, card, cardId, title, caption, drawSharing(hp));
    } else if (isKernel(axes)) {
      card = replaceCard(grid, card, cardId, title, caption, drawKernels(hp));
    } else {
      card = replaceCard(grid, card, cardId, title, caption, drawImagesOrSummary(hp, model));
    }
    card.dataset.metaIter = hp.meta_iter;
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
    const existing = charts[cardId];
    if (existing && existing.config.type === config.type) {
      existing.data.labels = config.data.labels;
      existing.data.datasets = config.data.datasets;
      existing.update('none');
      return existing;
    }
    if (existing) existing.destroy();
    charts[cardId] = new Chart(document.querySelector(`#${cardId} canvas`), config);
    return charts[cardId];
  }

  // One line per layer over steps, like Figure 2 of the paper (biases dashed), each labelled with its
  // array's name and sizes.
  function drawSchedule(cardId, hp, stepAxis, model) {
    const steps = hp.shape[stepAxis];
    const xs = Array.from({ length: steps }, (_, t) => t);
    let series;
    if (hp.axes.length === 1) {
      series = [{ name: hp.name, label: hp.name, data: hp.values }];
    } else {
      const other = hp.axes[1 - stepAxis];
      const names = labelsFor(hp, other);
      series = names.map((name, j) => ({
        name,
        label: other === 'layer' ? arrayLabel(name, model) : name,
        data: xs.map((t) => (stepAxis === 0 ? hp.values[t][j] : hp.values[j][t])),
      }));
    }
    const datasets = series.map((s, j) => ({
      label: s.label, data: s.data, borderColor: PALETTE[j % PALETTE.length], backgroundColor: PALETTE[j % PALETTE.length],
      borderWidth: 1.5, pointRadius: 0, borderDash: /(^|[._])(b|bias)$/i.test(s.name) ? [5, 3] : [],
    }));
    upsertChart(cardId, { type: 'line', data: { labels: xs, datasets }, options: lineOptions('step', hp.name) });
  }

  function drawBars(cardId, hp, model) {
    const axis = hp.axes[0];
    const names = labelsFor(hp, axis).map((name) => (axis === 'layer' ? arrayLabel(name, model) : name));
    const colors = names.map((_, j) => PALETTE[j % PALETTE.length]);
    const options = lineOptions(axis, hp.name);
    options.plugins.legend.display = false;
    upsertChart(cardId, {
      type: 'bar',
      data: { labels: names, datasets: [{ label: hp.name, data: hp.values, backgroundColor: colors }] },
      options,
    });
  }

  function range(flat) {
    let lo = Infinity; let hi = -Infinity; let sum = 0;
    for (const x of flat) { lo = Math.min(lo, x); hi = Math.max(hi, x); sum += x; }
    return { lo, hi, mean: sum / flat.length };
  }

  // A weight matrix that is not pictures (e.g. penalties on a hidden layer's weights): one heatmap,
  // rows along the first axis; anything else is summarised in numbers.
  function heatmapOrSummary(hp, flat) {
    const { lo, hi, mean } = range(flat);
    const stats = `${flat.length} values: min ${fmt(lo)}, mean ${fmt(mean)}, max ${fmt(hi)}`;
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
      img.data.set([g, g, g, 255], 4 * p);
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
      el('figure', {}, heatmapOrSummary(hp, flatten(hp.values).map(Number))),
      el('figure', {}, heatmap(corr.flat(), n, n, -1, 1, 'heatmap correlation'),
        el('p', { class: 'muted' },
          `Correlation of the tasks' weights, T Tᵀ normalised (the paper's figure): black -1, grey 0, white 1. `
          + `Between different tasks: min ${fmt(lo)}, mean ${fmt(mean)}, max ${fmt(hi)}. Tasks in order: ${tasks.join(', ')}.`)));
    return view;
  }

  // Shades of grey for a value's pictures, black at its minimum and white at its maximum; penalties
  // spread over orders of magnitude, so positive values that do are shaded by their logarithm.
  function greyScale(flat) {
    const { lo, hi } = range(flat);
    const log = lo > 0 && hi / lo > 100;
    const shade = log ? Math.log10 : (x) => x;
    const span = shade(hi) - shade(lo) || 1;
    return {
      grey: (x) => Math.round((255 * (shade(x) - shade(lo))) / span),
      text: `black ${fmt(lo)} to white ${fmt(hi)}${log ? ' (log scale)' : ''}`,
    };
  }

  // A height x width grey picture, zoomed; value(p) is its p-th pixel in row-major order.
  function picture(height, width, zoom, value, grey, heightZoom = zoom) {
    const canvas = el('canvas', { width, height, style: `width:${width * zoom}px;height:${height * heightZoom}px` });
    const ctx = canvas.getContext('2d');
    const img = ctx.createImageData(width, height);
    for (let p = 0; p < width * height; p += 1) {
      const g = grey(value(p));
      img.data.set([g, g, g, 255], 4 * p);
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  // Weight-shaped values with an axis of input pixels (pictureOf): one picture per index of the other
  // axes and per channel (a training example, or the penalties on the weights into one unit). Any other
  // matrix, hidden-layer weights among them, is one heatmap.
  function drawImagesOrSummary(hp, model) {
    const flat = flatten(hp.values).map(Number);
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
    const flat = flatten(hp.values).map(Number);
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

  route();
})();

/**
 * The sidebar panel: renders an `EverestModel`, nothing more.
 *
 * Stable hooks for tests and styling:
 *   .everest-panel[data-status]              no-notebook | no-kernel | connecting | not-loaded | connected
 *   .everest-empty[data-reason]              the empty state and how to start a session
 *   .everest-section[data-collapsed]         Sessions / Jobs / Query history; a click on its
 *                                            .everest-section-title folds or unfolds it
 *   .everest-session[data-session][data-origin]  one session (magic | python), model, data, index
 *   .everest-view[data-view]                 one indexed view (size on disk, ratio to full)
 *   .everest-job[data-job-id][data-status]   one job; .everest-job-status, .everest-job-progress,
 *                                            .everest-job-phase, .everest-job-cancel (only while it
 *                                            can be cancelled); finished ones are one line
 *                                            (.everest-job-compact), the full magic on hover
 *   .everest-history-entry[data-history-id]  one query; click inserts its text in a new cell
 */
import { Widget } from '@lumino/widgets';

import {
  EverestModel,
  FINAL_JOB_STATES,
  IHistoryEntry,
  IJob,
  ISession,
  IView
} from './model';

/** What the panel asks of its host besides the model. */
export interface IPanelActions {
  /** Insert `text` into a new code cell below the active cell of the notebook in focus. */
  insert(text: string): void;
}

/** The id of the sidebar widget (and of its tab: `.jp-SideBar li[data-id=...]`). */
export const PANEL_ID = 'everest-magic-sidebar';

/** The hint shown when a kernel has no session. */
export const START_HINT = [
  '%load_ext everest_magic',
  '%everest use model=... data=... index=FOLDER'
];

export class EverestPanel extends Widget {
  constructor(
    readonly model: EverestModel,
    private readonly _actions: IPanelActions
  ) {
    super();
    this.id = PANEL_ID;
    this.addClass('everest-panel');

    const header = el('div', 'everest-header');
    const title = el('div', 'everest-title', 'Everest');
    this._notebookLabel = el('div', 'everest-notebook');
    const refresh = el('button', 'everest-refresh jp-Button', '↻') as HTMLButtonElement;
    refresh.title = 'Ask the kernel for a fresh snapshot';
    refresh.addEventListener('click', () => this.model.refresh());
    header.append(title, refresh);

    this._empty = el('div', 'everest-empty');
    this._error = el('div', 'everest-error');
    this._sessions = section('everest-sessions', 'Sessions');
    this._jobs = section('everest-jobs', 'Jobs');
    this._history = section('everest-history', 'Query history');
    this._jobs.list.classList.add('everest-jobs-list');
    this.node.append(
      header,
      this._notebookLabel,
      this._empty,
      this._error,
      this._sessions.root,
      this._jobs.root,
      this._history.root
    );

    // one delegated click handler: elements are re-created, the handler is not
    this.node.addEventListener('click', this._onClick);
    model.stateChanged.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.stateChanged.disconnect(this._render, this);
    this.node.removeEventListener('click', this._onClick);
    super.dispose();
  }

  private _onClick = (event: MouseEvent): void => {
    const target = event.target as HTMLElement;
    const title = target.closest('.everest-section-title') as HTMLElement | null;
    if (title) {
      const root = title.parentElement as HTMLElement;
      const collapsed = root.dataset.collapsed !== 'true';
      root.dataset.collapsed = String(collapsed);
      title.setAttribute('aria-expanded', String(!collapsed));
      return;
    }
    const cancel = target.closest('.everest-job-cancel') as HTMLElement | null;
    if (cancel) {
      const job = cancel.closest('.everest-job') as HTMLElement;
      const id = Number(job.dataset.jobId);
      (cancel as HTMLButtonElement).disabled = true;
      cancel.textContent = 'Cancelling…';
      this.model.cancel(id);
      return;
    }
    const entry = target.closest('.everest-history-entry') as HTMLElement | null;
    if (entry) {
      const id = Number(entry.dataset.historyId);
      const h = this.model.state.history.find(x => x.id === id);
      if (h) {
        this._actions.insert(h.text);
      }
    }
  };

  private _render(): void {
    const model = this.model;
    const ctx = model.current;
    const status = ctx ? model.status : 'no-notebook';
    const { sessions, jobs, history } = model.state;
    this.node.dataset.status = status;
    this._notebookLabel.textContent = ctx
      ? `${ctx.path.split('/').pop() || ctx.name} · kernel ${ctx.kernelDisplayName}`
      : '';
    this._notebookLabel.title = ctx ? ctx.path : '';

    const empty = emptyState(status, sessions.length);
    this._empty.hidden = empty === null;
    if (empty && this._emptyKey !== empty.key) {
      this._emptyKey = empty.key;
      this._empty.dataset.reason = empty.key;
      this._empty.replaceChildren(...empty.nodes);
    }
    if (!empty) {
      this._emptyKey = '';
    }
    this._error.hidden = !model.error;
    this._error.textContent = model.error;

    const connected = status === 'connected';
    this._sessions.root.hidden = !connected || sessions.length === 0;
    this._jobs.root.hidden = !connected || jobs.length === 0;
    this._history.root.hidden = !connected || history.length === 0;

    setCount(this._sessions, sessions.length);
    setCount(this._jobs, jobs.length, jobs.filter(j => !FINAL_JOB_STATES.includes(j.status)).length);
    setCount(this._history, history.length);
    setIfChanged(this._sessions, sessions, () => sessions.map(renderSession));
    this._renderJobs(jobs, history);
    setIfChanged(this._history, history, () =>
      history
        .slice()
        .reverse()
        .map(renderHistoryEntry)
    );
  }

  /** Jobs are updated in place (keyed by id) so a cancel button survives progress updates. */
  private _renderJobs(jobs: IJob[], history: IHistoryEntry[]): void {
    const magic = new Map<number, string>();
    for (const h of history) {
      if (h.job_id !== null) {
        magic.set(h.job_id, h.text);
      }
    }
    const list = this._jobs.list;
    const sorted = jobs.slice().sort((a, b) => b.id - a.id);
    const keep = new Set(sorted.map(j => String(j.id)));
    for (const child of Array.from(list.children) as HTMLElement[]) {
      if (!keep.has(child.dataset.jobId ?? '')) {
        child.remove();
      }
    }
    let previous: Element | null = null;
    for (const job of sorted) {
      let node = list.querySelector(
        `.everest-job[data-job-id="${job.id}"]`
      ) as HTMLElement | null;
      if (!node) {
        node = createJob(job);
      }
      updateJob(node, job, magic.get(job.id) ?? job.description);
      const expected: Element | null = previous
        ? previous.nextElementSibling
        : list.firstElementChild;
      if (expected !== node) {
        list.insertBefore(node, expected);
      }
      previous = node;
    }
  }

  private _notebookLabel: HTMLElement;
  private _empty: HTMLElement;
  private _emptyKey = '';
  private _error: HTMLElement;
  private _sessions: ISection;
  private _jobs: ISection;
  private _history: ISection;
}

interface ISection {
  root: HTMLElement;
  list: HTMLElement;
  count: HTMLElement;
  key?: string;
}

/** A section whose title folds and unfolds it (its `data-collapsed` survives re-renders). */
function section(cls: string, title: string): ISection {
  const root = el('section', `everest-section ${cls}`);
  root.dataset.collapsed = 'false';
  const h3 = el('h3', 'everest-section-title');
  h3.setAttribute('role', 'button');
  h3.setAttribute('aria-expanded', 'true');
  h3.title = `Fold or unfold ${title}`;
  const count = el('span', 'everest-section-count');
  h3.append(el('span', 'everest-caret'), el('span', '', title), count);
  const list = el('ul', 'everest-list');
  root.append(h3, list);
  return { root, list, count };
}

function setCount(s: ISection, n: number, active?: number): void {
  const text = active ? `${n} · ${active} running` : String(n);
  if (s.count.textContent !== text) {
    s.count.textContent = text;
  }
}

function setIfChanged(s: ISection, data: unknown, build: () => HTMLElement[]): void {
  const key = JSON.stringify(data);
  if (s.key !== key) {
    s.key = key;
    s.list.replaceChildren(...build());
  }
}

function emptyState(
  status: string,
  nSessions: number
): { key: string; nodes: HTMLElement[] } | null {
  switch (status) {
    case 'no-notebook':
      return {
        key: 'no-notebook',
        nodes: [el('p', '', 'Open a notebook to see its everest sessions, jobs and queries.')]
      };
    case 'no-kernel':
      return {
        key: 'no-kernel',
        nodes: [el('p', '', 'This notebook has no running kernel.')]
      };
    case 'connecting':
      return { key: 'connecting', nodes: [el('p', '', 'Connecting to the kernel…')] };
    case 'not-loaded':
      return {
        key: 'not-loaded',
        nodes: startHint('everest_magic is not loaded or imported in this kernel yet.')
      };
    default:
      return nSessions === 0
        ? {
            key: 'no-session',
            nodes: startHint(
              'Connected; no session yet (em.Session(...) bound to a variable shows here too).'
            )
          }
        : null;
  }
}

function startHint(lead: string): HTMLElement[] {
  const code = el('pre', 'everest-hint-code', START_HINT.join('\n'));
  return [el('p', '', lead), el('p', '', 'Start one in a cell:'), code];
}

function renderSession(s: ISession): HTMLElement {
  const li = el('li', 'everest-session');
  const python = s.origin === 'python';
  li.dataset.session = s.name;
  li.dataset.origin = python ? 'python' : 'magic';
  if (s.current) {
    li.classList.add('everest-current');
  }
  const name = el('div', 'everest-session-name', s.name);
  if (s.current) {
    name.append(el('span', 'everest-badge', 'current'));
  }
  if (python) {
    const badge = el('span', 'everest-badge everest-badge-python', 'Python');
    badge.title =
      `made with em.Session(...) and bound to the variable ${s.name}` +
      (s.session_name ? ` (session name '${s.session_name}')` : '');
    name.append(badge);
  }
  const dl = el('dl', 'everest-session-details');
  for (const [k, v, cls] of [
    ['model', `${s.model} on ${s.device}`, 'everest-session-model'],
    ['data', s.data, 'everest-session-data'],
    ['index', s.index, 'everest-session-index']
  ]) {
    dl.append(el('dt', '', k));
    const dd = el('dd', cls, v);
    dd.title = v;
    dl.append(dd);
  }
  const views = el('ul', 'everest-views');
  if (s.views.length === 0) {
    views.append(el('li', 'everest-views-empty', 'no indexed views yet: %everest index LAYER'));
  }
  for (const v of s.views) {
    views.append(renderView(v));
  }
  li.append(name, dl, el('div', 'everest-subtitle', 'Indexed views'), views);
  return li;
}

function renderView(v: IView): HTMLElement {
  const li = el('li', 'everest-view');
  li.dataset.view = v.name;
  li.append(
    el('span', 'everest-view-name', v.name),
    el('span', 'everest-view-neurons', `${v.neurons.toLocaleString()} neurons`),
    el('span', 'everest-view-size', formatBytes(v.bytes)),
    el('span', 'everest-view-ratio', `${formatPercent(v.size_ratio)} of full`)
  );
  li.title =
    `${v.name}: ${formatBytes(v.bytes)} on disk, ` +
    `${formatPercent(v.size_ratio)} of the ${formatBytes(v.full_bytes)} a full materialisation takes ` +
    `(${v.partitions} partitions, top lists of ${formatPercent(v.list_fraction)})`;
  return li;
}

function createJob(job: IJob): HTMLElement {
  const li = el('li', 'everest-job');
  li.dataset.jobId = String(job.id);
  const top = el('div', 'everest-job-top');
  top.append(
    el('span', 'everest-job-id', `#${job.id}`),
    el('span', 'everest-job-description'),
    el('span', 'everest-job-seconds'),
    el('span', 'everest-job-status')
  );
  const phase = el('div', 'everest-job-phase');
  const bar = el('div', 'everest-job-progress');
  bar.append(el('div', 'everest-job-bar'));
  const bottom = el('div', 'everest-job-bottom');
  bottom.append(el('span', 'everest-job-detail'));
  li.append(top, phase, bar, bottom);
  return li;
}

/** Fill a job row; `magic` is the full command that started it (shown on hover). */
function updateJob(li: HTMLElement, job: IJob, magic: string): void {
  li.dataset.status = job.status;
  const final = FINAL_JOB_STATES.includes(job.status);
  li.classList.toggle('everest-job-compact', final);
  li.title = `job ${job.id}: ${magic}` + (job.error ? `\n${job.error}` : '');
  li.querySelector('.everest-job-description')!.textContent = job.description;
  li.querySelector('.everest-job-status')!.textContent = job.status;
  li.querySelector('.everest-job-seconds')!.textContent = final ? `${job.seconds.toFixed(1)} s` : '';
  const phase = li.querySelector('.everest-job-phase') as HTMLElement;
  phase.textContent = job.phase || '';
  phase.hidden = !job.phase;
  const pct = Math.max(0, Math.min(1, job.progress || 0));
  const bar = li.querySelector('.everest-job-bar') as HTMLElement;
  bar.style.width = `${(100 * pct).toFixed(1)}%`;
  const progress = li.querySelector('.everest-job-progress') as HTMLElement;
  progress.dataset.progress = pct.toFixed(3);
  progress.setAttribute('role', 'progressbar');
  progress.setAttribute('aria-valuenow', String(Math.round(100 * pct)));
  const counts = job.total
    ? `${job.done_units.toLocaleString()} / ${job.total.toLocaleString()}`
    : '';
  const detail = [counts, `${job.seconds.toFixed(1)} s`, job.error || '']
    .filter(Boolean)
    .join(' · ');
  li.querySelector('.everest-job-detail')!.textContent = detail;

  const bottom = li.querySelector('.everest-job-bottom') as HTMLElement;
  let cancel = bottom.querySelector('.everest-job-cancel') as HTMLButtonElement | null;
  const cancellable = !FINAL_JOB_STATES.includes(job.status);
  if (cancellable && !cancel) {
    cancel = el('button', 'everest-job-cancel jp-Button', 'Cancel') as HTMLButtonElement;
    cancel.title = `Cancel job ${job.id}`;
    bottom.append(cancel);
  } else if (!cancellable && cancel) {
    cancel.remove();
  }
}

function renderHistoryEntry(h: IHistoryEntry): HTMLElement {
  const li = el('li', 'everest-history-entry');
  li.dataset.historyId = String(h.id);
  li.dataset.status = h.status;
  li.dataset.kind = h.kind;
  li.title = `Click to insert into a new cell below:\n${h.text}`;
  // one line per line of the magic, cut with an ellipsis at the panel's width (the full
  // text is in the tooltip and is what a click inserts)
  const text = el('pre', 'everest-history-text');
  const lines = h.text.replace(/\s+$/, '').split('\n');
  lines.forEach((line, i) =>
    text.append(el('span', 'everest-history-line', i < lines.length - 1 ? `${line}\n` : line))
  );
  const top = el('div', 'everest-history-top');
  top.append(
    el('span', 'everest-history-kind', h.kind),
    el('span', 'everest-history-status', h.status),
    el('span', 'everest-history-time', formatTime(h.started))
  );
  li.append(top, text);
  if (h.summary) {
    li.append(el('div', 'everest-history-summary', h.summary));
  }
  return li;
}

function el(tag: string, cls: string, text?: string): HTMLElement {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** 1234567 -> "1.2 MB" (decimal units, as `%everest status` prints). */
export function formatBytes(n: number): string {
  if (!isFinite(n) || n < 0) {
    return '?';
  }
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 || n >= 100 ? 0 : 1)} ${units[i]}`;
}

/** 0.0412 -> "4.1%". */
export function formatPercent(r: number): string {
  if (!isFinite(r)) {
    return '?';
  }
  const p = 100 * r;
  return `${p.toFixed(p < 10 ? 1 : 0)}%`;
}

function formatTime(seconds: number): string {
  if (!seconds) {
    return '';
  }
  return new Date(seconds * 1000).toLocaleTimeString();
}

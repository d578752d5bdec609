/**
 * The sidebar's model: one comm channel per notebook kernel, and which one is in focus.
 *
 * The kernel side lives in `everest_magic/magics/channel.py`. Protocol (JSON over the comm
 * target "everest_magic"):
 *
 *   kernel -> sidebar  {type: "snapshot", state: {sessions, jobs, history}}
 *                      {type: "job", job: IJob}
 *                      {type: "error", message}
 *   sidebar -> kernel  {action: "refresh"}            answered with a snapshot
 *                      {action: "cancel", job: ID}    then a snapshot follows
 *
 * The kernel opens the comm when `%load_ext everest_magic` runs, so every notebook kernel
 * gets the comm target registered here (again on each kernel change). After a page reload
 * the sidebar opens a comm to the kernel's target itself; if the kernel has not loaded the
 * extension, that open is answered with a close and the channel stays empty.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

/** The comm target name shared with the kernel. */
export const COMM_TARGET = 'everest_magic';

/**
 * One indexed view of a session (a layer or a reduced layer): `ViewInfo.to_json()` in
 * `everest_magic/engine/store.py`, field for field.
 */
export interface IView {
  name: string;
  neurons: number;
  /** Inputs indexed. */
  inputs: number;
  /** Partitions of each neuron's values. */
  partitions: number;
  scheme: string;
  /** Entries of each neuron's top list (and of its bottom list). */
  list_length: number;
  /** The build's list ratio: lists of ceil(list_fraction * inputs) entries, at least min_list. */
  list_fraction: number;
  /** Bytes on disk. */
  bytes: number;
  /** Bytes of the view fully materialised as float32. */
  full_bytes: number;
  /** bytes / full_bytes. */
  size_ratio: number;
  /** Segment files. */
  files: number;
  build_seconds: number;
}

/**
 * One session of the kernel: made by `%everest use ...` (origin `magic`), or with
 * `em.Session(...)` in Python and bound to a variable (origin `python`; `name` is the variable).
 */
export interface ISession {
  name: string;
  session_name?: string;
  origin?: 'magic' | 'python';
  current: boolean;
  model: string;
  data: string;
  n: number;
  index: string;
  device: string;
  views: IView[];
}

/**
 * One background job (index build or query): `Job.to_json()` in
 * `everest_magic/engine/jobs.py`, field for field.
 */
export interface IJob {
  id: number;
  description: string;
  /** pending, running, done, failed or cancelled. */
  status: string;
  /** What the job does now when it has stages, e.g. a query building its view first. */
  phase: string;
  /** Units of work done so far, of `total` (0 when unknown). */
  done_units: number;
  total: number;
  /** 0..1. */
  progress: number;
  seconds: number;
  queue: string | null;
  /** Empty unless the job failed or was cancelled. */
  error: string;
}

/** One entry of the query history. */
export interface IHistoryEntry {
  id: number;
  text: string;
  kind: string;
  session: string;
  started: number;
  status: string;
  summary: string;
  job_id: number | null;
}

/** What the kernel reports in a snapshot. */
export interface IKernelState {
  sessions: ISession[];
  jobs: IJob[];
  history: IHistoryEntry[];
}

/**
 * Where a channel stands:
 * - `no-kernel`: the notebook has no running kernel;
 * - `connecting`: a comm open to the kernel is under way;
 * - `not-loaded`: the kernel has not loaded the extension (or was restarted);
 * - `connected`: the kernel talks to us; `state` holds its last snapshot.
 */
export type ChannelStatus = 'no-kernel' | 'connecting' | 'not-loaded' | 'connected';

/** Job states after which a job will not change any more. */
export const FINAL_JOB_STATES = ['done', 'failed', 'cancelled'];

/**
 * The comm channel to the kernel of one notebook (its session context).
 */
export class KernelChannel implements IDisposable {
  constructor(readonly sessionContext: ISessionContext) {
    sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    sessionContext.statusChanged.connect(this._onStatusChanged, this);
    this._attach(sessionContext.session?.kernel ?? null);
  }

  /** Emitted whenever `status`, `state` or `error` changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get status(): ChannelStatus {
    return this._status;
  }

  /** The kernel's last reported state (empty unless `connected`). */
  get state(): IKernelState {
    return this._state;
  }

  /** The last error message the kernel sent (e.g. cancelling an unknown job). */
  get error(): string {
    return this._error;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Ask for a snapshot; opens a comm to the kernel's target if none is open. */
  refresh(): void {
    if (this._comm && !this._comm.isDisposed) {
      this._send({ action: 'refresh' });
    } else {
      this._open();
    }
  }

  /** Ask the kernel to cancel a job. */
  cancel(jobId: number): void {
    this._send({ action: 'cancel', job: jobId });
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this.sessionContext.kernelChanged.disconnect(this._onKernelChanged, this);
    this.sessionContext.statusChanged.disconnect(this._onStatusChanged, this);
    this._detach();
    Signal.clearData(this);
  }

  private _onKernelChanged(
    _: ISessionContext,
    args: { newValue: Kernel.IKernelConnection | null }
  ): void {
    this._attach(args.newValue);
  }

  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      // The kernel forgets everything; its comms are gone. Wait for `%load_ext` again
      // (the comm target stays registered on the same kernel connection).
      this._dropComm();
      this._setState(status === 'dead' ? 'no-kernel' : 'not-loaded', EMPTY_STATE);
    }
  }

  /** Register the comm target on a (new) kernel and try to reach the kernel's side. */
  private _attach(kernel: Kernel.IKernelConnection | null): void {
    this._detach();
    this._kernel = kernel;
    if (!kernel) {
      this._setState('no-kernel', EMPTY_STATE);
      return;
    }
    kernel.registerCommTarget(COMM_TARGET, this._onCommOpen);
    this._setState('not-loaded', EMPTY_STATE);
    this._open();
  }

  private _detach(): void {
    this._dropComm();
    if (this._kernel && !this._kernel.isDisposed) {
      this._kernel.removeCommTarget(COMM_TARGET, this._onCommOpen);
    }
    this._kernel = null;
  }

  /** The kernel opened a comm to us (`%load_ext everest_magic`). */
  private _onCommOpen = (
    comm: Kernel.IComm,
    _msg: KernelMessage.ICommOpenMsg
  ): void => {
    this._useComm(comm);
    // the kernel sends a snapshot right after opening; until then, say we are connected
    this._setState('connected', this._state);
  };

  /** Open a comm to the kernel's target (after a page reload or a kernel change). */
  private _open(): void {
    const kernel = this._kernel;
    if (!kernel || kernel.isDisposed || !kernel.handleComms) {
      return;
    }
    let comm: Kernel.IComm;
    try {
      comm = kernel.createComm(COMM_TARGET);
    } catch (e) {
      console.warn('everest_magic: cannot open a comm', e);
      return;
    }
    this._useComm(comm);
    if (this._status !== 'connected') {
      this._setState('connecting', this._state);
    }
    // A kernel without the extension answers with comm_close (onClose -> not-loaded);
    // one with it answers with a snapshot (onMsg -> connected).
    comm.open({ action: 'refresh' });
  }

  private _useComm(comm: Kernel.IComm): void {
    const old = this._comm;
    this._comm = comm;
    comm.onMsg = msg => this._onMsg(comm, msg);
    comm.onClose = () => this._onClose(comm);
    if (old && old !== comm && !old.isDisposed) {
      // keep one comm: the kernel detaches the old one when it is closed
      old.onClose = () => undefined;
      old.onMsg = () => undefined;
      try {
        old.close();
      } catch {
        // the kernel is gone: nothing to close
      }
    }
  }

  private _dropComm(): void {
    const comm = this._comm;
    this._comm = null;
    if (comm && !comm.isDisposed) {
      comm.onClose = () => undefined;
      comm.onMsg = () => undefined;
    }
  }

  private _onClose(comm: Kernel.IComm): void {
    if (comm !== this._comm) {
      return;
    }
    this._comm = null;
    this._setState(this._kernel ? 'not-loaded' : 'no-kernel', EMPTY_STATE);
  }

  private _onMsg(comm: Kernel.IComm, msg: KernelMessage.ICommMsgMsg): void {
    if (comm !== this._comm) {
      return;
    }
    const data = msg.content.data as any;
    if (!data || typeof data !== 'object') {
      return;
    }
    if (data.type === 'snapshot' && data.state) {
      const s = data.state as Partial<IKernelState>;
      this._setState('connected', {
        sessions: s.sessions ?? [],
        jobs: s.jobs ?? [],
        history: s.history ?? []
      });
    } else if (data.type === 'job' && data.job) {
      const job = data.job as IJob;
      const jobs = this._state.jobs.slice();
      const i = jobs.findIndex(j => j.id === job.id);
      if (i >= 0) {
        jobs[i] = job;
      } else {
        jobs.push(job);
      }
      this._setState('connected', { ...this._state, jobs });
    } else if (data.type === 'error') {
      this._error = String(data.message ?? '');
      this._changed.emit();
    }
  }

  private _send(data: any): void {
    const comm = this._comm;
    if (!comm || comm.isDisposed) {
      return;
    }
    try {
      comm.send(data);
    } catch (e) {
      console.warn('everest_magic: cannot send to the kernel', e);
    }
  }

  private _setState(status: ChannelStatus, state: IKernelState): void {
    this._status = status;
    this._state = state;
    if (state === EMPTY_STATE) {
      this._error = '';
    }
    this._changed.emit();
  }

  private _kernel: Kernel.IKernelConnection | null = null;
  private _comm: Kernel.IComm | null = null;
  private _status: ChannelStatus = 'no-kernel';
  private _state: IKernelState = EMPTY_STATE;
  private _error = '';
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
}

const EMPTY_STATE: IKernelState = Object.freeze({
  sessions: [],
  jobs: [],
  history: []
}) as IKernelState;

/**
 * The sidebar model: the channels of all open notebooks, and the one in focus.
 *
 * The plugin calls `addNotebook` for every notebook and `setCurrent` when the notebook
 * in focus changes; the panel renders `current`, `status` and `state` on `stateChanged`.
 */
export class EverestModel implements IDisposable {
  /** Emitted when the notebook in focus or its kernel's state changes. */
  get stateChanged(): ISignal<this, void> {
    return this._stateChanged;
  }

  /** The notebook in focus (its session context), or null. */
  get current(): ISessionContext | null {
    return this._current;
  }

  /** The channel of the notebook in focus. */
  get channel(): KernelChannel | null {
    return this._current ? (this._channels.get(this._current) ?? null) : null;
  }

  /** Where the notebook in focus stands (`no-kernel` when there is none). */
  get status(): ChannelStatus {
    return this.channel?.status ?? 'no-kernel';
  }

  /** The last state of the kernel in focus (empty when none). */
  get state(): IKernelState {
    return this.channel?.state ?? EMPTY_STATE;
  }

  /** The kernel's last error message, if any. */
  get error(): string {
    return this.channel?.error ?? '';
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Start listening to a notebook's kernel (idempotent). */
  addNotebook(sessionContext: ISessionContext): KernelChannel {
    let channel = this._channels.get(sessionContext);
    if (channel) {
      return channel;
    }
    channel = new KernelChannel(sessionContext);
    this._channels.set(sessionContext, channel);
    channel.changed.connect(this._onChannelChanged, this);
    sessionContext.disposed.connect(this._onContextDisposed, this);
    return channel;
  }

  /** Switch the panel to a notebook (null: none in focus). */
  setCurrent(sessionContext: ISessionContext | null): void {
    if (sessionContext) {
      this.addNotebook(sessionContext);
    }
    if (this._current === sessionContext) {
      return;
    }
    this._current = sessionContext;
    this._stateChanged.emit();
  }

  /** Ask the kernel in focus for a fresh snapshot. */
  refresh(): void {
    this.channel?.refresh();
  }

  /** Ask the kernel in focus to cancel a job. */
  cancel(jobId: number): void {
    this.channel?.cancel(jobId);
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._channels.forEach(c => c.dispose());
    this._channels.clear();
    Signal.clearData(this);
  }

  private _onChannelChanged(channel: KernelChannel): void {
    if (this._current && channel === this._channels.get(this._current)) {
      this._stateChanged.emit();
    }
  }

  private _onContextDisposed(sessionContext: ISessionContext): void {
    const channel = this._channels.get(sessionContext);
    this._channels.delete(sessionContext);
    channel?.dispose();
    if (this._current === sessionContext) {
      this._current = null;
      this._stateChanged.emit();
    }
  }

  private _channels = new Map<ISessionContext, KernelChannel>();
  private _current: ISessionContext | null = null;
  private _isDisposed = false;
  private _stateChanged = new Signal<this, void>(this);
}

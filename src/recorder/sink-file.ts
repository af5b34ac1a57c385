// The file sink: capture files in the daemon's recording directory only, written
// through async streams with a bounded queue, rotated by size, packet count or
// age, optionally as a ring of files.
//
// Names are never paths: the API gives a prefix (^[a-z][a-z0-9_-]{0,31}$) or a
// plain file name (see checkFileName), and every file is opened with
// O_NOFOLLOW and, unless the caller asked to overwrite, O_EXCL — so no name can
// leave the directory, follow a link placed in it, or replace a file silently.
//
//   prefix "web":        web_<start unix s>_<id>_0.pcap, web_<...>_1.pcap, ...
//   file name "trace":   trace.pcap, then trace.1.pcap, trace.2.pcap, ...
//
// Rotation by age happens at the first packet after the age is reached (as
// tcpdump -G does): an idle recording does not make empty files.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { XdplbError } from '../control/errors';
import type { RecordingFile, Sink } from './sink';

export interface FileRotation {
  /** start a new file before this one would grow past this many bytes; 0: no limit */
  maxBytes: number;
  /** start a new file after this many packets; 0: no limit */
  maxPackets: number;
  /** start a new file when this one is this old (at its next packet); 0: no limit */
  maxDurationMs: number;
  /** keep at most this many files, deleting the oldest; 0: keep all */
  maxFiles: number;
}

export const NO_ROTATION: FileRotation = { maxBytes: 0, maxPackets: 0, maxDurationMs: 0, maxFiles: 0 };

export type FileNaming =
  | { kind: 'prefix'; prefix: string; startSec: number; id: string }
  | { kind: 'name'; name: string; overwrite: boolean };

export interface FileSinkOptions {
  dir: string;
  naming: FileNaming;
  /** ".pcap" or ".pcapng" */
  extension: string;
  /** the capture file header, written at the start of every file */
  header: Buffer;
  rotation: FileRotation;
  /** bytes queued for the disk before records are refused (default 16 MiB) */
  maxQueued?: number;
  /** a write or rotation failed: the sink refuses everything after it */
  onError(e: Error): void;
}

export const PREFIX_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const DEFAULT_QUEUED = 16 * 1024 * 1024;

/**
 * A plain file name for FileSink.file_name, without the format's extension: one
 * path component of letters, digits, '.', '_' and '-', starting with a letter or
 * digit, no "..". Returns the reason it is not, or undefined.
 */
export function checkFileName(name: string): string | undefined {
  if (name.includes('/') || name.includes('\\')) return `${JSON.stringify(name)} is a path; give a plain file name (it is created in the recording directory)`;
  if (name.includes('..')) return `${JSON.stringify(name)} contains ".."`;
  if (!NAME_PATTERN.test(name)) return `${JSON.stringify(name)} is not a plain file name (letters, digits, ".", "_", "-"; at most 128; starting with a letter or digit)`;
  return undefined;
}

interface OpenFile extends RecordingFile {
  stream?: fs.WriteStream;
  /** records gathered in this turn of the event loop: one write for all of them */
  gathered: Buffer[];
  gatheredBytes: number;
  openedAt: number;
  finished: Promise<void>;
}

export class FileSink implements Sink {
  private readonly files: OpenFile[] = [];
  private readonly dir: string;
  private written = 0;
  private failed = false;
  private closing = false;

  private constructor(private readonly o: FileSinkOptions) {
    this.dir = o.dir;
  }

  /** Opens the first file (synchronously, so a bad name fails the start). Throws XdplbError. */
  static open(o: FileSinkOptions): FileSink {
    fs.mkdirSync(o.dir, { recursive: true, mode: 0o750 });
    const sink = new FileSink({ ...o, dir: fs.realpathSync(o.dir) });
    if (o.naming.kind === 'name') sink.checkExisting(o.naming);
    sink.openNext();
    return sink;
  }

  private field(): string {
    return this.o.naming.kind === 'name' ? 'file_sink.file_name' : 'file_sink.file_prefix';
  }

  private nameOf(seq: number): string {
    const n = this.o.naming;
    const ext = this.o.extension;
    if (n.kind === 'prefix') return `${n.prefix}_${n.startSec}_${n.id}_${seq}${ext}`;
    return seq === 0 ? `${n.name}${ext}` : `${n.name}.${seq}${ext}`;
  }

  /**
   * The files a named recording would write (NAME.ext, NAME.N.ext): a link or
   * anything but a plain file among them is refused; plain files only with
   * overwrite, which removes them all so the directory then holds this
   * recording's files only.
   */
  private checkExisting(n: { name: string; overwrite: boolean }): void {
    const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const re = new RegExp(`^${esc(n.name)}(\\.\\d+)?${esc(this.o.extension)}$`);
    const existing = fs.readdirSync(this.dir).filter((f) => re.test(f));
    for (const f of existing) {
      const st = fs.lstatSync(path.join(this.dir, f));
      if (!st.isFile()) throw XdplbError.invalid('file_sink.file_name', `${f} in the recording directory is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a plain file'}; refusing to write there`);
    }
    if (existing.length && !n.overwrite) throw new XdplbError('ALREADY_EXISTS', `${existing.sort().join(', ')} exists in the recording directory ${this.dir}; choose another name or set overwrite`, { field: 'file_sink.file_name' });
    for (const f of existing) fs.unlinkSync(path.join(this.dir, f));
  }

  private openNext(): void {
    const seq = this.files.length;
    const p = path.join(this.dir, this.nameOf(seq));
    const overwrite = this.o.naming.kind === 'name' && this.o.naming.overwrite;
    const C = fs.constants;
    let fd: number;
    try {
      fd = fs.openSync(p, C.O_WRONLY | C.O_CREAT | C.O_NOFOLLOW | (overwrite ? C.O_TRUNC : C.O_EXCL), 0o640);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw new XdplbError('ALREADY_EXISTS', `${p} exists; refusing to overwrite it`, { field: this.field() });
      if (code === 'ELOOP') throw XdplbError.invalid(this.field(), `${p} is a symbolic link; refusing to write through it`);
      throw XdplbError.failedPrecondition(`cannot create ${p}: ${(e as Error).message}`, this.field());
    }
    const stream = fs.createWriteStream(p, { fd, highWaterMark: 1 << 20 });
    const file: OpenFile = {
      path: p,
      packets: 0,
      sizeBytes: 0,
      closed: false,
      deleted: false,
      stream,
      gathered: [],
      gatheredBytes: 0,
      openedAt: Date.now(),
      finished: new Promise<void>((resolve) => {
        stream.once('close', () => {
          file.closed = true;
          resolve();
        });
      }),
    };
    stream.on('error', (e) => this.fail(e));
    this.files.push(file);
    this.put(file, this.o.header);
    this.pruneFiles();
  }

  private fail(e: Error): void {
    if (this.failed) return;
    this.failed = true;
    this.o.onError(e);
  }

  private put(file: OpenFile, bytes: Buffer): void {
    if (file.gathered.length === 0) setImmediate(() => this.flush(file));
    file.gathered.push(bytes);
    file.gatheredBytes += bytes.length;
    file.sizeBytes += bytes.length;
    this.written += bytes.length;
  }

  private flush(file: OpenFile): void {
    if (file.gathered.length === 0 || file.stream!.writableEnded) return;
    file.stream!.write(file.gathered.length === 1 ? file.gathered[0] : Buffer.concat(file.gathered, file.gatheredBytes));
    file.gathered = [];
    file.gatheredBytes = 0;
  }

  /** Its last records, then the end of the file. */
  private end(file: OpenFile): void {
    this.flush(file);
    if (!file.stream!.writableEnded) file.stream!.end();
  }

  /** A ring of files: the oldest goes once it is closed. */
  private pruneFiles(): void {
    const max = this.o.rotation.maxFiles;
    if (!max) return;
    const live = this.files.filter((f) => !f.deleted);
    for (const f of live.slice(0, Math.max(0, live.length - max))) {
      f.deleted = true;
      void f.finished.then(() => fs.promises.unlink(f.path)).catch((e: Error) => this.fail(e));
    }
  }

  private current(): OpenFile {
    return this.files[this.files.length - 1];
  }

  private dueForRotation(cur: OpenFile, recordLen: number): boolean {
    const r = this.o.rotation;
    if (cur.packets === 0) return false;
    if (r.maxPackets && cur.packets >= r.maxPackets) return true;
    if (r.maxBytes && cur.sizeBytes + recordLen > r.maxBytes) return true;
    return r.maxDurationMs > 0 && Date.now() - cur.openedAt >= r.maxDurationMs;
  }

  get bytesWritten(): number {
    return this.written;
  }

  write(record: Buffer): boolean {
    if (this.failed || this.closing) return false;
    let cur = this.current();
    if (cur.stream!.writableLength + cur.gatheredBytes + record.length > (this.o.maxQueued ?? DEFAULT_QUEUED)) return false;
    if (this.dueForRotation(cur, record.length)) {
      this.end(cur);
      try {
        this.openNext();
      } catch (e) {
        this.fail(e as Error);
        return false;
      }
      cur = this.current();
    }
    this.put(cur, record);
    cur.packets++;
    return true;
  }

  /** The files so far, oldest first. */
  list(): RecordingFile[] {
    return this.files.map((f) => ({ path: f.path, packets: f.packets, sizeBytes: f.sizeBytes, closed: f.closed, deleted: f.deleted }));
  }

  async close(): Promise<void> {
    this.closing = true;
    const cur = this.current();
    if (cur) this.end(cur);
    await Promise.all(this.files.map((f) => f.finished));
  }

  async discard(): Promise<void> {
    await this.close();
    await Promise.all(this.files.filter((f) => !f.deleted).map((f) => fs.promises.rm(f.path, { force: true })));
  }
}

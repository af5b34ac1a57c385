// The file sink: capture files in the daemon's recording directory only, written
// through async streams with a bounded queue, rotated by size, packet count or
// age, optionally as a ring of files.
//
// Names are never paths: the API gives a prefix (^[a-z][a-z0-9_-]{0,31}$) or a
// plain file name (see checkFileName), and every file is opened with
// O_NOFOLLOW and, unless the caller asked to overwrite, O_EXCL — so no name can
// leave the directory, follow a link placed in it, or replace a file silently.
// Which files a recording may write is one rule, fileSet(): the existence
// check, overwrite and the refusal of a name that overlaps a running
// recording's files all ask it.
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
  | { kind: 'name'; name: string };

/**
 * The files one recording may ever write in its directory, and nothing else:
 *
 *   file name "t", no rotation:   t.pcap
 *   file name "t", rotating:      t.pcap, t.1.pcap, t.2.pcap, ...
 *   prefix "web", no rotation:    web_<start unix s>_<id>_0.pcap
 *   prefix "web", rotating:       web_<start unix s>_<id>_0.pcap, ..._1.pcap, ...
 *
 * A recording that does not rotate writes its first file only, so "t" and
 * "t.1" can record side by side unless "t" rotates. The extension is the
 * format's (".pcap", ".pcapng"); there is no compression suffix.
 */
export interface FileSet {
  /** the recording directory, resolved (realpath) */
  readonly dir: string;
  readonly naming: FileNaming;
  readonly rotation: FileRotation;
  /** the name of the file with this sequence number (0: the first) */
  nameOf(seq: number): string;
  /** whether this recording may write the file of this name in `dir` */
  owns(file: string): boolean;
  /** the set for people: "t.pcap, t.1.pcap, t.2.pcap, …" */
  describe(): string;
}

const SEQ = /^(0|[1-9]\d*)$/;

/** The sequence number of `file` read as head + digits + ext. */
function seqOf(file: string, head: string, ext: string): number | undefined {
  if (file.length <= head.length + ext.length || !file.startsWith(head) || !file.endsWith(ext)) return undefined;
  const digits = file.slice(head.length, file.length - ext.length);
  return SEQ.test(digits) ? Number(digits) : undefined;
}

function rotates(r: FileRotation): boolean {
  return r.maxBytes > 0 || r.maxPackets > 0 || r.maxDurationMs > 0;
}

export function fileSet(dir: string, naming: FileNaming, extension: string, rotation: FileRotation): FileSet {
  const many = rotates(rotation);
  const head = naming.kind === 'prefix' ? `${naming.prefix}_${naming.startSec}_${naming.id}_` : `${naming.name}.`;
  const nameOf = (seq: number) => (naming.kind === 'name' && seq === 0 ? `${naming.name}${extension}` : `${head}${seq}${extension}`);
  return {
    dir,
    naming,
    rotation,
    nameOf,
    owns(file) {
      if (file === nameOf(0)) return true;
      const seq = many ? seqOf(file, head, extension) : undefined;
      return seq !== undefined && (naming.kind === 'prefix' || seq > 0);
    },
    describe: () => (many ? `${nameOf(0)}, ${nameOf(1)}, ${nameOf(2)}, …` : nameOf(0)),
  };
}

/**
 * A file both sets may write, if any. Every name is a stem, at most one
 * separator ("." or "_") with digits, and the extension; when two sets share a
 * file, the set with the longer stem shares its first file (the part after the
 * shorter stem holds one separator at most, so the longer stem's own sequence
 * part is empty or it is the same stem). So the first files decide.
 */
export function sharedFile(a: FileSet, b: FileSet): string | undefined {
  if (a.dir !== b.dir) return undefined;
  if (a.owns(b.nameOf(0))) return b.nameOf(0);
  if (b.owns(a.nameOf(0))) return a.nameOf(0);
  return undefined;
}

/** The recording directory, made if missing, as the path FileSet compares. */
export function recordingDir(dir: string): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o750 });
  return fs.realpathSync(dir);
}

export interface FileSinkOptions {
  /** from fileSet() on recordingDir() */
  files: FileSet;
  /** with a file name: replace that name's files (never another running recording's: the caller refused overlaps) */
  overwrite: boolean;
  /** the capture file header, written at the start of every file */
  header: Buffer;
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
  private written = 0;
  private failed = false;
  private closing = false;

  private constructor(private readonly o: FileSinkOptions) {}

  /** Opens the first file (synchronously, so a bad name fails the start). Throws XdplbError. */
  static open(o: FileSinkOptions): FileSink {
    const sink = new FileSink(o);
    sink.checkExisting();
    sink.openNext();
    return sink;
  }

  /** The files this sink may write. */
  get fileSet(): FileSet {
    return this.o.files;
  }

  private field(): string {
    return this.o.files.naming.kind === 'name' ? 'file_sink.file_name' : 'file_sink.file_prefix';
  }

  private get overwrite(): boolean {
    return this.o.overwrite && this.o.files.naming.kind === 'name';
  }

  /**
   * The files of this recording's set already in the directory: a link or
   * anything but a plain file among them is refused; plain files only with
   * overwrite, which removes them all so the directory then holds this
   * recording's files only.
   */
  private checkExisting(): void {
    const { dir } = this.o.files;
    const existing = fs.readdirSync(dir).filter((f) => this.o.files.owns(f));
    for (const f of existing) {
      const st = fs.lstatSync(path.join(dir, f));
      if (!st.isFile()) throw XdplbError.invalid(this.field(), `${f} in the recording directory is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a plain file'}; refusing to write there`);
    }
    if (existing.length && !this.overwrite) throw new XdplbError('ALREADY_EXISTS', `${existing.sort().join(', ')} exists in the recording directory ${dir}; choose another name or set overwrite`, { field: this.field() });
    for (const f of existing) fs.unlinkSync(path.join(dir, f));
  }

  private openNext(): void {
    const p = path.join(this.o.files.dir, this.o.files.nameOf(this.files.length));
    const overwrite = this.overwrite;
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
    const max = this.o.files.rotation.maxFiles;
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
    const r = this.o.files.rotation;
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

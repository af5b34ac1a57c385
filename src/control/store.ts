// The state directory: services created through the API, persisted so that a
// restart (or a crash) loses no accepted change. services.json holds them all,
// written atomically (a temporary file, fsync, rename over the old one, fsync
// of the directory); each change after it appends only the services it put or
// deleted to a journal, one JSON line each, and fsyncs it, so a change costs
// what it changes: rewriting 10,000 services took 64 ms a change (4.4 MB).
// The journal is folded into a new services.json once it has as many lines
// as there are services. services.json names its journal by generation, so a
// crash between the two steps never replays an old journal over a newer file.
//
// The journal is written ahead with zeros (and fsynced once), and a change is
// written over them and fdatasynced: with the file's size and blocks already
// on disk, the sync flushes the data alone, without a commit of the file
// system's journal (an fsync of an append cost 1.5 ms at the median and 13 ms
// at p99 on this machine's ext4, the overwrite 0.15 ms and 8 ms). A reader
// stops at the first zero byte: JSON lines never hold one.
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { StoredService } from './model';

const FILE = 'services.json';
/** 1: services.json alone; 2: services.json and services.<journal>.journal */
const FORMAT = 2;
/** A journal this short is never folded: a few services are cheap to rewrite, a few lines cheaper to append. */
const FOLD_MIN = 256;
/** Zeros written ahead of the journal's lines at a time. */
const AHEAD = 256 * 1024;

interface StateFile {
  format: number;
  services: StoredService[];
  /** generation of the journal that follows this file */
  journal?: number;
}

type JournalLine = { put: StoredService } | { delete: string };

export class ServiceStore {
  /** the services on disk, by name, as the objects last saved (a change is what differs from them) */
  private saved?: Map<string, StoredService>;
  private generation = 0;
  private lines = 0;
  /** the open journal, where its lines end and how far zeros are written ahead */
  private open?: { fh: fs.FileHandle; end: number; zeroed: number };

  constructor(readonly dir: string) {}

  get file(): string {
    return path.join(this.dir, FILE);
  }

  private journal(generation = this.generation): string {
    return path.join(this.dir, `services.${generation}.journal`);
  }

  /** The API-owned services last saved, or none when nothing was ever saved. */
  async load(): Promise<StoredService[]> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const state = JSON.parse(text) as StateFile;
    if ((state.format !== 1 && state.format !== FORMAT) || !Array.isArray(state.services))
      throw new Error(`${this.file}: unknown state format ${String(state.format)}`);
    const services = new Map(state.services.map((s) => [s.name, s]));
    if (state.journal !== undefined) {
      this.generation = state.journal;
      let body = '';
      try {
        body = await fs.readFile(this.journal(), 'utf8');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      const zero = body.indexOf('\0');
      const lines = (zero < 0 ? body : body.slice(0, zero)).split('\n');
      lines.forEach((line, i) => {
        if (!line) return;
        let entry: JournalLine;
        try {
          entry = JSON.parse(line) as JournalLine;
        } catch (e) {
          // The last line may be a write a crash cut short: that change was never acknowledged.
          if (i === lines.length - 1) return;
          throw new Error(`${this.journal()}:${i + 1}: ${(e as Error).message}`);
        }
        if ('put' in entry) services.set(entry.put.name, entry.put);
        else services.delete(entry.delete);
        this.lines++;
      });
    }
    // Saved afresh on the first save: the controller hands back validated copies.
    return [...services.values()];
  }

  async save(services: readonly StoredService[]): Promise<void> {
    const next = new Map(services.map((s) => [s.name, s]));
    const saved = this.saved;
    if (!saved) return this.rewrite(next);
    const entries: JournalLine[] = [];
    for (const [name, s] of next) if (saved.get(name) !== s) entries.push({ put: s });
    for (const name of saved.keys()) if (!next.has(name)) entries.push({ delete: name });
    if (!entries.length) return;
    if (this.lines + entries.length > Math.max(FOLD_MIN, next.size)) return this.rewrite(next);
    await this.append(entries.map((e) => JSON.stringify(e)).join('\n') + '\n');
    this.saved = next;
    this.lines += entries.length;
  }

  /**
   * Lines written over the zeros ahead and fdatasynced; on failure zeroed
   * again, so that no reader sees a change that was refused and the next
   * append does not follow a torn line (when even that fails, the next save
   * rewrites everything).
   */
  private async append(text: string): Promise<void> {
    const j = this.open ?? (await this.create());
    const bytes = Buffer.from(text);
    const at = j.end;
    try {
      if (at + bytes.length > j.zeroed) {
        const size = Math.max(AHEAD, bytes.length);
        await j.fh.write(Buffer.alloc(size), 0, size, j.zeroed);
        j.zeroed += size;
        await j.fh.sync();
      }
      await j.fh.write(bytes, 0, bytes.length, at);
      await j.fh.datasync();
    } catch (e) {
      const zeros = Buffer.alloc(bytes.length);
      await j.fh
        .write(zeros, 0, zeros.length, at)
        .then(() => j.fh.datasync())
        .catch(() => (this.saved = undefined));
      throw e;
    }
    j.end = at + bytes.length;
  }

  /** This generation's journal, new and empty, its name durable. */
  private async create(): Promise<{ fh: fs.FileHandle; end: number; zeroed: number }> {
    const fh = await fs.open(this.journal(), 'w', 0o600);
    try {
      await this.syncDir();
    } catch (e) {
      await fh.close();
      throw e;
    }
    this.open = { fh, end: 0, zeroed: 0 };
    return this.open;
  }

  /** The journal closed (daemon exit). */
  async close(): Promise<void> {
    const j = this.open;
    this.open = undefined;
    await j?.fh.close();
  }

  /** Every service in a new services.json, followed by a new, empty journal. */
  private async rewrite(next: Map<string, StoredService>): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const old = this.generation;
    const generation = old + 1;
    const tmp = `${this.file}.${process.pid}.tmp`;
    const body: StateFile = { format: FORMAT, services: [...next.values()], journal: generation };
    const fh = await fs.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(body, null, 1));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, this.file);
    await this.syncDir();
    this.saved = next;
    this.generation = generation;
    this.lines = 0;
    await this.close();
    await fs.rm(this.journal(old), { force: true });
  }

  private async syncDir(): Promise<void> {
    const dh = await fs.open(this.dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }
}

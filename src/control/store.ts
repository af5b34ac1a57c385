// The state directory: services created through the API, persisted so that a
// restart (or a crash) loses no accepted change. Written atomically: a temporary
// file, fsync, rename over the old one, fsync of the directory.
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { ServiceSpec } from './model';

const FILE = 'services.json';
const FORMAT = 1;

interface StateFile {
  format: number;
  services: ServiceSpec[];
}

export class ServiceStore {
  constructor(readonly dir: string) {}

  get file(): string {
    return path.join(this.dir, FILE);
  }

  /** The API-owned services last saved, or none when nothing was ever saved. */
  async load(): Promise<ServiceSpec[]> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const state = JSON.parse(text) as StateFile;
    if (state.format !== FORMAT || !Array.isArray(state.services))
      throw new Error(`${this.file}: unknown state format ${String(state.format)}`);
    return state.services;
  }

  async save(services: readonly ServiceSpec[]): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.${process.pid}.tmp`;
    const body: StateFile = { format: FORMAT, services: [...services] };
    const fh = await fs.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(body, null, 1));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, this.file);
    const dh = await fs.open(this.dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }
}

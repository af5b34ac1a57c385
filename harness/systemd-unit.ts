// The capabilities systemd grants the unit, read from systemd/xdplb.service and
// drop-ins as systemd reads them: each CapabilityBoundingSet= line adds to the
// set, an empty one resets it. The inverted form ("~CAP_...") is refused, not
// guessed at: neither file uses it.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MAIN } from './daemon';
import type { Teardown } from './fixtures';
import { PACKAGE_ROOT } from '../src/sys/paths';

const SYSTEMD = path.join(PACKAGE_ROOT, 'systemd');
export const UNIT = path.join(SYSTEMD, 'xdplb.service');
/** The drop-in that BGP needs (README, "Announcing the VIPs over BGP"). */
export const BGP_DROP_IN = path.join(SYSTEMD, 'xdplb.service.d', 'bgp.conf');

/** Every value of `key` in the [Service] sections of these files, in order. */
export function serviceValues(files: string[], key: string): string[] {
  const values: string[] = [];
  for (const file of files) {
    let section = '';
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      const s = /^\[(.+)\]\s*$/.exec(line);
      if (s) section = s[1];
      else if (section === 'Service' && line.startsWith(`${key}=`)) values.push(line.slice(key.length + 1).trim());
    }
  }
  return values;
}

/** CapabilityBoundingSet= of the unit and these drop-ins, as setpriv names them: bpf, net_admin, ... */
export function unitCapabilities(dropIns: string[] = []): string[] {
  const files = [UNIT, ...dropIns];
  const set = new Set<string>();
  const lines = serviceValues(files, 'CapabilityBoundingSet');
  if (!lines.length) throw new Error(`no CapabilityBoundingSet in ${files.join(', ')}`);
  for (const v of lines) {
    if (!v) set.clear();
    if (v.startsWith('~')) throw new Error(`CapabilityBoundingSet=${v}: the inverted form is not read here`);
    for (const c of v.split(/\s+/).filter(Boolean)) set.add(c.replace(/^CAP_/, '').toLowerCase());
  }
  return [...set];
}

/**
 * A copy of the unit, with these drop-ins where systemd looks for them
 * (xdplb.service.d/ beside it) and ExecStart on this checkout and this Node.js,
 * so that systemd-analyze verify finds every file. Removed at teardown.
 */
export function unitCopy(t: Teardown, dropIns: string[] = []): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-unit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const unit = path.join(dir, 'xdplb.service');
  fs.writeFileSync(unit, fs.readFileSync(UNIT, 'utf8').replace(/^ExecStart=\S+ \/opt\/xdplb\/dist\/src\/cli\/main\.js/m, `ExecStart=${process.execPath} ${MAIN}`));
  if (dropIns.length) fs.mkdirSync(`${unit}.d`);
  for (const f of dropIns) fs.copyFileSync(f, path.join(`${unit}.d`, path.basename(f)));
  return unit;
}

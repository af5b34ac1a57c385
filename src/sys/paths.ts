import * as path from 'node:path';

/** Root of the package: dist/src/sys -> ../../.. (build/, xdp/, config/, proto/ hang off it). */
export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..', '..');

// Maglev consistent hashing: pure table generation and diffing, no I/O; many
// tables at once on a worker thread.
export {
  type MaglevBackend,
  NO_BACKEND,
  DEFAULT_M,
  MAX_M,
  MAX_WEIGHT,
  isPrime,
  validate,
  buildTable,
  diffTables,
  maglevKey,
} from './table';
export { TableStream } from './build';

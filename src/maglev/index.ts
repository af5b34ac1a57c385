// Maglev consistent hashing: pure table generation and diffing, no I/O.
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
} from './table';

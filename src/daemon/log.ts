// Structured JSON logs: one line per state change worth knowing, never one per packet.
import pino, { type Logger } from 'pino';
import type { LogLevel } from '../control/model';

export function createLogger(level: LogLevel = 'info'): Logger {
  return pino({
    level,
    base: { pid: process.pid, component: 'xdplb' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}

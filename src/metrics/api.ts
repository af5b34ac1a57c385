// API request metrics without touching the API server: the server logs every
// unary call through the logger it is given ("api call" at debug with the
// method and its duration, "api call refused" at info with the status code).
// The daemon hands it this wrapper, which counts those lines and passes every
// call on to the real logger unchanged (a debug line still prints only at
// log_level debug).
import type { Logger } from 'pino';
import type { Metrics } from './metrics';

type LogFn = (...args: unknown[]) => void;

export function meteredApiLogger(log: Logger, metrics: Metrics): Logger {
  const tap = (level: 'debug' | 'info'): LogFn => {
    const real = log[level].bind(log) as LogFn;
    return (...args: unknown[]) => {
      const [fields, msg] = args as [Record<string, unknown> | undefined, unknown];
      if (typeof fields === 'object' && fields !== null && typeof fields.method === 'string') {
        if (msg === 'api call') metrics.observeApi(fields.method, 'OK', typeof fields.ms === 'number' ? fields.ms / 1000 : undefined);
        else if (msg === 'api call refused') metrics.observeApi(fields.method, typeof fields.code === 'string' ? fields.code : 'UNKNOWN');
      }
      real(...args);
    };
  };
  const debug = tap('debug');
  const info = tap('info');
  return new Proxy(log, {
    get(target, prop) {
      if (prop === 'debug') return debug;
      if (prop === 'info') return info;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as LogFn).bind(target) : v;
    },
  });
}

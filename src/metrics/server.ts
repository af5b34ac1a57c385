// The metrics endpoint: plain HTTP on the configured address (node setting
// `metrics: 127.0.0.1:9464`; absent, no listener at all). GET /metrics answers
// the exposition text; anything else is 404. Meant for localhost or a
// management network: it has no authentication, like most exporters.
import * as http from 'node:http';
import type { Logger } from 'pino';
import type { Metrics } from './metrics';

export interface MetricsServer {
  /** "host:port" actually bound */
  address: string;
  close(): Promise<void>;
}

/** "127.0.0.1:9464", "[::1]:9464", "localhost:9464" -> host and port. */
export function splitHostPort(listen: string): { host: string; port: number } {
  const colon = listen.lastIndexOf(':');
  const host = listen.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  return { host, port: Number(listen.slice(colon + 1)) };
}

export function startMetricsServer(listen: string, metrics: Metrics, log: Logger): Promise<MetricsServer> {
  const { host, port } = splitHostPort(listen);
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('xdplb metrics: GET /metrics\n');
      return;
    }
    metrics.text().then(
      (text) => {
        res.writeHead(200, { 'content-type': metrics.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (e: Error) => {
        log.error({ error: e.message }, 'metrics scrape failed');
        res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end(`${e.message}\n`);
      },
    );
  });
  server.keepAliveTimeout = 65_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address();
      const address = a && typeof a === 'object' ? (a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`) : listen;
      log.info({ address }, 'metrics endpoint listening');
      resolve({
        address,
        close: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}

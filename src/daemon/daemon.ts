// The daemon: loads the configuration, adopts or loads the datapath, restores
// the API-owned services, serves the API, and reloads on SIGHUP. Stopping leaves
// the program attached and the maps pinned, so forwarding never stops; only
// --detach-on-exit=true removes them.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { loadConfigFileApart } from '../config';
import { Controller } from '../control/controller';
import { backendKey, type Config } from '../control/model';
import { ServiceStore } from '../control/store';
import { validateService } from '../control/validate';
import { startApi, type ApiServer } from '../api/server';
import { SERVICE_NAME } from '../api/proto';
import { LbDatapath } from '../datapath/lb';
import { checkCapabilities } from './capabilities';
import { createLogger } from './log';
import { lockDaemon } from './lock';
import { NeighbourKeeper } from '../net/neighbours';
import { Notifier } from './notify';
import { StatusReporter } from './status';
// Operations (issue 8): metrics, health checks.
import type { DatapathSink } from '../control/controller';
import { HealthChecker } from '../health/checker';
import { Metrics } from '../metrics/metrics';
import { meteredApiLogger } from '../metrics/api';
import { startMetricsServer, type MetricsServer } from '../metrics/server';
// The packet recorder (issue 6).
import { RecorderMaps } from '../recorder/datapath';
import { Recorder } from '../recorder/recordings';
// VIP announcement over BGP (issue 16): src/bgp loads only with a bgp: section.
import type { Speaker } from '../bgp/speaker';

export interface DaemonOptions {
  configPath: string;
  detachOnExit: boolean;
}

export interface Daemon {
  controller: Controller;
  datapath: LbDatapath;
  api: ApiServer;
  log: Logger;
  health: HealthChecker;
  metrics: Metrics;
  recorder: Recorder;
  /** READY=1 to systemd, with the first STATUS=; updates follow from then on */
  ready(): void;
  reload(): Promise<void>;
  stop(): Promise<void>;
}

function fixedSettingsChanged(a: Config['node'], b: Config['node']): string[] {
  const fixed: Array<keyof Config['node']> = ['bpffs', 'stateDir', 'api'];
  return fixed.filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  let config = await loadConfigFileApart(opts.configPath);
  const log = createLogger(config.node.logLevel);
  checkCapabilities(log);
  const notifier = new Notifier(log);
  // Before anything is touched: a second daemon must leave the first one's
  // program, maps, recordings, socket and metrics port alone.
  const lock = lockDaemon(config.node);
  const started = Date.now();
  const datapath = LbDatapath.open(config.node, log);
  const store = new ServiceStore(config.node.stateDir);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const metrics = new Metrics((require('../../../package.json') as { version: string }).version);
  const neighbours = new NeighbourKeeper({
    log,
    backends: () => controller.list().flatMap((s) => s.backends.map((b) => b.address)),
    noNeighCount: () => datapath.reasonPackets('drop_fib_no_neigh'),
  });
  const statusReporter = new StatusReporter({
    facts: () => ({ services: controller.list(), recordings: recorder.totals().active }),
    send: (line) => notifier.notify(`STATUS=${line}`),
  });
  // Every change of the services reaches the datapath here, a health check's
  // hold on a backend included: the one place STATUS= needs to hear of it.
  let bgp: Speaker | undefined;
  const controller = new Controller(
    followedBy(timedSink(datapath, metrics), () => {
      void neighbours.servicesChanged();
      statusReporter.changed();
      bgp?.changed();
    }),
    store,
    validateService,
    log,
  );
  await controller.restore(config.services, await store.load());
  neighbours.start();
  const status = async () => {
    const [s, nextHops] = await Promise.all([datapath.status(controller.list(), (Date.now() - started) / 1000), neighbours.snapshot()]);
    const resolved = nextHops.filter((n) => n.resolved).length;
    return { ...s, nextHops, nextHopsResolved: resolved, nextHopsUnresolved: nextHops.length - resolved };
  };
  // Recordings do not survive a restart: whatever rules a previous daemon left
  // in the recorder maps are cleared before the API can start new ones.
  const recorderMaps = RecorderMaps.open(config.node.bpffs);
  recorderMaps?.reset();
  if (!recorderMaps) log.warn('the datapath has no recorder maps: recording is not available');
  const recorder = new Recorder({
    datapath: recorderMaps,
    dir: config.node.recorderDir,
    log,
    backendName: backendNames(controller, datapath),
    onChange: () => statusReporter.changed(),
  });
  const bgpDir = path.join(config.node.stateDir, 'bgp');
  if (!config.bgp && fs.existsSync(bgpDir)) await (await import('../bgp/speaker')).retireSpeaker(bgpDir, log);
  bgp = config.bgp
    ? await (await import('../bgp/speaker')).startSpeaker({
        settings: config.bgp,
        dir: bgpDir,
        log,
        services: () => controller.list(),
        attached: () => datapath.attachedInterfaces(),
        vipPackets: async () => (await datapath.counters(controller.list())).services.reduce((n, s) => n + s.traffic.packets, 0),
        registry: metrics.registry,
      })
    : undefined;
  const api = await startApi(config.node.api, {
    bgp,
    recorder,
    controller,
    counters: (service) => datapath.counters(controller.list(), service),
    status,
    log: meteredApiLogger(log, metrics),
  });
  // --- operations: health checks and the metrics endpoint (issue 8) ---
  const health = new HealthChecker(controller, log, {
    events: {
      probe: (type, ok, seconds) => metrics.observeProbe(type, ok, seconds),
      transition: (service, backend, _from, to) => {
        metrics.observeTransition(service, backend, to);
      },
    },
  });
  health.start();
  metrics.bind({
    counters: () => datapath.counters(controller.list()),
    status,
    services: () => controller.list(),
    health: () => health.snapshot(),
    allDown: () => health.allDown(),
    probeLoad: () => health.load(),
    recorder: () => recorder.totals(),
  });
  let metricsServer: MetricsServer | undefined = config.node.metrics ? await startMetricsServer(config.node.metrics, metrics, log) : undefined;
  // --- end operations ---
  api.health.setStatus('', 'SERVING');
  api.health.setStatus(SERVICE_NAME, 'SERVING');
  log.info({ endpoints: api.endpoints, services: controller.list().length }, 'ready');

  const ready = () => {
    notifier.notify(`READY=1\nSTATUS=${statusReporter.ready()}`);
  };

  const reload = async () => {
    notifier.notify(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`);
    try {
      const next = await loadConfigFileApart(opts.configPath);
      const fixed = fixedSettingsChanged(config.node, next.node);
      if (fixed.length) log.warn({ settings: fixed }, 'these settings change only on restart; keeping the running values');
      await datapath.reconfigure({ ...next.node, bpffs: config.node.bpffs, stateDir: config.node.stateDir, api: config.node.api });
      recorder.setDir(next.node.recorderDir);
      if (!next.bgp !== !bgp) log.warn('a bgp: section added or removed takes effect on restart');
      if (bgp && next.bgp) await bgp.reconfigure(next.bgp);
      await controller.replaceOwned('file', next.services);
      health.sync();
      if (next.node.metrics !== config.node.metrics) {
        await metricsServer?.close();
        metricsServer = undefined;
        if (next.node.metrics)
          metricsServer = await startMetricsServer(next.node.metrics, metrics, log).catch((e: Error) => {
            log.error({ address: next.node.metrics, error: e.message }, 'metrics endpoint not started');
            return undefined;
          });
        else log.info('metrics endpoint closed');
      }
      config = next;
      log.info({ services: controller.list().length }, 'configuration reloaded');
    } catch (e) {
      log.error({ error: (e as Error).message }, 'reload rejected; running state unchanged');
    } finally {
      notifier.notify('READY=1');
    }
  };

  const stop = async () => {
    statusReporter.stop();
    notifier.notify('STOPPING=1\nSTATUS=stopping: closing recordings and the API');
    api.health.setStatus('', 'NOT_SERVING');
    // Routers stop sending here first; the datapath forwards what is still on its way.
    await bgp?.stop();
    health.stop();
    // Recordings end first: their files are completed and their streams get
    // the final chunk before the API waits for open calls.
    await recorder.close();
    recorderMaps?.close();
    await neighbours.stop();
    await metricsServer?.close();
    await api.close();
    if (opts.detachOnExit) {
      datapath.uninstall();
      log.info('datapath detached and pins removed');
    } else {
      datapath.close();
      log.info('stopped; the datapath stays attached and keeps forwarding');
    }
    await store.close();
    lock.release();
  };

  return { controller, datapath, api, log, health, metrics, recorder, ready, reload, stop };
}

/** Backend id -> address, for pcapng packet comments; rebuilt at most once a second. */
function backendNames(controller: Controller, datapath: LbDatapath): (id: number) => string | undefined {
  let names = new Map<number, string>();
  let built = 0;
  return (id) => {
    if (Date.now() - built > 1000) {
      names = new Map();
      for (const spec of controller.list()) {
        const ids = datapath.ids(spec)?.backends;
        for (const b of spec.backends) {
          const bid = ids?.get(backendKey(b.address, b.port));
          if (bid !== undefined) names.set(bid, b.port ? `${b.address}:${b.port}` : b.address);
        }
      }
      built = Date.now();
    }
    return names.get(id);
  };
}

/** The datapath as the controller sees it, with every update timed for the metrics. */
function timedSink(datapath: DatapathSink, metrics: Metrics): DatapathSink {
  return {
    async apply(services) {
      const t0 = process.hrtime.bigint();
      try {
        const change = await datapath.apply(services);
        metrics.observeRebuild(Number(process.hrtime.bigint() - t0) / 1e9, true);
        return change;
      } catch (e) {
        metrics.observeRebuild(0, false);
        throw e;
      }
    },
  };
}

/** A sink that runs `after` once a change is committed. */
function followedBy(sink: DatapathSink, after: () => void): DatapathSink {
  return {
    async apply(services) {
      const change = await sink.apply(services);
      return {
        commit() {
          change.commit();
          after();
        },
        rollback: () => change.rollback(),
      };
    },
  };
}

/** `xdplb daemon`: runs until SIGTERM/SIGINT. */
export async function runDaemon(opts: DaemonOptions): Promise<void> {
  const d = await startDaemon(opts);
  let reloading = Promise.resolve();
  process.on('SIGHUP', () => {
    reloading = reloading.then(d.reload).catch((e: Error) => d.log.error({ error: e.message }, 'reload failed'));
  });
  let stopping = false;
  const onSignal = (sig: string) => {
    if (stopping) return;
    stopping = true;
    d.log.info({ signal: sig }, 'stopping');
    d.stop().then(
      () => process.exit(0),
      (e: Error) => {
        d.log.error({ error: e.message }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  d.ready();
}

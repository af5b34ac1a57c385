// The Kubernetes module's boundary (issue 15): what the daemon gives it and
// what it gives back. The daemon imports this file only when a kubernetes:
// section is configured, so neither the module nor @kubernetes/client-node
// loads otherwise.
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { KubernetesSettings, KubernetesStatus, OwnedService, ServiceSpec } from '../control/model';

export interface KubernetesHost {
  settings: KubernetesSettings;
  log: Logger;
  /** prom-client registry the module's metrics join */
  registry: Registry;
  /**
   * Makes the kubernetes-owned services exactly these, all or nothing; rejects
   * with an XdplbError naming the field when one is refused (nothing changes).
   */
  replaceServices(specs: readonly ServiceSpec[]): Promise<void>;
  /** every service in force, any owner: addresses a pool must not hand out, and what survived a restart */
  services(): readonly OwnedService[];
}

export interface KubernetesModule {
  status(): KubernetesStatus;
  /** stops watching; the services it programmed stay */
  stop(): Promise<void>;
}

export async function startKubernetes(host: KubernetesHost): Promise<KubernetesModule> {
  throw new Error(`the kubernetes module is not built yet (kubernetes: ${JSON.stringify(host.settings.loadBalancerClass)})`);
}

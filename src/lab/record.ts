// The lab test's recording: while `xdplb lab test` sends its traffic, the
// daemon's recorder captures every packet to the VIPs (both capture points)
// into lab-test.pcapng in the lab's recording directory, replaced by each run.
// A daemon without the recorder (its datapath has no recorder maps, or an
// older daemon without the service) is no failure: the test runs unrecorded.
import * as grpc from '@grpc/grpc-js';
import { call, connect, type Client } from '../client/client';
import type { Lab } from './lab';
import { Address } from '../net/address';

export interface LabRecording {
  path: string;
  /** packets written: each client packet twice, inbound and outbound */
  packets: number;
  lostInRing: number;
  /** how to open it */
  open: string;
}

export interface RunningLabRecording {
  stop(): Promise<LabRecording | undefined>;
}

interface PbRecording {
  id: string;
  stats: { packetsWritten: number; lostInRing: number };
  files: Array<{ path: string }>;
}

/** Starts recording the traffic to `vips`; undefined when the daemon cannot record. */
export async function recordVips(lab: Lab, vips: readonly string[]): Promise<RunningLabRecording | undefined> {
  const st = lab.state();
  if (!st || vips.length === 0) return undefined;
  const client: Client = connect({ socket: st.socket }, 'Recorder');
  let started: PbRecording;
  try {
    started = await call<PbRecording>(client, 'StartRecording', {
      name: 'lab test',
      include: vips.map((v) => ({ destinationCidr: `${v}/${Address.of(v).bits}` })),
      fileSink: { fileName: 'lab-test', format: 'CAPTURE_FORMAT_PCAPNG', overwrite: true },
    });
  } catch (e) {
    client.close();
    const unsupported = [grpc.status.FAILED_PRECONDITION, grpc.status.UNIMPLEMENTED].map((c) => `${grpc.status[c]}:`);
    if (unsupported.some((p) => (e as Error).message.startsWith(p))) return undefined;
    throw e;
  }
  return {
    async stop() {
      try {
        const r = await call<PbRecording>(client, 'StopRecording', { id: started.id });
        const path = r.files[0]?.path;
        if (!path) return undefined;
        return { path, packets: r.stats.packetsWritten, lostInRing: r.stats.lostInRing, open: `wireshark ${path}   or   tshark -r ${path}` };
      } finally {
        client.close();
      }
    },
  };
}

// The live capture benchmark's generator on a thread of its own: live-frames
// test runs are synchronous and last ~24 ms each, and the recorder under test
// needs its event loop free meanwhile. The worker's thread enters the
// generator namespace once and stays there.
import { parentPort, workerData } from 'node:worker_threads';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';

export interface GeneratorSetup {
  /** namespace name of the generator's veth end */
  ns: string;
  ifname: string;
  /** bpffs directory for the test object's pinned map (the bench's own, removed at its end) */
  pinRoot: string;
  frame: Uint8Array;
}

/** One step: bursts of `burst` frames, run after run, for `seconds`. */
export interface GeneratorStep {
  burst: number;
  seconds: number;
}

export interface GeneratorResult {
  sent: number;
  secs: number;
}

const setup = workerData as GeneratorSetup;
const prog = bpf.openObject(bpf.testObjectPath('native_test'), { pinRoot: setup.pinRoot }).program('xdp_tx');
const frame = Buffer.from(setup.frame);
const ifindex = sys.withNetns(setup.ns, () => sys.ifIndex(setup.ifname));

parentPort!.on('message', (step: GeneratorStep) => {
  const start = process.hrtime.bigint();
  let sent = 0;
  sys.withNetns(setup.ns, () => {
    while (Number(process.hrtime.bigint() - start) / 1e9 < step.seconds) {
      prog.testRun({ data: frame, ctx: bpf.xdpContext(ifindex), repeat: step.burst, flags: bpf.BPF_F_TEST_XDP_LIVE_FRAMES, batchSize: 64 });
      sent += step.burst;
    }
  });
  const result: GeneratorResult = { sent, secs: Number(process.hrtime.bigint() - start) / 1e9 };
  parentPort!.postMessage(result);
});

// A process's capabilities as the kernel shows them in /proc/PID/status.

/** The effective set from /proc/PID/status text ("CapEff:\t000001fffeffffff"). */
export function effectiveCapabilities(status: string): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  if (!m) throw new Error('no CapEff line');
  return BigInt(`0x${m[1]}`);
}

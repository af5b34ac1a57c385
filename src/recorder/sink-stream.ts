// A live stream sink: records are gathered for one turn of the event loop and
// handed to the transport (the Record call) as one chunk. Bytes handed over but
// not yet flushed by the transport, plus those gathered, count against the
// caller's buffer; a record that does not fit is refused whole, so the bytes the
// caller has are always a valid capture file.
import { DEFAULT_STREAM_BUFFER } from './request';
import type { Sink } from './sink';

/** The transport: send() calls done() once the bytes are out of the process's hands. */
export interface StreamTarget {
  send(data: Buffer, done: () => void): void;
  /** No more data: the final chunk and the end of the call. */
  end(): void;
}

export class StreamSink implements Sink {
  private gathered: Buffer[] = [];
  private gatheredBytes = 0;
  private inFlight = 0;
  private written = 0;
  private scheduled = false;
  private closed = false;
  private drained?: () => void;

  constructor(
    private readonly target: StreamTarget,
    header: Buffer,
    private readonly maxBuffered = DEFAULT_STREAM_BUFFER,
  ) {
    // The header always goes: without it nothing after it can be read.
    // It goes out on the next turn of the event loop, once the recording is
    // registered and the transport can name it.
    this.gathered.push(header);
    this.gatheredBytes = header.length;
    this.written = header.length;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  get bytesWritten(): number {
    return this.written;
  }

  /** Bytes held for the caller: gathered plus handed to the transport and not yet flushed. */
  get buffered(): number {
    return this.gatheredBytes + this.inFlight;
  }

  write(record: Buffer): boolean {
    if (this.closed || this.buffered + record.length > this.maxBuffered) return false;
    this.gathered.push(record);
    this.gatheredBytes += record.length;
    this.written += record.length;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
    return true;
  }

  private flush(): void {
    this.scheduled = false;
    if (this.gatheredBytes === 0) return;
    const data = this.gathered.length === 1 ? this.gathered[0] : Buffer.concat(this.gathered, this.gatheredBytes);
    const n = this.gatheredBytes;
    this.gathered = [];
    this.gatheredBytes = 0;
    this.inFlight += n;
    this.target.send(data, () => {
      this.inFlight -= n;
      if (this.inFlight === 0) this.drained?.();
    });
  }

  /**
   * Sends what is gathered, waits (up to `graceMs`) for the transport to flush
   * it, then ends the stream. A caller that has stopped reading does not hold
   * the daemon: after the grace the stream ends anyway.
   */
  /** Nothing to remove: the caller's stream ends (the start's error reaches it as the call's status). */
  discard(): Promise<void> {
    return this.close(0);
  }

  async close(graceMs = 2000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.flush();
    if (this.inFlight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        this.drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.target.end();
  }
}

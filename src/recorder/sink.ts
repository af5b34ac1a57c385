// Where a recording's bytes go: a file sink (sink-file.ts) or a live stream
// (sink-stream.ts). Both take whole encoded records and never hold more than a
// bound: past it a record is refused (and counted by the recording), never cut.

export interface Sink {
  /** Takes one encoded record (PCAP record or pcapng block); false: refused, the sink is full. */
  write(record: Buffer): boolean;
  /** Bytes accepted, headers included. */
  readonly bytesWritten: number;
  /** Everything accepted reaches its destination, then the sink closes. */
  close(): Promise<void>;
  /** A start that failed after the sink was made: closes it and removes what it created. */
  discard(): Promise<void>;
}

/** One file of a file recording (RecordingFile in recorder.proto). */
export interface RecordingFile {
  path: string;
  packets: number;
  sizeBytes: number;
  closed: boolean;
  deleted: boolean;
}

// The recorder's pure core: filters and their compilation into masks (filter.ts),
// capture file encoding and the kernel clock (pcap.ts). The daemon wires these to
// the datapath's maps, the native ring reader, files and gRPC streams.
export * from './filter';
export * from './pcap';

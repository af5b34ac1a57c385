// PerfReader: drains a BPF_MAP_TYPE_PERF_EVENT_ARRAY (one ring per CPU) on its
// own thread and hands records to JavaScript in batches, so the event loop pays
// one callback per batch, not per packet. A batch is one Buffer of packed
// records, each padded to 8 bytes, in one of two formats:
//   raw:      [u32 cpu][u32 len][len bytes]
//   recorder: the recorder's samples (struct xdplb_rec_meta + frame) decoded on
//             this thread into a header JavaScript reads without 64-bit
//             arithmetic, sorted by time within the batch:
//               0 u32 seconds of ts_ns   4 u32 ns within the second
//               8 u32 rules, low bits   12 u32 rules, high bits
//              16 u32 orig_len          20 u32 cap_len
//              24 u32 ifindex           28 u32 backend_id
//              32 u8 point  33 u8 family  34 u16 0   36 u32 cpu
//              40 cap_len frame bytes
//             Records that are no sample (too short, unknown capture point) are
//             left out and only counted, so JavaScript can still match what it
//             got against the datapath's count of samples emitted.
// Decoding and ordering here took the per-sample work that limited the capture
// rate (BigInt reads, one object per record, sorting every pending sample) off
// the event loop.
//
// Wakeups: the kernel wakes the thread only once a ring is a quarter full
// (wakeup_watermark), not for every sample as libbpf's default perf buffer does,
// and the thread drains every ring at least every kPollMs anyway. A wakeup per
// sample costs the sending CPU an irq_work and the reader a context switch per
// packet, which on a small machine took most of the capture rate.
//
// One batch at a time, acknowledged: Node dispatches a thread-safe function's
// queue for as long as it finds something in it (up to 1000 calls in one go),
// so a reader that refilled the queue while a batch was being handled kept the
// event loop in that dispatch for seconds under load — no timers, no I/O, no
// API. The next batch is queued only once JavaScript calls ack(), which the
// typed layer does from setImmediate: the loop turns between any two batches,
// and the thread meanwhile fills the next batch from the rings.
//
// While a batch waits for JavaScript the thread goes on draining the rings into
// the next one (a 4 MiB ring fills in milliseconds at line rate, far sooner than
// JavaScript takes a batch), and hands it over as soon as the ack comes.
//
// Back-pressure: at most kMaxInFlight batches wait for JavaScript and the next
// one grows to kMaxBatchBytes; beyond that the thread stops draining, the kernel
// rings fill, and the kernel counts what it cannot store as lost samples, which
// we report. Nothing buffers without bound.
#include <bpf/libbpf.h>
#include <linux/perf_event.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

// The sample header is read with the datapath's own struct (the one source of
// the map ABI); its C11 size checks are C++'s static_assert.
#define _Static_assert static_assert
#include "../../xdp/consts.h"
#include "../../xdp/layout.h"
#undef _Static_assert
#include "common.h"

namespace xdplb {

namespace {

constexpr int kMaxInFlight = 1;
constexpr size_t kFlushBytes = 1 << 20;
constexpr size_t kMaxBatchBytes = 16 << 20;
constexpr int kPollMs = 50;
// how soon a batch held back by the one in flight follows the ack
constexpr int kHeldPollMs = 1;

enum Format : uint32_t { kRaw = 0, kRecorder = 1 };

constexpr size_t kSampleHeader = 40;
constexpr uint64_t kNsPerSec = 1000000000ull;

struct Batch {
  std::vector<uint8_t> bytes;
  // records in bytes
  uint32_t count = 0;
  // ring records taken, samples or not (recorder format)
  uint32_t records = 0;
  uint64_t lost = 0;
  // recorder format: where each sample starts, and whether they are in time order
  std::vector<std::pair<uint64_t, uint32_t>> order;
  bool sorted = true;
};

inline size_t Pad8(size_t n) { return (n + 7u) & ~size_t{7}; }

// Puts a recorder batch's samples in time order; equal times keep ring order.
void SortSamples(Batch &b) {
  if (b.sorted) return;
  std::stable_sort(b.order.begin(), b.order.end(), [](const auto &x, const auto &y) { return x.first < y.first; });
  std::vector<uint8_t> out(b.bytes.size());
  size_t off = 0;
  for (const auto &o : b.order) {
    uint32_t capLen;
    memcpy(&capLen, b.bytes.data() + o.second + 20, 4);
    size_t len = kSampleHeader + Pad8(capLen);
    memcpy(out.data() + off, b.bytes.data() + o.second, len);
    off += len;
  }
  b.bytes.swap(out);
  b.sorted = true;
}

class PerfReader : public Napi::ObjectWrap<PerfReader> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PerfReader",
                       {InstanceMethod<&PerfReader::Close>("close"), InstanceMethod<&PerfReader::Stats>("stats"),
                        InstanceMethod<&PerfReader::Ack>("ack")});
  }

  // new PerfReader(mapFd, pageCount, onBatch(buffer, count, lost, records), format)
  PerfReader(const Napi::CallbackInfo &info) : Napi::ObjectWrap<PerfReader>(info) {
    Napi::Env env = info.Env();
    int mapFd = static_cast<int>(U32Arg(info, 0, "mapFd"));
    uint32_t pages = U32Arg(info, 1, "pageCount");
    if (info.Length() < 3 || !info[2].IsFunction()) throw Napi::TypeError::New(env, "onBatch must be a function");
    uint32_t format = info.Length() > 3 ? U32Arg(info, 3, "format") : kRaw;
    if (format != kRaw && format != kRecorder) throw Napi::RangeError::New(env, "format must be 0 (raw) or 1 (recorder)");
    format_ = static_cast<Format>(format);
    ClearLibbpfLog();
    struct perf_event_attr attr = {};
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_BPF_OUTPUT;
    attr.sample_type = PERF_SAMPLE_RAW;
    attr.sample_period = 1;
    attr.watermark = 1;
    attr.wakeup_watermark = static_cast<__u32>(pages * sysconf(_SC_PAGESIZE) / 4);
    pb_ = perf_buffer__new_raw(mapFd, pages, &attr, &PerfReader::OnEvent, this, nullptr);
    if (!pb_) throw SysError(env, errno, "perf buffer open", "fd " + std::to_string(mapFd));
    // Batches already queued when the reader closes are still delivered, and
    // their completions use this reader: it stays alive (a strong reference)
    // until the function is finalized after the last of them, then it may be
    // collected. At environment teardown nothing is collected any more.
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "xdplb-perf-reader", 0, 1, [this](Napi::Env) {
      if (!tearingDown_) Unref();
    });
    Ref();
    // A reader must never keep the process alive on its own.
    tsfn_.Unref(env);
    // Stops the thread at environment teardown; removed again when the reader
    // is collected first, so the hook never runs on a freed reader.
    cleanup_ = env.AddCleanupHook(std::function<void()>([this]() {
      tearingDown_ = true;
      Stop();
    }));
    thread_ = std::thread([this]() { Loop(); });
  }

  ~PerfReader() override {
    Stop();
    // A hook that has run is gone (node-addon-api frees it after the call).
    if (!tearingDown_ && !cleanup_.IsEmpty()) cleanup_.Remove(Env());
  }

 private:
  // The records of a PERF_SAMPLE_RAW ring: samples and loss reports.
  static enum bpf_perf_event_ret OnEvent(void *ctx, int cpu, struct perf_event_header *event) {
    if (event->type == PERF_RECORD_SAMPLE) {
      struct Raw {
        struct perf_event_header header;
        __u32 size;
        char data[];
      } *raw = reinterpret_cast<Raw *>(event);
      OnSample(ctx, cpu, raw->data, raw->size);
    } else if (event->type == PERF_RECORD_LOST) {
      struct Lost {
        struct perf_event_header header;
        __u64 id;
        __u64 lost;
      } *lost = reinterpret_cast<Lost *>(event);
      OnLost(ctx, cpu, lost->lost);
    }
    return LIBBPF_PERF_EVENT_CONT;
  }

  static void OnSample(void *ctx, int cpu, void *data, __u32 size) {
    auto *self = static_cast<PerfReader *>(ctx);
    self->received_.fetch_add(1, std::memory_order_relaxed);
    if (self->format_ == kRecorder) {
      self->AddSample(cpu, static_cast<const uint8_t *>(data), size);
    } else {
      auto &b = self->cur_.bytes;
      size_t off = b.size();
      b.resize(off + 8 + Pad8(size));
      uint32_t hdr[2] = {static_cast<uint32_t>(cpu), size};
      memcpy(b.data() + off, hdr, 8);
      memcpy(b.data() + off + 8, data, size);
      self->cur_.count++;
    }
    size_t batchBytes = self->cur_.bytes.size();
    if (batchBytes >= kFlushBytes) self->Flush(batchBytes >= kMaxBatchBytes);
  }

  void AddSample(int cpu, const uint8_t *data, __u32 size) {
    cur_.records++;
    struct xdplb_rec_meta m;
    if (size < sizeof(m)) return;
    memcpy(&m, data, sizeof(m));
    if ((m.point != XDPLB_CAPTURE_IN && m.point != XDPLB_CAPTURE_OUT) || size - sizeof(m) < m.cap_len) return;
    auto &b = cur_.bytes;
    size_t off = b.size();
    b.resize(off + kSampleHeader + Pad8(m.cap_len));
    uint8_t *h = b.data() + off;
    uint32_t words[10] = {static_cast<uint32_t>(m.ts_ns / kNsPerSec), static_cast<uint32_t>(m.ts_ns % kNsPerSec),
                          static_cast<uint32_t>(m.rules), static_cast<uint32_t>(m.rules >> 32),
                          m.orig_len, m.cap_len, m.ifindex, m.backend_id,
                          static_cast<uint32_t>(m.point) | static_cast<uint32_t>(m.family) << 8, static_cast<uint32_t>(cpu)};
    memcpy(h, words, kSampleHeader);
    memcpy(h + kSampleHeader, data + sizeof(m), m.cap_len);
    if (!cur_.order.empty() && m.ts_ns < cur_.order.back().first) cur_.sorted = false;
    cur_.order.emplace_back(m.ts_ns, static_cast<uint32_t>(off));
    cur_.count++;
  }

  static void OnLost(void *ctx, int cpu, __u64 cnt) {
    auto *self = static_cast<PerfReader *>(ctx);
    self->cur_.lost += cnt;
    self->lost_.fetch_add(cnt, std::memory_order_relaxed);
  }

  // Hands the current batch over; with the one before still in flight, waits
  // for it only when `wait`, and otherwise keeps the batch to grow.
  void Flush(bool wait) {
    if (cur_.records == 0 && cur_.count == 0 && cur_.lost == 0) return;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!wait && inFlight_ >= kMaxInFlight) return;
      cv_.wait(lock, [this]() { return inFlight_ < kMaxInFlight || stop_.load(); });
      if (stop_.load()) return;
      inFlight_++;
    }
    auto *batch = new Batch(std::move(cur_));
    cur_ = Batch();
    SortSamples(*batch);
    batch->order = {};
    napi_status st = tsfn_.NonBlockingCall(batch, [this](Napi::Env env, Napi::Function fn, Batch *b) {
      if (env != nullptr && fn != nullptr) {
        // JavaScript acknowledges it with ack()
        auto buf = Napi::Buffer<uint8_t>::Copy(env, b->bytes.data(), b->bytes.size());
        uint32_t count = b->count;
        uint32_t records = format_ == kRecorder ? b->records : b->count;
        double lost = static_cast<double>(b->lost);
        delete b;
        fn.Call({buf, Napi::Number::New(env, count), Napi::Number::New(env, lost), Napi::Number::New(env, records)});
      } else {
        delete b;
        Done();
      }
    });
    if (st != napi_ok) {
      delete batch;
      std::lock_guard<std::mutex> lock(mu_);
      inFlight_--;
    }
  }

  void Loop() {
    while (!stop_.load()) {
      bool held = cur_.records != 0 || cur_.lost != 0;
      int n = perf_buffer__poll(pb_, held ? kHeldPollMs : kPollMs);
      if (n < 0 && n != -EINTR) {
        pollErrors_.fetch_add(1, std::memory_order_relaxed);
        std::this_thread::sleep_for(std::chrono::milliseconds(kPollMs));
      }
      // poll drained the rings that crossed the watermark; this, the others
      perf_buffer__consume(pb_);
      Flush(false);
    }
  }

  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    tsfn_.Release();
    if (pb_) perf_buffer__free(pb_);
    pb_ = nullptr;
  }

  // A batch handed over is done with: the thread may queue the next.
  void Done() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (inFlight_ > 0) inFlight_--;
    }
    cv_.notify_one();
  }

  Napi::Value Ack(const Napi::CallbackInfo &info) {
    Done();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo &info) {
    Stop();
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("received", static_cast<double>(received_.load()));
    o.Set("lost", static_cast<double>(lost_.load()));
    o.Set("pollErrors", static_cast<double>(pollErrors_.load()));
    return o;
  }

  struct perf_buffer *pb_ = nullptr;
  Napi::Env::CleanupHook<std::function<void()>> cleanup_;
  Napi::ThreadSafeFunction tsfn_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  int inFlight_ = 0;
  std::atomic<bool> stop_{false};
  bool stopped_ = false;
  bool tearingDown_ = false;
  Format format_ = kRaw;
  Batch cur_;
  std::atomic<uint64_t> received_{0}, lost_{0}, pollErrors_{0};
};

}  // namespace

void InitPerfReader(Napi::Env env, Napi::Object exports, AddonData *data) {
  Napi::Function ctor = PerfReader::Define(env);
  data->perfReaderCtor = Napi::Persistent(ctor);
  exports.Set("PerfReader", ctor);
}

}  // namespace xdplb

// Map: a live handle on one BPF map (an owned fd), with single and batched
// element operations. Per-CPU maps take and return one value slot per possible
// CPU, each rounded up to 8 bytes as the kernel lays them out.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <vector>

#include "common.h"

namespace xdplb {

namespace {

bool IsPerCpu(uint32_t type) {
  return type == BPF_MAP_TYPE_PERCPU_ARRAY || type == BPF_MAP_TYPE_PERCPU_HASH ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE;
}

// Counts the entries of a map on a worker thread: a connection table of a
// quarter million entries takes tens to hundreds of milliseconds to walk, which
// the daemon's event loop must not wait for. Batched lookups where the map
// type has them, key by key where not; buffers are reused, nothing is kept.
class CountWorker : public Napi::AsyncWorker {
 public:
  CountWorker(Napi::Env env, int fd, std::string name, uint32_t keySize, uint32_t valueSize)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), name_(std::move(name)),
        keySize_(keySize), valueSize_(valueSize) {}
  ~CountWorker() override { close(fd_); }
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    if (!Batched()) Walk();
  }
  void OnOK() override {
    if (err_)
      deferred_.Reject(SysError(Env(), err_, "map count", name_).Value());
    else
      deferred_.Resolve(Napi::Number::New(Env(), static_cast<double>(count_)));
  }

 private:
  bool Batched() {
    constexpr uint32_t kChunk = 4096;
    std::vector<uint8_t> keys(static_cast<size_t>(kChunk) * keySize_), values(static_cast<size_t>(kChunk) * valueSize_);
    std::vector<uint8_t> inBatch(keySize_ < 8 ? 8 : keySize_), outBatch(inBatch.size());
    for (bool first = true;; first = false) {
      uint32_t n = kChunk;
      LIBBPF_OPTS(bpf_map_batch_opts, opts);
      int rc = bpf_map_lookup_batch(fd_, first ? nullptr : inBatch.data(), outBatch.data(), keys.data(), values.data(),
                                    &n, &opts);
      int err = rc ? errno : 0;
      if (first && (err == EINVAL || err == ENOTSUP || err == EOPNOTSUPP || err == 524 /* ENOTSUPP */)) return false;
      count_ += n;
      if (err == ENOENT) return true;
      if (err) {
        err_ = err;
        return true;
      }
      inBatch.swap(outBatch);
    }
  }

  void Walk() {
    std::vector<uint8_t> key(keySize_), next(keySize_);
    for (bool first = true;; first = false) {
      if (bpf_map_get_next_key(fd_, first ? nullptr : key.data(), next.data())) {
        if (errno != ENOENT) err_ = errno;
        return;
      }
      count_++;
      key.swap(next);
    }
  }

  Napi::Promise::Deferred deferred_;
  int fd_;
  std::string name_;
  uint32_t keySize_, valueSize_;
  uint64_t count_ = 0;
  int err_ = 0;
};

// Looks many keys up on a worker thread, for the counters of thousands of
// services and backends read at every API call and metrics scrape. The values
// come back side by side; a key that is not there leaves its value zero.
class LookupManyWorker : public Napi::AsyncWorker {
 public:
  LookupManyWorker(Napi::Env env, int fd, std::string name, std::vector<uint8_t> keys, uint32_t keySize,
                   uint32_t valueSize)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), name_(std::move(name)),
        keys_(std::move(keys)), keySize_(keySize), valueSize_(valueSize),
        values_(keys_.size() / keySize * valueSize) {}
  ~LookupManyWorker() override { close(fd_); }
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    size_t n = keys_.size() / keySize_;
    for (size_t i = 0; i < n; i++) {
      if (bpf_map_lookup_elem(fd_, keys_.data() + i * keySize_, values_.data() + i * valueSize_) && errno != ENOENT) {
        err_ = errno;
        return;
      }
    }
  }
  void OnOK() override {
    if (err_)
      deferred_.Reject(SysError(Env(), err_, "map lookup", name_).Value());
    else
      deferred_.Resolve(CopyBuffer(Env(), values_.data(), values_.size()));
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  std::string name_;
  std::vector<uint8_t> keys_;
  uint32_t keySize_, valueSize_;
  std::vector<uint8_t> values_;
  int err_ = 0;
};

// A batched update on the thread pool: filling thousands of new Maglev tables
// is kernel work (about 1.5 ms a table at M=16381) that the event loop need
// not wait for, and that runs beside the next table's preparation.
class UpdateBatchWorker : public Napi::AsyncWorker {
 public:
  UpdateBatchWorker(Napi::Env env, int fd, std::string name, std::vector<uint8_t> keys, std::vector<uint8_t> values,
                    uint32_t count)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), name_(std::move(name)),
        keys_(std::move(keys)), values_(std::move(values)), count_(count) {}
  ~UpdateBatchWorker() override { close(fd_); }
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    uint32_t n = count_;
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    if (count_ && bpf_map_update_batch(fd_, keys_.data(), values_.data(), &n, &opts)) err_ = errno;
  }
  void OnOK() override {
    if (err_)
      deferred_.Reject(SysError(Env(), err_, "map update batch", name_).Value());
    else
      deferred_.Resolve(Napi::Number::New(Env(), count_));
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  std::string name_;
  std::vector<uint8_t> keys_, values_;
  uint32_t count_;
  int err_ = 0;
};

class Map : public Napi::ObjectWrap<Map> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Map",
                       {InstanceMethod<&Map::Info>("info"), InstanceMethod<&Map::Lookup>("lookup"),
                        InstanceMethod<&Map::Update>("update"), InstanceMethod<&Map::Delete>("delete"),
                        InstanceMethod<&Map::NextKey>("nextKey"),
                        InstanceMethod<&Map::UpdateBatch>("updateBatch"),
                        InstanceMethod<&Map::UpdateBatchAsync>("updateBatchAsync"),
                        InstanceMethod<&Map::DeleteBatch>("deleteBatch"),
                        InstanceMethod<&Map::Dump>("dump"), InstanceMethod<&Map::Count>("count"),
                        InstanceMethod<&Map::LookupMany>("lookupMany"),
                        InstanceMethod<&Map::LookupPacked>("lookupPacked"),
                        InstanceMethod<&Map::Pin>("pin"), InstanceMethod<&Map::Fd>("fd"),
                        InstanceMethod<&Map::Close>("close")});
  }

  // new Map(fd, name): takes ownership of fd.
  Map(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Map>(info) {
    fd_ = static_cast<int>(U32Arg(info, 0, "fd"));
    name_ = StringArg(info, 1, "name");
    struct bpf_map_info mi = {};
    uint32_t len = sizeof(mi);
    if (bpf_obj_get_info_by_fd(fd_, &mi, &len)) {
      int err = errno;
      close(fd_);
      fd_ = -1;
      throw SysError(info.Env(), err, "map info", name_);
    }
    type_ = mi.type;
    keySize_ = mi.key_size;
    valueSize_ = mi.value_size;
    maxEntries_ = mi.max_entries;
    flags_ = mi.map_flags;
    id_ = mi.id;
    if (name_.empty()) name_ = mi.name;
    slot_ = IsPerCpu(type_) ? ((valueSize_ + 7) / 8) * 8 : valueSize_;
    int ncpu = IsPerCpu(type_) ? libbpf_num_possible_cpus() : 1;
    fullValue_ = slot_ * static_cast<uint32_t>(ncpu > 0 ? ncpu : 1);
  }

  ~Map() override {
    if (fd_ >= 0) close(fd_);
  }

 private:
  int Live(Napi::Env env) {
    if (fd_ < 0) throw SysError(env, EBADF, "use of closed map", name_);
    return fd_;
  }

  void CheckKey(Napi::Env env, const Napi::Buffer<uint8_t> &key) {
    if (key.Length() != keySize_)
      throw Napi::RangeError::New(env, name_ + ": key must be " + std::to_string(keySize_) +
                                           " bytes, got " + std::to_string(key.Length()));
  }

  Napi::Value Info(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Live(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", name_);
    o.Set("id", id_);
    o.Set("type", libbpf_bpf_map_type_str(static_cast<enum bpf_map_type>(type_))
                      ? libbpf_bpf_map_type_str(static_cast<enum bpf_map_type>(type_))
                      : "unknown");
    o.Set("keySize", keySize_);
    o.Set("valueSize", valueSize_);
    o.Set("maxEntries", maxEntries_);
    o.Set("flags", flags_);
    o.Set("valueBytes", fullValue_);
    o.Set("perCpu", IsPerCpu(type_));
    return o;
  }

  Napi::Value Fd(const Napi::CallbackInfo &info) { return Napi::Number::New(info.Env(), Live(info.Env())); }

  Napi::Value Lookup(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    auto key = BufferArg(info, 0, "key");
    CheckKey(env, key);
    std::vector<uint8_t> value(fullValue_);
    if (bpf_map_lookup_elem(fd, key.Data(), value.data())) {
      if (errno == ENOENT) return env.Null();
      throw SysError(env, errno, "map lookup", name_);
    }
    return CopyBuffer(env, value.data(), value.size());
  }

  // lookupPacked(keys): every key of a packed buffer looked up in one call (a
  // transaction's undo log reads the old values of thousands of entries):
  // { values: packed, found: one byte per key, 0 where the key is absent }.
  Napi::Value LookupPacked(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    auto keys = BufferArg(info, 0, "keys");
    if (keys.Length() % keySize_)
      throw Napi::RangeError::New(env, name_ + ": keys must be a multiple of " + std::to_string(keySize_) + " bytes");
    size_t n = keys.Length() / keySize_;
    std::vector<uint8_t> values(n * fullValue_), found(n);
    for (size_t i = 0; i < n; i++) {
      if (!bpf_map_lookup_elem(fd, keys.Data() + i * keySize_, values.data() + i * fullValue_))
        found[i] = 1;
      else if (errno != ENOENT)
        throw SysError(env, errno, "map lookup", name_);
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("values", CopyBuffer(env, values.data(), values.size()));
    o.Set("found", CopyBuffer(env, found.data(), found.size()));
    return o;
  }

  Napi::Value Update(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    auto key = BufferArg(info, 0, "key");
    auto value = BufferArg(info, 1, "value");
    uint64_t flags = info.Length() > 2 ? U32Arg(info, 2, "flags") : static_cast<uint32_t>(BPF_ANY);
    CheckKey(env, key);
    if (value.Length() != fullValue_)
      throw Napi::RangeError::New(env, name_ + ": value must be " + std::to_string(fullValue_) +
                                           " bytes, got " + std::to_string(value.Length()));
    if (bpf_map_update_elem(fd, key.Data(), value.Data(), flags))
      throw SysError(env, errno, "map update", name_);
    return env.Undefined();
  }

  Napi::Value Delete(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    auto key = BufferArg(info, 0, "key");
    CheckKey(env, key);
    if (bpf_map_delete_elem(fd, key.Data())) {
      if (errno == ENOENT) return Napi::Boolean::New(env, false);
      throw SysError(env, errno, "map delete", name_);
    }
    return Napi::Boolean::New(env, true);
  }

  // nextKey(key | null) -> Buffer | null: one step of key iteration.
  Napi::Value NextKey(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    const void *cur = nullptr;
    if (info.Length() > 0 && !info[0].IsNull() && !info[0].IsUndefined()) {
      auto key = BufferArg(info, 0, "key");
      CheckKey(env, key);
      cur = key.Data();
    }
    std::vector<uint8_t> next(keySize_);
    if (bpf_map_get_next_key(fd, cur, next.data())) {
      if (errno == ENOENT) return env.Null();
      throw SysError(env, errno, "map next key", name_);
    }
    return CopyBuffer(env, next.data(), next.size());
  }

  // updateBatch(keys, values, count, flags): keys and values are packed arrays.
  Napi::Value UpdateBatch(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    auto keys = BufferArg(info, 0, "keys");
    auto values = BufferArg(info, 1, "values");
    uint32_t count = U32Arg(info, 2, "count");
    uint64_t flags = info.Length() > 3 ? U32Arg(info, 3, "flags") : static_cast<uint32_t>(BPF_ANY);
    if (keys.Length() != static_cast<size_t>(count) * keySize_ ||
        values.Length() != static_cast<size_t>(count) * fullValue_)
      throw Napi::RangeError::New(env, name_ + ": batch buffers do not match count");
    uint32_t n = count;
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = flags);
    if (count && bpf_map_update_batch(fd, keys.Data(), values.Data(), &n, &opts)) {
      Napi::Error e = SysError(env, errno, "map update batch", name_);
      e.Set("done", Napi::Number::New(env, n));
      throw e;
    }
    return Napi::Number::New(env, n);
  }

  // updateBatchAsync(keys, values, count): updateBatch() on the thread pool, BPF_ANY.
  Napi::Value UpdateBatchAsync(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    auto keys = BufferArg(info, 0, "keys");
    auto values = BufferArg(info, 1, "values");
    uint32_t count = U32Arg(info, 2, "count");
    if (keys.Length() != static_cast<size_t>(count) * keySize_ ||
        values.Length() != static_cast<size_t>(count) * fullValue_)
      throw Napi::RangeError::New(env, name_ + ": batch buffers do not match count");
    int fd = dup(Live(env));
    if (fd < 0) throw SysError(env, errno, "dup map fd", name_);
    auto *w = new UpdateBatchWorker(env, fd, name_, std::vector<uint8_t>(keys.Data(), keys.Data() + keys.Length()),
                                    std::vector<uint8_t>(values.Data(), values.Data() + values.Length()), count);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value DeleteBatch(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    auto keys = BufferArg(info, 0, "keys");
    uint32_t count = U32Arg(info, 1, "count");
    if (keys.Length() != static_cast<size_t>(count) * keySize_)
      throw Napi::RangeError::New(env, name_ + ": batch buffer does not match count");
    uint32_t n = count;
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    if (count && bpf_map_delete_batch(fd, keys.Data(), &n, &opts)) {
      Napi::Error e = SysError(env, errno, "map delete batch", name_);
      e.Set("done", Napi::Number::New(env, n));
      throw e;
    }
    return Napi::Number::New(env, n);
  }

  // dump() -> {keys, values, count}: every element, read with batched lookups.
  Napi::Value Dump(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    constexpr uint32_t kChunk = 4096;
    std::vector<uint8_t> keys, values;
    std::vector<uint8_t> inBatch(keySize_ < 8 ? 8 : keySize_), outBatch(inBatch.size());
    bool first = true;
    for (;;) {
      uint32_t n = kChunk;
      size_t kOff = keys.size(), vOff = values.size();
      keys.resize(kOff + static_cast<size_t>(kChunk) * keySize_);
      values.resize(vOff + static_cast<size_t>(kChunk) * fullValue_);
      LIBBPF_OPTS(bpf_map_batch_opts, opts);
      int rc = bpf_map_lookup_batch(fd, first ? nullptr : inBatch.data(), outBatch.data(), keys.data() + kOff,
                                    values.data() + vOff, &n, &opts);
      int err = rc ? errno : 0;
      keys.resize(kOff + static_cast<size_t>(n) * keySize_);
      values.resize(vOff + static_cast<size_t>(n) * fullValue_);
      if (err == ENOENT) break;
      if (err) throw SysError(env, err, "map lookup batch", name_);
      inBatch.swap(outBatch);
      first = false;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("keys", CopyBuffer(env, keys.data(), keys.size()));
    o.Set("values", CopyBuffer(env, values.data(), values.size()));
    o.Set("count", static_cast<double>(keys.size() / keySize_));
    return o;
  }

  // count() -> Promise<number>; the worker owns a dup, so closing this handle meanwhile is safe.
  Napi::Value Count(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = dup(Live(env));
    if (fd < 0) throw SysError(env, errno, "dup map fd", name_);
    auto *w = new CountWorker(env, fd, name_, keySize_, fullValue_);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  // lookupMany(keys: Buffer of n keys side by side) -> Promise<Buffer of n values>.
  Napi::Value LookupMany(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    auto keys = BufferArg(info, 0, "keys");
    if (keys.Length() % keySize_)
      throw Napi::RangeError::New(env, name_ + ": keys must be a multiple of " + std::to_string(keySize_) + " bytes");
    int fd = dup(Live(env));
    if (fd < 0) throw SysError(env, errno, "dup map fd", name_);
    auto *w = new LookupManyWorker(env, fd, name_, std::vector<uint8_t>(keys.Data(), keys.Data() + keys.Length()),
                                   keySize_, fullValue_);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value Pin(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    std::string path = StringArg(info, 0, "path");
    if (bpf_obj_pin(fd, path.c_str())) throw SysError(env, errno, "map pin", path);
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo &info) {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    return info.Env().Undefined();
  }

  int fd_ = -1;
  std::string name_;
  uint32_t type_ = 0, keySize_ = 0, valueSize_ = 0, maxEntries_ = 0, flags_ = 0, id_ = 0;
  uint32_t slot_ = 0, fullValue_ = 0;
};

Napi::Value MapFromPin(const Napi::CallbackInfo &info) {
  std::string path = StringArg(info, 0, "path");
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) throw SysError(info.Env(), errno, "open pinned map", path);
  return NewMap(info.Env(), fd, "");
}

// createMap(type, keySize, valueSize, maxEntries, flags, name, innerMapFd?)
Napi::Value CreateMap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string typeName = StringArg(info, 0, "type");
  uint32_t keySize = U32Arg(info, 1, "keySize");
  uint32_t valueSize = U32Arg(info, 2, "valueSize");
  uint32_t maxEntries = U32Arg(info, 3, "maxEntries");
  uint32_t flags = U32Arg(info, 4, "flags");
  std::string name = StringArg(info, 5, "name");
  int type = -1;
  for (int t = 0; t < 64; t++) {
    const char *s = libbpf_bpf_map_type_str(static_cast<enum bpf_map_type>(t));
    if (s && typeName == s) type = t;
  }
  if (type < 0) throw Napi::TypeError::New(env, "createMap: unknown map type " + typeName);
  LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = flags);
  if (info.Length() > 6 && info[6].IsNumber()) opts.inner_map_fd = info[6].As<Napi::Number>().Uint32Value();
  int fd = bpf_map_create(static_cast<enum bpf_map_type>(type), name.substr(0, 15).c_str(), keySize,
                          valueSize, maxEntries, &opts);
  if (fd < 0) throw SysError(env, errno, "map create", name);
  return NewMap(env, fd, name);
}

}  // namespace

Napi::Object NewMap(Napi::Env env, int fd, const std::string &name) {
  auto *data = env.GetInstanceData<AddonData>();
  return data->mapCtor.New({Napi::Number::New(env, fd), Napi::String::New(env, name)});
}

void InitMap(Napi::Env env, Napi::Object exports, AddonData *data) {
  Napi::Function ctor = Map::Define(env);
  data->mapCtor = Napi::Persistent(ctor);
  exports.Set("Map", ctor);
  exports.Set("mapFromPin", Napi::Function::New<MapFromPin>(env, "mapFromPin"));
  exports.Set("createMap", Napi::Function::New<CreateMap>(env, "createMap"));
}

}  // namespace xdplb

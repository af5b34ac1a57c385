// Program: a live handle on one loaded BPF program (an owned fd), with
// BPF_PROG_TEST_RUN in a synchronous form (tests) and an asynchronous form that
// runs on the libuv pool (live-frames generators and benchmarks, which must not
// block the event loop).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <vector>

#include "common.h"

namespace xdplb {

namespace {

struct TestRun {
  std::vector<uint8_t> in, ctx, out;
  uint32_t repeat = 1, flags = 0, batchSize = 0;
  // results
  int err = 0;
  uint32_t retval = 0, duration = 0, outLen = 0;

  void Run(int fd) {
    LIBBPF_OPTS(bpf_test_run_opts, opts);
    opts.data_in = in.data();
    opts.data_size_in = static_cast<uint32_t>(in.size());
    opts.data_out = out.empty() ? nullptr : out.data();
    opts.data_size_out = static_cast<uint32_t>(out.size());
    if (!ctx.empty()) {
      opts.ctx_in = ctx.data();
      opts.ctx_size_in = static_cast<uint32_t>(ctx.size());
    }
    opts.repeat = static_cast<int>(repeat);
    opts.flags = flags;
    opts.batch_size = batchSize;
    err = bpf_prog_test_run_opts(fd, &opts) ? errno : 0;
    retval = opts.retval;
    duration = opts.duration;
    outLen = opts.data_size_out;
  }

  Napi::Object Result(Napi::Env env) const {
    Napi::Object o = Napi::Object::New(env);
    o.Set("retval", retval);
    o.Set("duration", duration);
    size_t n = outLen < out.size() ? outLen : out.size();
    o.Set("data", CopyBuffer(env, out.data(), n));
    return o;
  }
};

// testRun options object -> TestRun
void ParseTestRun(Napi::Env env, Napi::Object o, TestRun &tr) {
  Napi::Value data = o.Get("data");
  if (!data.IsBuffer()) throw Napi::TypeError::New(env, "testRun: data must be a Buffer");
  auto d = data.As<Napi::Buffer<uint8_t>>();
  tr.in.assign(d.Data(), d.Data() + d.Length());
  Napi::Value ctx = o.Get("ctx");
  if (ctx.IsBuffer()) {
    auto c = ctx.As<Napi::Buffer<uint8_t>>();
    tr.ctx.assign(c.Data(), c.Data() + c.Length());
  }
  if (o.Get("repeat").IsNumber()) tr.repeat = o.Get("repeat").As<Napi::Number>().Uint32Value();
  if (o.Get("flags").IsNumber()) tr.flags = o.Get("flags").As<Napi::Number>().Uint32Value();
  if (o.Get("batchSize").IsNumber()) tr.batchSize = o.Get("batchSize").As<Napi::Number>().Uint32Value();
  size_t outSize = tr.in.size() + 512;
  if (o.Get("dataSizeOut").IsNumber()) outSize = o.Get("dataSizeOut").As<Napi::Number>().Uint32Value();
  tr.out.resize(outSize);
}

class TestRunWorker : public Napi::AsyncWorker {
 public:
  TestRunWorker(Napi::Env env, int fd, std::string name, TestRun tr)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), name_(std::move(name)),
        tr_(std::move(tr)) {}
  ~TestRunWorker() override { close(fd_); }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { tr_.Run(fd_); }
  void OnOK() override {
    if (tr_.err)
      deferred_.Reject(SysError(Env(), tr_.err, "test run", name_).Value());
    else
      deferred_.Resolve(tr_.Result(Env()));
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  std::string name_;
  TestRun tr_;
};

class Program : public Napi::ObjectWrap<Program> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Program",
                       {InstanceMethod<&Program::Info>("info"), InstanceMethod<&Program::TestRunSync>("testRun"),
                        InstanceMethod<&Program::TestRunAsync>("testRunAsync"),
                        InstanceMethod<&Program::Pin>("pin"), InstanceMethod<&Program::Fd>("fd"),
                        InstanceMethod<&Program::Close>("close")});
  }

  Program(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Program>(info) {
    fd_ = static_cast<int>(U32Arg(info, 0, "fd"));
    name_ = StringArg(info, 1, "name");
  }
  ~Program() override {
    if (fd_ >= 0) close(fd_);
  }

 private:
  int Live(Napi::Env env) {
    if (fd_ < 0) throw SysError(env, EBADF, "use of closed program", name_);
    return fd_;
  }

  Napi::Value Info(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    struct bpf_prog_info pi = {};
    uint32_t len = sizeof(pi);
    if (bpf_obj_get_info_by_fd(Live(env), &pi, &len)) throw SysError(env, errno, "program info", name_);
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", name_.empty() ? std::string(pi.name) : name_);
    o.Set("id", pi.id);
    const char *t = libbpf_bpf_prog_type_str(static_cast<enum bpf_prog_type>(pi.type));
    o.Set("type", t ? t : "unknown");
    o.Set("xlatedBytes", pi.xlated_prog_len);
    o.Set("jitedBytes", pi.jited_prog_len);
    o.Set("instructions", pi.xlated_prog_len / 8);
    o.Set("verifiedInstructions", pi.verified_insns);
    return o;
  }

  Napi::Value TestRunSync(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "testRun: options required");
    TestRun tr;
    ParseTestRun(env, info[0].As<Napi::Object>(), tr);
    tr.Run(fd);
    if (tr.err) throw SysError(env, tr.err, "test run", name_);
    return tr.Result(env);
  }

  Napi::Value TestRunAsync(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "testRun: options required");
    TestRun tr;
    ParseTestRun(env, info[0].As<Napi::Object>(), tr);
    // The worker owns a dup so closing this handle mid-run is safe.
    int dupFd = dup(fd);
    if (dupFd < 0) throw SysError(env, errno, "dup program fd", name_);
    auto *w = new TestRunWorker(env, dupFd, name_, std::move(tr));
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value Pin(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::string path = StringArg(info, 0, "path");
    if (bpf_obj_pin(Live(env), path.c_str())) throw SysError(env, errno, "program pin", path);
    return env.Undefined();
  }

  Napi::Value Fd(const Napi::CallbackInfo &info) { return Napi::Number::New(info.Env(), Live(info.Env())); }

  Napi::Value Close(const Napi::CallbackInfo &info) {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    return info.Env().Undefined();
  }

  int fd_ = -1;
  std::string name_;
};

Napi::Value ProgramFromPin(const Napi::CallbackInfo &info) {
  std::string path = StringArg(info, 0, "path");
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) throw SysError(info.Env(), errno, "open pinned program", path);
  return NewProgram(info.Env(), fd, "");
}

Napi::Value ProgramFromId(const Napi::CallbackInfo &info) {
  uint32_t id = U32Arg(info, 0, "id");
  int fd = bpf_prog_get_fd_by_id(id);
  if (fd < 0) throw SysError(info.Env(), errno, "open program by id", std::to_string(id));
  return NewProgram(info.Env(), fd, "");
}

}  // namespace

Napi::Object NewProgram(Napi::Env env, int fd, const std::string &name) {
  auto *data = env.GetInstanceData<AddonData>();
  return data->programCtor.New({Napi::Number::New(env, fd), Napi::String::New(env, name)});
}

void InitProgram(Napi::Env env, Napi::Object exports, AddonData *data) {
  Napi::Function ctor = Program::Define(env);
  data->programCtor = Napi::Persistent(ctor);
  exports.Set("Program", ctor);
  exports.Set("programFromPin", Napi::Function::New<ProgramFromPin>(env, "programFromPin"));
  exports.Set("programFromId", Napi::Function::New<ProgramFromId>(env, "programFromId"));
}

}  // namespace xdplb

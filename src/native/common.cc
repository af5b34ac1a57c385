#include "common.h"

#include <bpf/libbpf.h>

#include <cstdarg>
#include <cstring>
#include <mutex>

namespace xdplb {

namespace {
std::mutex logMutex;
std::string logTail;
constexpr size_t kLogKeep = 8192;

int LibbpfPrint(enum libbpf_print_level level, const char *fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  char line[1024];
  int n = vsnprintf(line, sizeof(line), fmt, args);
  std::lock_guard<std::mutex> lock(logMutex);
  logTail.append(line);
  if (logTail.size() > kLogKeep) logTail.erase(0, logTail.size() - kLogKeep);
  return n;
}
}  // namespace

void InstallLibbpfLog() { libbpf_set_print(LibbpfPrint); }

void ClearLibbpfLog() {
  std::lock_guard<std::mutex> lock(logMutex);
  logTail.clear();
}

std::string TakeLibbpfLog() {
  std::lock_guard<std::mutex> lock(logMutex);
  std::string out;
  out.swap(logTail);
  return out;
}

Napi::Error SysError(Napi::Env env, int err, const std::string &op, const std::string &target) {
  const char *name = strerrorname_np(err);
  std::string code = name ? name : ("E" + std::to_string(err));
  std::string msg = op + " " + target + ": " + code + " (" + strerror(err) + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("op", Napi::String::New(env, op));
  e.Set("target", Napi::String::New(env, target));
  std::string log = TakeLibbpfLog();
  if (!log.empty()) e.Set("log", Napi::String::New(env, log));
  return e;
}

Napi::Buffer<uint8_t> CopyBuffer(Napi::Env env, const void *data, size_t len) {
  return Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t *>(data), len);
}

uint32_t U32Arg(const Napi::CallbackInfo &info, size_t i, const char *name) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().Uint32Value();
}

std::string StringArg(const Napi::CallbackInfo &info, size_t i, const char *name) {
  if (info.Length() <= i || !info[i].IsString())
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Buffer<uint8_t> BufferArg(const Napi::CallbackInfo &info, size_t i, const char *name) {
  if (info.Length() <= i || !info[i].IsBuffer())
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

}  // namespace xdplb

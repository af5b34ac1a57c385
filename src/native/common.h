// Shared pieces of the xdplb native addon: error construction and small helpers.
// The addon is deliberately thin: it does only what must be native (libbpf calls,
// syscalls, the ring-drain thread); validation and shaping live in TypeScript.
#pragma once

#include <napi.h>

#include <cerrno>
#include <string>

namespace xdplb {

// A JavaScript Error carrying code (errno name), errno, op and target, plus the
// tail of libbpf's log when the failure happened inside libbpf (verifier output).
Napi::Error SysError(Napi::Env env, int err, const std::string &op, const std::string &target);

// libbpf 1.x returns -errno from most calls; normalise to a positive errno.
inline int ErrnoOf(long ret) { return ret < 0 ? static_cast<int>(-ret) : (errno ? errno : EINVAL); }

// Collects libbpf's warnings so an error can say *why* (verifier log, pin mismatch).
void InstallLibbpfLog();
void ClearLibbpfLog();
std::string TakeLibbpfLog();

Napi::Buffer<uint8_t> CopyBuffer(Napi::Env env, const void *data, size_t len);
uint32_t U32Arg(const Napi::CallbackInfo &info, size_t i, const char *name);
std::string StringArg(const Napi::CallbackInfo &info, size_t i, const char *name);
Napi::Buffer<uint8_t> BufferArg(const Napi::CallbackInfo &info, size_t i, const char *name);

// Per-module state: constructors of the wrapped classes.
struct AddonData {
  Napi::FunctionReference objectCtor;
  Napi::FunctionReference mapCtor;
  Napi::FunctionReference programCtor;
  Napi::FunctionReference linkCtor;
  Napi::FunctionReference perfReaderCtor;
};

void InitObject(Napi::Env env, Napi::Object exports, AddonData *data);
void InitMap(Napi::Env env, Napi::Object exports, AddonData *data);
void InitProgram(Napi::Env env, Napi::Object exports, AddonData *data);
void InitXdp(Napi::Env env, Napi::Object exports, AddonData *data);
void InitPerfReader(Napi::Env env, Napi::Object exports, AddonData *data);
void InitSystem(Napi::Env env, Napi::Object exports);

// Wrap an owned fd (the wrapper closes it) in a JavaScript Map or Program object.
Napi::Object NewMap(Napi::Env env, int fd, const std::string &name);
Napi::Object NewProgram(Napi::Env env, int fd, const std::string &name);

}  // namespace xdplb

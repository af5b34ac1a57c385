#include "common.h"

namespace xdplb {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto *data = new AddonData();
  env.SetInstanceData(data);
  InstallLibbpfLog();
  InitObject(env, exports, data);
  InitMap(env, exports, data);
  InitProgram(env, exports, data);
  InitXdp(env, exports, data);
  InitPerfReader(env, exports, data);
  InitSystem(env, exports);
  return exports;
}

}  // namespace xdplb

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return xdplb::Init(env, exports); }

NODE_API_MODULE(xdplb_native, InitAddon)

// XDP attachment: netlink attach/detach/query (the attachment outlives the
// process, which is what lets the daemon restart without a forwarding gap, and
// XDP_FLAGS_REPLACE swaps programs atomically), plus bpf_link attachments whose
// lifetime is a pinned link.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <unistd.h>

#include "common.h"

namespace xdplb {

namespace {

// attachXdp(ifindex, progFd, flags, oldProgFd | -1)
Napi::Value AttachXdp(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t ifindex = U32Arg(info, 0, "ifindex");
  int progFd = static_cast<int>(U32Arg(info, 1, "progFd"));
  uint32_t flags = U32Arg(info, 2, "flags");
  int oldFd = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int32Value() : -1;
  LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
  if (oldFd >= 0) {
    opts.old_prog_fd = oldFd;
    flags |= XDP_FLAGS_REPLACE;
  }
  int err = bpf_xdp_attach(static_cast<int>(ifindex), progFd, flags, &opts);
  if (err) throw SysError(env, ErrnoOf(err), "xdp attach", "ifindex " + std::to_string(ifindex));
  return env.Undefined();
}

// detachXdp(ifindex, flags, expectedProgFd | -1)
Napi::Value DetachXdp(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t ifindex = U32Arg(info, 0, "ifindex");
  uint32_t flags = U32Arg(info, 1, "flags");
  int oldFd = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : -1;
  LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
  if (oldFd >= 0) {
    opts.old_prog_fd = oldFd;
    flags |= XDP_FLAGS_REPLACE;
  }
  int err = bpf_xdp_detach(static_cast<int>(ifindex), flags, &opts);
  if (err) throw SysError(env, ErrnoOf(err), "xdp detach", "ifindex " + std::to_string(ifindex));
  return env.Undefined();
}

Napi::Value QueryXdp(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t ifindex = U32Arg(info, 0, "ifindex");
  LIBBPF_OPTS(bpf_xdp_query_opts, opts);
  int err = bpf_xdp_query(static_cast<int>(ifindex), 0, &opts);
  if (err) throw SysError(env, ErrnoOf(err), "xdp query", "ifindex " + std::to_string(ifindex));
  Napi::Object o = Napi::Object::New(env);
  o.Set("progId", opts.prog_id);
  o.Set("drvProgId", opts.drv_prog_id);
  o.Set("skbProgId", opts.skb_prog_id);
  o.Set("hwProgId", opts.hw_prog_id);
  o.Set("attachMode", opts.attach_mode);
  return o;
}

class Link : public Napi::ObjectWrap<Link> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Link",
                       {InstanceMethod<&Link::Update>("update"), InstanceMethod<&Link::Pin>("pin"),
                        InstanceMethod<&Link::Detach>("detach"), InstanceMethod<&Link::Info>("info"),
                        InstanceMethod<&Link::Close>("close")});
  }
  Link(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Link>(info) {
    fd_ = static_cast<int>(U32Arg(info, 0, "fd"));
  }
  ~Link() override {
    if (fd_ >= 0) close(fd_);
  }

 private:
  int Live(Napi::Env env) {
    if (fd_ < 0) throw SysError(env, EBADF, "use of closed link", "xdp link");
    return fd_;
  }
  // update(newProgFd, oldProgFd | -1): atomic program replacement on the link.
  Napi::Value Update(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int progFd = static_cast<int>(U32Arg(info, 0, "progFd"));
    int oldFd = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : -1;
    LIBBPF_OPTS(bpf_link_update_opts, opts);
    if (oldFd >= 0) {
      opts.old_prog_fd = oldFd;
      opts.flags = BPF_F_REPLACE;
    }
    if (bpf_link_update(Live(env), progFd, &opts)) throw SysError(env, errno, "link update", "xdp link");
    return env.Undefined();
  }
  Napi::Value Pin(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::string path = StringArg(info, 0, "path");
    if (bpf_obj_pin(Live(env), path.c_str())) throw SysError(env, errno, "link pin", path);
    return env.Undefined();
  }
  Napi::Value Detach(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (bpf_link_detach(Live(env))) throw SysError(env, errno, "link detach", "xdp link");
    return env.Undefined();
  }
  Napi::Value Info(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    struct bpf_link_info li = {};
    uint32_t len = sizeof(li);
    if (bpf_obj_get_info_by_fd(Live(env), &li, &len)) throw SysError(env, errno, "link info", "xdp link");
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", li.id);
    o.Set("progId", li.prog_id);
    o.Set("ifindex", li.xdp.ifindex);
    return o;
  }
  Napi::Value Close(const Napi::CallbackInfo &info) {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    return info.Env().Undefined();
  }
  int fd_ = -1;
};

// linkXdp(progFd, ifindex, flags) -> Link
Napi::Value LinkXdp(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int progFd = static_cast<int>(U32Arg(info, 0, "progFd"));
  uint32_t ifindex = U32Arg(info, 1, "ifindex");
  uint32_t flags = U32Arg(info, 2, "flags");
  LIBBPF_OPTS(bpf_link_create_opts, opts, .flags = flags);
  int fd = bpf_link_create(progFd, static_cast<int>(ifindex), BPF_XDP, &opts);
  if (fd < 0) throw SysError(env, errno, "xdp link create", "ifindex " + std::to_string(ifindex));
  return env.GetInstanceData<AddonData>()->linkCtor.New({Napi::Number::New(env, fd)});
}

Napi::Value LinkFromPin(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) throw SysError(env, errno, "open pinned link", path);
  return env.GetInstanceData<AddonData>()->linkCtor.New({Napi::Number::New(env, fd)});
}

}  // namespace

void InitXdp(Napi::Env env, Napi::Object exports, AddonData *data) {
  Napi::Function ctor = Link::Define(env);
  data->linkCtor = Napi::Persistent(ctor);
  exports.Set("attachXdp", Napi::Function::New<AttachXdp>(env, "attachXdp"));
  exports.Set("detachXdp", Napi::Function::New<DetachXdp>(env, "detachXdp"));
  exports.Set("queryXdp", Napi::Function::New<QueryXdp>(env, "queryXdp"));
  exports.Set("linkXdp", Napi::Function::New<LinkXdp>(env, "linkXdp"));
  exports.Set("linkFromPin", Napi::Function::New<LinkFromPin>(env, "linkFromPin"));
  Napi::Object flags = Napi::Object::New(env);
  flags.Set("UPDATE_IF_NOEXIST", static_cast<uint32_t>(XDP_FLAGS_UPDATE_IF_NOEXIST));
  flags.Set("SKB_MODE", static_cast<uint32_t>(XDP_FLAGS_SKB_MODE));
  flags.Set("DRV_MODE", static_cast<uint32_t>(XDP_FLAGS_DRV_MODE));
  flags.Set("REPLACE", static_cast<uint32_t>(XDP_FLAGS_REPLACE));
  exports.Set("XDP_FLAGS", flags);
  Napi::Object modes = Napi::Object::New(env);
  modes.Set("NONE", static_cast<uint32_t>(XDP_ATTACHED_NONE));
  modes.Set("DRV", static_cast<uint32_t>(XDP_ATTACHED_DRV));
  modes.Set("SKB", static_cast<uint32_t>(XDP_ATTACHED_SKB));
  modes.Set("HW", static_cast<uint32_t>(XDP_ATTACHED_HW));
  modes.Set("MULTI", static_cast<uint32_t>(XDP_ATTACHED_MULTI));
  exports.Set("XDP_ATTACHED", modes);
}

}  // namespace xdplb

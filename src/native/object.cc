// Object: a BPF ELF object opened and loaded by libbpf. Maps declared with
// LIBBPF_PIN_BY_NAME are pinned under pinRoot (or not at all without one), and
// an existing compatible pin is reused instead of creating a new map: that is how the daemon keeps its state
// across restarts. Map and Program handles taken from an Object own a dup of the
// fd, so they outlive the Object.
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include "common.h"

namespace xdplb {

namespace {

class Object : public Napi::ObjectWrap<Object> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Object",
                       {InstanceMethod<&Object::Programs>("programs"), InstanceMethod<&Object::Maps>("maps"),
                        InstanceMethod<&Object::MapHandle>("map"),
                        InstanceMethod<&Object::ProgramHandle>("program"),
                        InstanceMethod<&Object::BtfStruct>("btfStruct"),
                        InstanceMethod<&Object::Close>("close")});
  }

  // new Object(path, pinRoot | null, maxEntries: {[map]: number}, mapFlags?: {[map]: number})
  Object(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Object>(info) {
    Napi::Env env = info.Env();
    path_ = StringArg(info, 0, "path");
    std::string pinRoot;
    if (info.Length() > 1 && info[1].IsString()) pinRoot = info[1].As<Napi::String>().Utf8Value();
    ClearLibbpfLog();
    LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pinRoot.empty() ? nullptr : pinRoot.c_str());
    obj_ = bpf_object__open_file(path_.c_str(), &opts);
    if (!obj_) throw SysError(env, errno, "open object", path_);
    // Without a pin root, libbpf would pin LIBBPF_PIN_BY_NAME maps under
    // /sys/fs/bpf and reuse whatever another loader left there: such an object
    // gets private maps instead.
    if (pinRoot.empty()) {
      struct bpf_map *m;
      bpf_object__for_each_map(m, obj_) bpf_map__set_pin_path(m, nullptr);
    }
    if (info.Length() > 2 && info[2].IsObject()) {
      Napi::Object sizes = info[2].As<Napi::Object>();
      Napi::Array names = sizes.GetPropertyNames();
      for (uint32_t i = 0; i < names.Length(); i++) {
        std::string name = names.Get(i).As<Napi::String>().Utf8Value();
        struct bpf_map *m = bpf_object__find_map_by_name(obj_, name.c_str());
        int err = m ? bpf_map__set_max_entries(m, sizes.Get(name).As<Napi::Number>().Uint32Value()) : ENOENT;
        if (err) {
          Release();
          throw SysError(env, ErrnoOf(err), "set max entries", path_ + ":" + name);
        }
      }
    }
    if (info.Length() > 3 && info[3].IsObject()) {
      Napi::Object flags = info[3].As<Napi::Object>();
      Napi::Array names = flags.GetPropertyNames();
      for (uint32_t i = 0; i < names.Length(); i++) {
        std::string name = names.Get(i).As<Napi::String>().Utf8Value();
        struct bpf_map *m = bpf_object__find_map_by_name(obj_, name.c_str());
        int err = m ? bpf_map__set_map_flags(m, flags.Get(name).As<Napi::Number>().Uint32Value()) : ENOENT;
        if (err) {
          Release();
          throw SysError(env, ErrnoOf(err), "set map flags", path_ + ":" + name);
        }
      }
    }
    int err = bpf_object__load(obj_);
    if (err) {
      Release();
      throw SysError(env, ErrnoOf(err), "load object", path_);
    }
  }

  ~Object() override { Release(); }

 private:
  void Release() {
    if (obj_) bpf_object__close(obj_);
    obj_ = nullptr;
  }

  struct bpf_object *Live(Napi::Env env) {
    if (!obj_) throw SysError(env, EBADF, "use of closed object", path_);
    return obj_;
  }

  Napi::Value Programs(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env);
    struct bpf_program *p;
    uint32_t i = 0;
    bpf_object__for_each_program(p, Live(env)) out.Set(i++, bpf_program__name(p));
    return out;
  }

  Napi::Value Maps(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env);
    struct bpf_map *m;
    uint32_t i = 0;
    bpf_object__for_each_map(m, Live(env)) {
      if (bpf_map__is_internal(m)) continue;
      out.Set(i++, bpf_map__name(m));
    }
    return out;
  }

  Napi::Value MapHandle(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::string name = StringArg(info, 0, "name");
    struct bpf_map *m = bpf_object__find_map_by_name(Live(env), name.c_str());
    if (!m) throw SysError(env, ENOENT, "find map", path_ + ":" + name);
    int fd = fcntl(bpf_map__fd(m), F_DUPFD_CLOEXEC, 3);
    if (fd < 0) throw SysError(env, errno, "dup map fd", name);
    return NewMap(env, fd, name);
  }

  Napi::Value ProgramHandle(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::string name = StringArg(info, 0, "name");
    struct bpf_program *p = bpf_object__find_program_by_name(Live(env), name.c_str());
    if (!p) throw SysError(env, ENOENT, "find program", path_ + ":" + name);
    int fd = fcntl(bpf_program__fd(p), F_DUPFD_CLOEXEC, 3);
    if (fd < 0) throw SysError(env, errno, "dup program fd", name);
    return NewProgram(env, fd, name);
  }

  // btfStruct(name): { size, members: [{ name, offset, size }] } of `struct name`
  // in the object's BTF (offsets and sizes in bytes, typedefs resolved), or
  // null. What the daemon checks its map layout against (src/datapath/codec.ts).
  Napi::Value BtfStruct(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::string name = StringArg(info, 0, "name");
    const struct btf *btf = bpf_object__btf(Live(env));
    if (!btf) throw SysError(env, ENOENT, "object BTF", path_);
    int id = btf__find_by_name_kind(btf, name.c_str(), BTF_KIND_STRUCT);
    if (id < 0) return env.Null();
    const struct btf_type *t = btf__type_by_id(btf, id);
    const struct btf_member *m = btf_members(t);
    Napi::Array members = Napi::Array::New(env, btf_vlen(t));
    for (uint32_t i = 0; i < btf_vlen(t); i++, m++) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", btf__name_by_offset(btf, m->name_off));
      o.Set("offset", btf_member_bit_offset(t, i) / 8);
      o.Set("size", static_cast<double>(btf__resolve_size(btf, m->type)));
      members.Set(i, o);
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("size", t->size);
    out.Set("members", members);
    return out;
  }

  Napi::Value Close(const Napi::CallbackInfo &info) {
    Release();
    return info.Env().Undefined();
  }

  std::string path_;
  struct bpf_object *obj_ = nullptr;
};

}  // namespace

void InitObject(Napi::Env env, Napi::Object exports, AddonData *data) {
  Napi::Function ctor = Object::Define(env);
  data->objectCtor = Napi::Persistent(ctor);
  exports.Set("Object", ctor);
}

}  // namespace xdplb

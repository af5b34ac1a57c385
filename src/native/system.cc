// Small syscalls Node.js does not offer: entering a network namespace on the
// calling thread, interface index lookup inside it, the number of possible CPUs,
// systemd's sd_notify datagram, and flock(2) for the one-daemon-per-node lock.
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "common.h"

namespace xdplb {

namespace {

// netnsEnter(path) -> fd of the namespace the thread was in, for netnsRestore.
Napi::Value NetnsEnter(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  int saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (saved < 0) throw SysError(env, errno, "open current netns", "/proc/thread-self/ns/net");
  int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    int err = errno;
    close(saved);
    throw SysError(env, err, "open netns", path);
  }
  int rc = setns(target, CLONE_NEWNET);
  int err = errno;
  close(target);
  if (rc) {
    close(saved);
    throw SysError(env, err, "setns", path);
  }
  return Napi::Number::New(env, saved);
}

Napi::Value NetnsRestore(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(U32Arg(info, 0, "fd"));
  int rc = setns(fd, CLONE_NEWNET);
  int err = errno;
  close(fd);
  if (rc) throw SysError(env, err, "setns restore", "saved netns");
  return env.Undefined();
}

Napi::Value IfIndex(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info, 0, "name");
  unsigned idx = if_nametoindex(name.c_str());
  if (!idx) throw SysError(env, errno, "interface index", name);
  return Napi::Number::New(env, idx);
}

Napi::Value PossibleCpus(const Napi::CallbackInfo &info) {
  int n = libbpf_num_possible_cpus();
  if (n < 0) throw SysError(info.Env(), -n, "possible cpus", "/sys/devices/system/cpu/possible");
  return Napi::Number::New(info.Env(), n);
}

// sdNotify(state) -> false when $NOTIFY_SOCKET is unset (not under systemd).
// MSG_DONTWAIT: a receiver that stopped reading fills its queue, and a blocking
// send would then stall the daemon's event loop; EAGAIN is reported instead.
Napi::Value SdNotify(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string state = StringArg(info, 0, "state");
  const char *sock = getenv("NOTIFY_SOCKET");
  if (!sock || !*sock) return Napi::Boolean::New(env, false);
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  size_t len = strlen(sock);
  if (len >= sizeof(addr.sun_path)) throw SysError(env, ENAMETOOLONG, "sd_notify", sock);
  memcpy(addr.sun_path, sock, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw SysError(env, errno, "sd_notify socket", sock);
  ssize_t n = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT, reinterpret_cast<struct sockaddr *>(&addr),
                     static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + len));
  int err = errno;
  close(fd);
  if (n < 0) throw SysError(env, err, "sd_notify send", sock);
  return Napi::Boolean::New(env, true);
}

// flockExclusive(fd) -> false when another open file holds the lock. The kernel
// drops the lock with the last descriptor, so a SIGKILLed holder never leaves it.
Napi::Value FlockExclusive(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(U32Arg(info, 0, "fd"));
  if (flock(fd, LOCK_EX | LOCK_NB) == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  throw SysError(env, errno, "flock", "fd " + std::to_string(fd));
}

}  // namespace

void InitSystem(Napi::Env env, Napi::Object exports) {
  exports.Set("netnsEnter", Napi::Function::New<NetnsEnter>(env, "netnsEnter"));
  exports.Set("netnsRestore", Napi::Function::New<NetnsRestore>(env, "netnsRestore"));
  exports.Set("ifIndex", Napi::Function::New<IfIndex>(env, "ifIndex"));
  exports.Set("possibleCpus", Napi::Function::New<PossibleCpus>(env, "possibleCpus"));
  exports.Set("sdNotify", Napi::Function::New<SdNotify>(env, "sdNotify"));
  exports.Set("flockExclusive", Napi::Function::New<FlockExclusive>(env, "flockExclusive"));
}

}  // namespace xdplb

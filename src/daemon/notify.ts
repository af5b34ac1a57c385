// systemd's notification protocol (sd_notify(3)): one datagram per message to
// $NOTIFY_SOCKET, a path or an abstract name ('@...'). Nothing the daemon does
// depends on systemd hearing it: a socket that is gone or unreachable must not
// stop a reload, nor keep a stop from closing recordings. So a failure is
// logged, once per kind (errno) until a message gets through again, and never
// thrown.
import type { Logger } from 'pino';
import { sdNotify } from '../sys/system';

/** Sends one message; false when there is no notify socket, throws when sending failed. */
export type NotifySend = (state: string) => boolean;

export class Notifier {
  /** error kinds logged since the last message that got through */
  private readonly failing = new Set<string>();

  constructor(
    private readonly log: Logger,
    private readonly send: NotifySend = sdNotify,
  ) {}

  /** Sends "KEY=value" lines; true when systemd got them. */
  notify(state: string): boolean {
    try {
      const sent = this.send(state);
      if (sent && this.failing.size) {
        this.failing.clear();
        this.log.info({ socket: process.env.NOTIFY_SOCKET }, 'systemd notifications get through again');
      }
      return sent;
    } catch (e) {
      const err = e as Error & { code?: string };
      const kind = err.code ?? err.message;
      if (!this.failing.has(kind)) {
        this.failing.add(kind);
        this.log.warn(
          { socket: process.env.NOTIFY_SOCKET, error: err.message, notification: state.split('\n')[0] },
          'systemd notification not delivered; the daemon carries on and logs this failure again only after a notification got through',
        );
      }
      return false;
    }
  }
}

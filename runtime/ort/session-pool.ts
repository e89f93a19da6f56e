/**
 * Sessions kept open between calls. textToImage, the VAE and the two-path sampler open their
 * sessions per call and release them after, so that a full SD pipeline never holds its text
 * encoder, UNet and VAE at once. A caller that makes many small images in a row (the demo's
 * comparison, the quality bench, world score) then pays the session start for every image: on
 * SwiftShader's WebGPU that is most of the ~30 s each image of the world pipeline took. Such a
 * caller puts a pool in SessionOptions: each (model file, options) opens once, and `close()`
 * releases them all.
 */
import type * as ort from 'onnxruntime-node';

// Sessions a pool owns: releaseSession leaves them to the pool's close().
const POOLED = new WeakSet<ort.InferenceSession>();

export class SessionPool {
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();
  private closed = false;

  /** The open session for `key`, or the one `open` makes (kept until close()). */
  async acquire(key: string, open: () => Promise<ort.InferenceSession>): Promise<ort.InferenceSession> {
    if (this.closed) throw new Error('SessionPool used after close()');
    let session = this.sessions.get(key);
    if (!session) {
      session = open().then((s) => {
        POOLED.add(s);
        return s;
      });
      // a session that failed to open is not kept: the next call tries again
      session.catch(() => this.sessions.delete(key));
      this.sessions.set(key, session);
    }
    return session;
  }

  /** How many sessions are open. */
  get size(): number {
    return this.sessions.size;
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.sessions.values()];
    this.sessions.clear();
    for (const s of await Promise.allSettled(all)) if (s.status === 'fulfilled') await s.value.release();
  }
}

/** Releases a session from createSession, unless a pool owns it. */
export async function releaseSession(session: ort.InferenceSession): Promise<void> {
  if (!POOLED.has(session)) await session.release();
}

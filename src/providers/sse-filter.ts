/**
 * Removes whole events from an SSE body as it passes, leaving every other byte exactly as the upstream sent it
 * (field order, comments, `id:` lines, line endings). Incremental: an event is held only until its blank line
 * arrives, then forwarded or dropped whole, so the framing the client parses stays valid at any chunk boundary.
 */
export interface SseEventFilter {
  /** The bytes to forward for this chunk: every event it completes that is kept. May be empty. */
  push(chunk: Buffer): Buffer;
  /** The bytes still held when the body ends (an unfinished last event, forwarded unless dropped). */
  end(): Buffer;
}

const LF = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);
const DATA_LINE = /^data(?::[ ]?(.*))?$/;

/** The data of one event (its `data:` lines joined by `\n`, as an SSE parser dispatches it). */
const eventData = (event: Buffer): string =>
  event
    .toString('utf8')
    .split(/\r\n|\r|\n/)
    .flatMap((line) => {
      const m = DATA_LINE.exec(line);
      return m ? [m[1] ?? ''] : [];
    })
    .join('\n');

/**
 * A filter dropping every event whose data `drop` accepts; `mayDrop` is a cheap byte test that spares the
 * decoding of events that cannot match. An event over `maxEventBytes` is not held any longer: the filter then
 * forwards the rest of the body untouched, so a body that is not the expected stream never grows in memory.
 */
export const createSseEventFilter = (opts: { mayDrop: (event: Buffer) => boolean; drop: (data: string) => boolean; maxEventBytes: number }): SseEventFilter => {
  let held: Buffer = EMPTY;
  /** Offset in `held` where scanning resumes, and where the line being scanned starts. */
  let scanFrom = 0;
  let lineStart = 0;
  let passThrough = false;

  const keep = (event: Buffer): boolean => !(opts.mayDrop(event) && opts.drop(eventData(event)));

  return {
    push(chunk) {
      if (passThrough) return chunk;
      const buf = held.length === 0 ? chunk : Buffer.concat([held, chunk]);
      const out: Buffer[] = [];
      let eventStart = 0;
      let i = scanFrom;
      let line = lineStart;
      while (i < buf.length) {
        const c = buf[i];
        if (c !== LF && c !== CR) {
          i++;
          continue;
        }
        // A CR ending the chunk may be the first half of a CRLF: decide when the next byte comes.
        if (c === CR && i + 1 === buf.length) break;
        const next = c === CR && buf[i + 1] === LF ? i + 2 : i + 1;
        const blank = i === line;
        i = line = next;
        if (blank) {
          const event = buf.subarray(eventStart, next);
          if (keep(event)) out.push(event);
          eventStart = next;
        }
      }
      held = buf.subarray(eventStart);
      scanFrom = i - eventStart;
      lineStart = line - eventStart;
      if (held.length > opts.maxEventBytes) {
        out.push(held);
        held = EMPTY;
        passThrough = true;
      }
      return out.length === 1 ? out[0]! : Buffer.concat(out);
    },
    end() {
      const rest = held;
      held = EMPTY;
      return passThrough || rest.length === 0 || keep(rest) ? rest : EMPTY;
    },
  };
};

/**
 * Removes whole events from an SSE body as it passes, leaving every other byte exactly as the upstream sent it
 * (field order, comments, `id:` lines, line endings). Incremental: an event is held only until its blank line
 * arrives, then forwarded or dropped whole, so the framing the client parses stays valid at any chunk boundary.
 *
 * It runs on the answer's one data path (`ProxyResponse.rewrite`), once per chunk, so the common case costs no copy:
 * a chunk of whole events of which none is dropped is returned as it came (or as one view of it).
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
 * A filter dropping every event whose data `drop` accepts; `mayDrop(buf, start, end)` is a cheap byte test on the
 * event `buf[start, end)` that spares the decoding of events that cannot match. An event over `maxEventBytes` is not
 * held any longer: the filter then forwards the rest of the body untouched, so a body that is not the expected
 * stream never grows in memory.
 *
 * The SSE framing is scanned here byte by byte rather than with eventsource-parser (which the usage meter uses):
 * the filter must forward the upstream's exact bytes, and a parser hands out decoded fields, not where an event's
 * bytes begin and end.
 */
export const createSseEventFilter = (opts: {
  mayDrop: (buf: Buffer, start: number, end: number) => boolean;
  drop: (data: string) => boolean;
  maxEventBytes: number;
}): SseEventFilter => {
  let held: Buffer = EMPTY;
  /** Offset in `held` where scanning resumes, and where the line being scanned starts. */
  let scanFrom = 0;
  let lineStart = 0;
  let passThrough = false;

  const dropped = (buf: Buffer, start: number, end: number): boolean => opts.mayDrop(buf, start, end) && opts.drop(eventData(buf.subarray(start, end)));

  return {
    push(chunk) {
      if (passThrough || chunk.length === 0) return chunk;
      const buf = held.length === 0 ? chunk : Buffer.concat([held, chunk]);
      // Kept bytes run from `keptFrom` to `eventStart`; only a dropped event splits them into pieces.
      let pieces: Buffer[] | undefined;
      let keptFrom = 0;
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
          if (dropped(buf, eventStart, next)) {
            if (eventStart > keptFrom) (pieces ??= []).push(buf.subarray(keptFrom, eventStart));
            keptFrom = next;
          }
          eventStart = next;
        }
      }
      held = eventStart === buf.length ? EMPTY : buf.subarray(eventStart);
      scanFrom = i - eventStart;
      lineStart = line - eventStart;
      let upTo = eventStart;
      if (held.length > opts.maxEventBytes) {
        upTo = buf.length;
        held = EMPTY;
        passThrough = true;
      }
      const last = upTo === keptFrom ? EMPTY : keptFrom === 0 && upTo === buf.length ? buf : buf.subarray(keptFrom, upTo);
      if (pieces === undefined) return last;
      pieces.push(last);
      return Buffer.concat(pieces);
    },
    end() {
      const rest = held;
      held = EMPTY;
      return passThrough || rest.length === 0 || !dropped(rest, 0, rest.length) ? rest : EMPTY;
    },
  };
};

import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Where a frame's code lives: an npm package, a node: module, our src/, or a V8 pseudo-frame like (garbage collector). */
export const owner = (f: CallFrame): string => {
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(f.url);
  if (pkg?.[1] !== undefined) return pkg[1];
  if (f.url.startsWith('node:')) return `node:${f.url.slice(5).split('/')[0]}`;
  if (f.url.includes('/src/')) return 'fusebox src/';
  if (f.url === '') return f.functionName || '(native)';
  return f.url.replace(/^.*\/work\/main\//, '');
};

export const frameName = (f: CallFrame): string => {
  // Our own files by their path in the repository, whichever checkout or compiled tree (dist/) they ran from.
  const file = f.url.replace(/^file:\/\//, '').replace(/^.*node_modules\//, '').replace(/^.*\/(?:dist\/)?(?=src\/)/, '');
  return `${f.functionName || '(anonymous)'}${file ? ` ${file}:${f.lineNumber + 1}` : ''}`;
};

/** Self time of a `.cpuprofile`, grouped by owner and by function: the two lists that say what dominates. */
export const summarizeProfile = (file: string, top = 12): string => {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = p.timeDeltas[i] ?? 0;
    total += dt;
    self.set(id, (self.get(id) ?? 0) + dt);
  });
  const byOwner = new Map<string, number>();
  const byFrame = new Map<string, number>();
  for (const [id, t] of self) {
    const frame = byId.get(id)?.callFrame;
    if (frame === undefined) continue;
    byOwner.set(owner(frame), (byOwner.get(owner(frame)) ?? 0) + t);
    byFrame.set(frameName(frame), (byFrame.get(frameName(frame)) ?? 0) + t);
  }
  const list = (m: Map<string, number>) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, t]) => `  ${((t / total) * 100).toFixed(1).padStart(5)} %  ${k}`)
      .join('\n');
  return `self time by owner:\n${list(byOwner)}\nself time by function:\n${list(byFrame)}`;
};

interface HeapNode {
  callFrame: CallFrame;
  selfSize: number;
  children: HeapNode[];
}

/**
 * Bytes allocated in a sampled `.heapprofile` (objects the GC already collected included), grouped three ways: by the
 * function that allocated, by owner, and by the innermost Fusebox function on the stack — which of our lines made a
 * library allocate (pino's serializer, prom-client's label lookup, undici's request) on our behalf.
 */
export const summarizeHeapProfile = (file: string, top = 15): string => {
  const { head } = JSON.parse(readFileSync(file, 'utf8')) as { head: HeapNode };
  const byFrame = new Map<string, number>();
  const byOwner = new Map<string, number>();
  const byOurs = new Map<string, number>();
  let total = 0;
  const add = (m: Map<string, number>, k: string, n: number) => m.set(k, (m.get(k) ?? 0) + n);
  const walk = (node: HeapNode, ours: string | undefined) => {
    const f = node.callFrame;
    const here = owner(f) === 'fusebox src/' ? frameName(f) : ours;
    if (node.selfSize > 0) {
      total += node.selfSize;
      add(byFrame, frameName(f), node.selfSize);
      add(byOwner, owner(f), node.selfSize);
      add(byOurs, here ?? '(no Fusebox frame: the server, sockets, timers)', node.selfSize);
    }
    for (const c of node.children) walk(c, here);
  };
  walk(head, undefined);
  const list = (m: Map<string, number>) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, n]) => `  ${((n / total) * 100).toFixed(1).padStart(5)} %  ${k}`)
      .join('\n');
  return `allocated by owner:\n${list(byOwner)}\nallocated by function:\n${list(byFrame)}\nallocated under our function (innermost Fusebox frame on the stack):\n${list(byOurs)}`;
};

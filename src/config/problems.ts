import { isAlias, isMap, isNode, isScalar, isSeq, type Document, type LineCounter, type Node } from 'yaml';
import type { z } from 'zod';

/**
 * One mistake in a config, before it is written for a person: where it is (the path in the document) and what.
 * `at: 'key'` points at the key itself (an unknown key) rather than at its value.
 */
export interface Problem {
  readonly path: readonly PropertyKey[];
  readonly message: string;
  readonly at?: 'key';
}

/** `routes[2].retry.baseMs`, the way a person reads a YAML path. */
export const formatPath = (path: readonly PropertyKey[]): string =>
  path.reduce<string>((acc, key) => (typeof key === 'number' ? `${acc}[${key}]` : acc ? `${acc}.${String(key)}` : String(key)), '');

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The path with the route's name beside its index, `routes[1] (name "chat").retry.baseMs`: an index alone makes a
 * person count list items. Left out when the problem is the name itself.
 */
export const describePath = (path: readonly PropertyKey[], raw: unknown): string => {
  const [head, index, field] = path;
  if (head === 'routes' && typeof index === 'number' && field !== 'name' && isRecord(raw) && Array.isArray(raw.routes)) {
    const route: unknown = raw.routes[index];
    if (isRecord(route) && typeof route.name === 'string' && route.name !== '') {
      const rest = formatPath(path.slice(2));
      return `routes[${index}] (name ${JSON.stringify(route.name)})${rest === '' ? '' : rest.startsWith('[') ? rest : `.${rest}`}`;
    }
  }
  return formatPath(path) || '(top level)';
};

const typeOf = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

/** zod's issues as problems; an object with several unknown keys gives one problem per key, each with its own place. */
export const problemsOfIssue = (issue: z.core.$ZodIssue, schema: z.core.$ZodType, raw: unknown): Problem[] => {
  const path = issue.path;
  switch (issue.code) {
    case 'unrecognized_keys': {
      const allowed = allowedKeys(schema, path, raw) ?? [];
      return issue.keys.map((key) => {
        const guess = closest(key, allowed);
        const hint = guess !== undefined ? `did you mean "${guess}"?` : allowed.length > 0 ? `allowed here: ${allowed.join(', ')}` : "see the README's config reference";
        return { path: [...path, key], at: 'key', message: `unknown key "${key}" (${hint})` };
      });
    }
    case 'invalid_type':
      if (issue.input === undefined) return [{ path, message: issue.expected === 'nonoptional' ? 'is required' : `is required (${issue.expected})` }];
      return [{ path, message: `expected ${issue.expected}, got ${typeOf(issue.input)}` }];
    default:
      return [{ path, message: issue.message }];
  }
};

/** An unknown key's own line reads `routes[0] (name "r"): unknown key "retyr"`: the key belongs to its parent's path. */
export const describeProblem = (p: Problem, raw: unknown): string => `${describePath(p.at === 'key' ? p.path.slice(0, -1) : p.path, raw)}: ${p.message}`;

// ---------- did you mean ----------

/** Optimal string alignment distance: Levenshtein plus a swap of two neighbours, the commonest typo ("tiemouts"). */
export const editDistance = (a: string, b: string): number => {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
};

/** The allowed key nearest to `key`, if it is near enough to be a typo of it (case is ignored). */
export const closest = (key: string, allowed: readonly string[]): string | undefined => {
  const limit = Math.max(1, Math.floor(key.length / 3));
  let best: { key: string; distance: number } | undefined;
  for (const candidate of allowed) {
    const distance = editDistance(key.toLowerCase(), candidate.toLowerCase());
    if (distance <= limit && (best === undefined || distance < best.distance)) best = { key: candidate, distance };
  }
  return best?.key;
};

/** The schema under defaults, optionals and transforms; a discriminated union resolved by the value's discriminator. */
const resolve = (schema: z.core.$ZodType, value: unknown): z.core.$ZodType => {
  const def = (schema as z.core.$ZodTypes)._zod.def;
  switch (def.type) {
    case 'optional':
    case 'nullable':
    case 'default':
    case 'prefault':
    case 'nonoptional':
    case 'readonly':
    case 'catch':
      return resolve(def.innerType, value);
    case 'pipe':
      return resolve(def.in, value);
    case 'union': {
      const discriminator = 'discriminator' in def && typeof def.discriminator === 'string' ? def.discriminator : undefined;
      if (discriminator !== undefined && isRecord(value)) {
        const match = def.options.find((o) => {
          const option = resolve(o, undefined) as z.core.$ZodTypes;
          if (option._zod.def.type !== 'object') return false;
          const tag = option._zod.def.shape[discriminator] as z.core.$ZodTypes | undefined;
          return tag?._zod.def.type === 'literal' && tag._zod.def.values.includes(value[discriminator] as never);
        });
        if (match) return resolve(match, value);
      }
      return schema;
    }
    default:
      return schema;
  }
};

/** The keys the object schema at `path` accepts, or undefined when there is no object schema there. */
export const allowedKeys = (schema: z.core.$ZodType, path: readonly PropertyKey[], raw: unknown): string[] | undefined => {
  let s = resolve(schema, raw);
  let value = raw;
  for (const key of path) {
    const def = (s as z.core.$ZodTypes)._zod.def;
    const next = def.type === 'object' ? def.shape[String(key)] : def.type === 'array' ? def.element : def.type === 'record' ? def.valueType : undefined;
    if (next === undefined) return undefined;
    value = isRecord(value) || Array.isArray(value) ? (value as Record<PropertyKey, unknown>)[key] : undefined;
    s = resolve(next, value);
  }
  const def = (s as z.core.$ZodTypes)._zod.def;
  if (def.type === 'object') return Object.keys(def.shape);
  // A union of objects we could not resolve (no or unknown discriminator): any of its keys may be meant.
  if (def.type === 'union') return [...new Set(def.options.flatMap((o) => allowedKeys(o, [], value) ?? []))];
  return undefined;
};

// ---------- where in the file ----------

export interface Position {
  /** 1-based. */
  line: number;
  /** 1-based. */
  col: number;
}

/**
 * Where a problem sits in the YAML document: the value at its path (a scalar) or its key (a map or list, an unknown
 * key); for a missing key, the map that lacks it. Undefined when the path leads nowhere in the document.
 */
export const positionOf = (p: Problem, doc: Document, lines: LineCounter): Position | undefined => {
  let node: unknown = doc.contents;
  // The key `node` was reached through: a map or a list is shown at its key, where a person looks for it.
  let viaKey: Node | undefined;
  for (const step of p.path) {
    if (isAlias(node)) node = node.resolve(doc);
    if (isMap(node)) {
      const pair = node.items.find((item) => isScalar(item.key) && String(item.key.value) === String(step));
      if (pair === undefined) break;
      viaKey = isNode(pair.key) ? pair.key : undefined;
      node = pair.value;
      if (!isNode(node)) break;
    } else if (isSeq(node) && typeof step === 'number' && isNode(node.items[step])) {
      viaKey = undefined;
      node = node.items[step];
    } else break;
  }
  // A key with no value (`retry:`) has an empty null scalar after it: the key is what to show.
  const empty = isScalar(node) && node.range !== undefined && node.range !== null && node.range[0] === node.range[1];
  const target = viaKey !== undefined && (p.at === 'key' || !isScalar(node) || empty) ? viaKey : node;
  const offset = isNode(target) ? target.range?.[0] : undefined;
  return offset === undefined ? undefined : lines.linePos(offset);
};
